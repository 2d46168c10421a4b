"""Documents as real back offices send them: sese.023 settlement instructions and pacs.009
credit transfers valid under the official ISO 20022 schemas (protocols/iso20022/schemas/
official/), with the optional blocks the standard allows present or absent, bare or inside
an envelope with a business application header. Lockstep's own writers produce one profile;
a reader tested only against them would refuse what the standard allows, so these builders
and their Hypothesis strategies stand in for the counterparties. Nothing here imports the
codec under test."""

from __future__ import annotations

import datetime
import functools
import inspect
import re
import string
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import attrs
from hypothesis import strategies as st
from lxml import etree

from protocols.identifiers import CURRENCIES, make_isin

OFFICIAL = Path(__file__).resolve().parent.parent / "protocols" / "iso20022" / "schemas" / "official"
ISO = "urn:iso:std:iso:20022:tech:xsd:"
HEAD = "head.001.001.02"
SESE_023 = "sese.023.001.11"
PACS_009 = "pacs.009.001.11"
SWIFT_ENVELOPE = "urn:swift:xsd:envelope"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
BACKOFFICE = "urn:example:backoffice:xsd:1"  # the namespace of a back office's supplementary data
ISSUER = "LOCKSTEP"
ENVELOPES = (None, "Envelope", "RequestPayload")
CBPR_SERVICE = "swift.cbprplus.02"
CSDS = ("DAKVDEFFXXX", "CEDELULLXXX", "MGTCBEBEECL", "SICVFRPPXXX", "NECINL2AXXX", "DTCYUS33XXX")

SESE023_OPTIONAL = frozenset(
    {
        "CmonId",
        "NbCounts",
        "Lnkgs",
        "TradId",
        "PlcOfTrad",
        "DealPric",
        "TradTxCond",
        "MtchgSts",
        "FinInstrmDesc",
        "AcctOwnr",
        "SfkpgPlc",
        "HldInd",
        "Prty",
        "PrtlSttlmInd",
        "BnfclOwnrsh",
        "SttlmSysMtd",
        "Dpstry",
        "SchmeNm",
        "PrcgId",
        "Pty2",
        "Pty3",
        "OthrAmts",
        "SplmtryData",
    }
)
PACS009_OPTIONAL = frozenset(
    {
        "SttlmAcct",
        "ClrSys",
        "InstrId",
        "PmtTpInf",
        "SttlmPrty",
        "InstgAgt",
        "InstdAgt",
        "IntrmyAgt1",
        "DbtrAgt",
        "CdtrAgt",
        "InstrForNxtAgt",
        "Purp",
        "RmtInf",
        "SplmtryData",
    }
)

# Pty2 and Pty3 of each side: the custodians behind Pty1, the same in both sides' documents.
_CHAIN = {"DlvrgSttlmPties": ("CUSTGB2LXXX", "GLBLUS33XXX"), "RcvgSttlmPties": ("AGNTFRPPXXX", "CSTDNL2AXXX")}
_DEBTOR_AGENT = "COBADEFFXXX"
_CREDITOR_AGENT = "BNPAFRPPXXX"
_INTERMEDIARY = "CHASUS33XXX"
_REIMBURSEMENT_AGENT = "CITIUS33XXX"  # a cover payment names one (CBPR+ rule for COVE)
_MESSAGE = re.compile(r"urn:iso:std:iso:20022:tech:xsd:([a-z]{4}\.[0-9]{3}\.[0-9]{3}\.[0-9]{2})")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


@attrs.frozen
class Who:
    """How a document names a party. In sese.023, Pty1/Id is one choice (AnyBIC, PrtryId or
    NmAndAdr) with the LEI beside it, so give bic or proprietary, not both, and a name when
    there is only an LEI. In pacs.009, FinInstnId carries BICFI, LEI and Othr together, and Nm
    only without a BIC (the CBPR+ rule)."""

    bic: str | None = None
    lei: str | None = None
    proprietary: str | None = None
    name: str | None = None

    def __attrs_post_init__(self) -> None:
        assert self.bic or self.lei or self.proprietary, "a party needs a bic, an lei or a proprietary id"


def sese023(
    *,
    reference: str,
    movement: str,
    payment: str,
    trade_date: str,
    settlement_date: str,
    trade_date_time: bool = False,
    trade_time: str = "10:15:00",
    isin: str,
    units: int | None = None,
    face_amount: str | None = None,
    safekeeping: str,
    cash_account: str | None = None,
    amount: tuple[str, str] | None = None,
    deliverer: Who,
    receiver: Who,
    common_id: str | None = None,
    linked: tuple[str, ...] = (),
    place_of_settlement: str | None = None,
    deal_price: str = "100",
    optional: frozenset[str] = frozenset(),
    envelope: str | None = None,
    sender_bic: str = "BANKDEFFXXX",
    recipient_bic: str = "DEPOLULLXXX",
    schema_location: bool = False,
    comment_before_root: bool = False,
    prefix: str | None = None,
    pretty_print: bool = True,
) -> bytes:
    """A sese.023.001.11 instruction. Where each argument goes (under SctiesSttlmTxInstr):
    reference: TxId (and AppHdr BizMsgIdr); movement: SttlmTpAndAddtlParams/SctiesMvmntTp;
    payment: SttlmTpAndAddtlParams/Pmt; trade_date: TradDtls/TradDt/Dt/Dt, or with
    trade_date_time TradDtls/TradDt/Dt/DtTm as trade_date T trade_time (also the AppHdr CreDt);
    settlement_date: TradDtls/SttlmDt/Dt/Dt; isin: FinInstrmId/ISIN; units:
    QtyAndAcctDtls/SttlmQty/Qty/Unit; face_amount: QtyAndAcctDtls/SttlmQty/Qty/FaceAmt;
    safekeeping: QtyAndAcctDtls/SfkpgAcct/Id; cash_account: QtyAndAcctDtls/CshAcct/Prtry (the
    choice is IBAN or Prtry); amount: SttlmAmt/Amt with Ccy, and SttlmAmt/CdtDbtInd CRDT for
    DELI (paid), DBIT for RECE; deliverer, receiver: DlvrgSttlmPties/Pty1, RcvgSttlmPties/Pty1
    (Id/AnyBIC, Id/PrtryId/Id with Issr LOCKSTEP, or Id/NmAndAdr/Nm; LEI beside Id);
    common_id: SttlmTpAndAddtlParams/CmonId; linked: one Lnkgs/Ref/SctiesSttlmTxId each;
    place_of_settlement: each side's Dpstry/Id/AnyBIC (and SfkpgPlc's Id); deal_price:
    TradDtls/DealPric/Val/Rate (percent) for a face amount, Val/Amt in the settlement currency
    for units. A value given is written; a block named in optional without its value gets a
    plausible one. envelope None makes the Document the root; "Envelope" (SWIFT's, namespaced)
    and "RequestPayload" (no namespace) hold AppHdr (sender_bic to recipient_bic) then Document."""
    assert movement in ("DELI", "RECE"), movement
    assert payment in ("APMT", "FREE"), payment
    assert (units is None) != (face_amount is None), "give exactly one of units and face_amount"
    assert (amount is None) == (payment == "FREE"), "an amount for APMT, none for FREE"
    assert optional <= SESE023_OPTIONAL, sorted(optional - SESE023_OPTIONAL)
    document, instruction = _document(SESE_023, "SctiesSttlmTxInstr", prefix=prefix, schema_location=schema_location)
    currency = amount[0] if amount else "EUR"
    csd = place_of_settlement or recipient_bic

    _add(instruction, "TxId", reference)
    parameters = _add(instruction, "SttlmTpAndAddtlParams")
    _add(parameters, "SctiesMvmntTp", movement)
    _add(parameters, "Pmt", payment)
    if common_id is not None or "CmonId" in optional:
        _add(parameters, "CmonId", common_id or f"CMON-{reference}"[:35])
    links = linked or ((f"{reference}-1"[:35],) if "Lnkgs" in optional else ())
    if "NbCounts" in optional:
        counts = _add(instruction, "NbCounts/TtlNb")
        _add(counts, "CurInstrNb", "1")
        _add(counts, "TtlOfLkdInstrs", str(len(links) + 1))
    for link in links:
        linkage = _add(instruction, "Lnkgs")
        _add(linkage, "PrcgPos/Cd", "WITH")
        _add(linkage, "Ref/SctiesSttlmTxId", link)

    trade = _add(instruction, "TradDtls")
    if "TradId" in optional:
        _add(trade, "TradId", f"TRD-{reference}")
    if "PlcOfTrad" in optional:
        market = _add(trade, "PlcOfTrad/MktTpAndId")
        _add(market, "Id/MktIdrCd", "XETR")
        _add(market, "Tp/Cd", "EXCH")
    if trade_date_time:
        _add(trade, "TradDt/Dt/DtTm", f"{trade_date}T{trade_time}")
    else:
        _add(trade, "TradDt/Dt/Dt", trade_date)
    _add(trade, "SttlmDt/Dt/Dt", settlement_date)
    if "DealPric" in optional:
        price = _add(trade, "DealPric")
        _add(price, "Tp/Yldd", "false")
        if face_amount is None:
            _add(price, "Val/Amt", deal_price, Ccy=currency)
        else:
            _add(price, "Val/Rate", deal_price)
    if "TradTxCond" in optional:
        _add(trade, "TradTxCond/Cd", "CDIV" if face_amount is None else "CCPN")
    if "MtchgSts" in optional:
        _add(trade, "MtchgSts/Cd", "NMAT")

    instrument = _add(instruction, "FinInstrmId")
    _add(instrument, "ISIN", isin)
    if "FinInstrmDesc" in optional:
        _add(instrument, "Desc", "ORD SHS" if face_amount is None else "BD 2.5 PCT 2034")

    quantity = _add(instruction, "QtyAndAcctDtls")
    if face_amount is None:
        _add(quantity, "SttlmQty/Qty/Unit", str(units))
    else:
        _add(quantity, "SttlmQty/Qty/FaceAmt", face_amount)
    if "AcctOwnr" in optional:  # Id is AnyBIC or PrtryId only: the instructing institution
        _add(quantity, "AcctOwnr/Id/AnyBIC", sender_bic)
    _add(quantity, "SfkpgAcct/Id", safekeeping)
    if cash_account is not None:
        _add(quantity, "CshAcct/Prtry", cash_account)
    if "SfkpgPlc" in optional:
        place = _add(quantity, "SfkpgPlc/SfkpgPlcFrmt/TpAndId")
        _add(place, "SfkpgPlcTp", "NCSD")
        _add(place, "Id", csd)

    settlement = _add(instruction, "SttlmParams")
    if "HldInd" in optional:
        _add(settlement, "HldInd/Ind", "false")
    if "Prty" in optional:
        _add(settlement, "Prty/Nmrc", "0004")
    _add(settlement, "SctiesTxTp/Cd", "TRAD")
    if "PrtlSttlmInd" in optional:
        _add(settlement, "PrtlSttlmInd", "NPAR")
    if "BnfclOwnrsh" in optional:
        _add(settlement, "BnfclOwnrsh/Ind", "true")
    if "SttlmSysMtd" in optional:
        _add(settlement, "SttlmSysMtd/Cd", "YSET")

    for side, who in (("DlvrgSttlmPties", deliverer), ("RcvgSttlmPties", receiver)):
        parties = _add(instruction, side)
        if place_of_settlement is not None or "Dpstry" in optional:
            _add(parties, "Dpstry/Id/AnyBIC", csd)
        first = _add(parties, "Pty1")
        _sese_party(first, who, optional)
        if "PrcgId" in optional:
            _add(first, "PrcgId", reference)
        behind = 2 if "Pty3" in optional else int("Pty2" in optional)
        for number, bic in enumerate(_CHAIN[side][:behind], 2):
            _add(parties, f"Pty{number}/Id/AnyBIC", bic)

    if amount is not None:
        settled = _add(instruction, "SttlmAmt")
        _add(settled, "Amt", amount[1], Ccy=currency)
        _add(settled, "CdtDbtInd", "CRDT" if movement == "DELI" else "DBIT")
    if "OthrAmts" in optional:
        exponent = CURRENCIES[currency]
        _add(instruction, "OthrAmts/ChrgsFees/Amt", _decimal_text(25 * 10**exponent, exponent), Ccy=currency)
    if "SplmtryData" in optional:
        _supplementary(instruction, "/Document/SctiesSttlmTxInstr", reference)

    header = _app_header(
        sender=sender_bic,
        recipient=recipient_bic,
        reference=reference,
        message=SESE_023,
        created=f"{trade_date}T{trade_time}+00:00",
        service=None,
    )
    comment = f" settlement instruction {reference} " if comment_before_root else None
    return _serialise(document, header, envelope=envelope, comment=comment, pretty_print=pretty_print)


def pacs009_leg(
    *,
    msg_id: str,
    end_to_end_id: str,
    uetr: str,
    created: str,
    settlement_date: str,
    currency: str,
    amount: str,
    debtor: Who,
    debtor_account: str | None,
    creditor: Who,
    creditor_account: str | None,
    settlement_method: str = "INDA",
    instructing_agent: str = "BANKDEFFXXX",
    instructed_agent: str = "BANKUS33XXX",
    optional: frozenset[str] = frozenset(),
    envelope: str | None = "Envelope",
    schema_location: bool = False,
    comment_before_root: bool = False,
    prefix: str | None = None,
    pretty_print: bool = True,
) -> bytes:
    """One pacs.009.001.11 credit transfer, CBPR+ style. Where each argument goes (under
    FICdtTrf): msg_id: GrpHdr/MsgId (and AppHdr BizMsgIdr; PmtId/InstrId when InstrId is
    optional); created: GrpHdr/CreDtTm and AppHdr CreDt; settlement_method:
    GrpHdr/SttlmInf/SttlmMtd; end_to_end_id, uetr: CdtTrfTxInf/PmtId/EndToEndId, UETR;
    currency, amount: CdtTrfTxInf/IntrBkSttlmAmt Ccy and value; settlement_date:
    CdtTrfTxInf/IntrBkSttlmDt; debtor, creditor: CdtTrfTxInf/Dbtr, Cdtr /FinInstnId (BICFI,
    LEI, Nm, Othr/Id with Issr LOCKSTEP); debtor_account, creditor_account: DbtrAcct,
    CdtrAcct /Id/Othr/Id; instructing_agent, instructed_agent: AppHdr Fr and To, and
    CdtTrfTxInf/InstgAgt, InstdAgt /FinInstnId/BICFI when those are optional."""
    assert settlement_method in ("INDA", "INGA", "CLRG", "COVE"), settlement_method
    assert optional <= PACS009_OPTIONAL, sorted(optional - PACS009_OPTIONAL)
    document, transfer = _document(PACS_009, "FICdtTrf", prefix=prefix, schema_location=schema_location)

    group = _add(transfer, "GrpHdr")
    _add(group, "MsgId", msg_id)
    _add(group, "CreDtTm", created)
    _add(group, "NbOfTxs", "1")
    settlement = _add(group, "SttlmInf")
    _add(settlement, "SttlmMtd", settlement_method)
    if "SttlmAcct" in optional:
        _add(settlement, "SttlmAcct/Id/Othr/Id", f"{instructing_agent[:8]}-{currency}")
    if "ClrSys" in optional:
        _add(settlement, "ClrSys/Cd", "TGT")
    if settlement_method == "COVE":
        _add(settlement, "InstgRmbrsmntAgt/FinInstnId/BICFI", _REIMBURSEMENT_AGENT)

    transaction = _add(transfer, "CdtTrfTxInf")
    payment = _add(transaction, "PmtId")
    if "InstrId" in optional:
        _add(payment, "InstrId", msg_id)
    _add(payment, "EndToEndId", end_to_end_id)
    _add(payment, "UETR", uetr)
    if "PmtTpInf" in optional:
        _add(transaction, "PmtTpInf/SvcLvl/Cd", "URGP")
    _add(transaction, "IntrBkSttlmAmt", amount, Ccy=currency)
    _add(transaction, "IntrBkSttlmDt", settlement_date)
    if "SttlmPrty" in optional:
        _add(transaction, "SttlmPrty", "HIGH")
    for name, bic in (("InstgAgt", instructing_agent), ("InstdAgt", instructed_agent), ("IntrmyAgt1", _INTERMEDIARY)):
        if name in optional:
            _add(transaction, f"{name}/FinInstnId/BICFI", bic)
    _pacs_party(_add(transaction, "Dbtr/FinInstnId"), debtor)
    if debtor_account is not None:
        _add(transaction, "DbtrAcct/Id/Othr/Id", debtor_account)
    for name, bic in (("DbtrAgt", _DEBTOR_AGENT), ("CdtrAgt", _CREDITOR_AGENT)):
        if name in optional:
            _add(transaction, f"{name}/FinInstnId/BICFI", bic)
    _pacs_party(_add(transaction, "Cdtr/FinInstnId"), creditor)
    if creditor_account is not None:
        _add(transaction, "CdtrAcct/Id/Othr/Id", creditor_account)
    if "InstrForNxtAgt" in optional:
        _add(transaction, "InstrForNxtAgt/InstrInf", "/REC/PHONE BEFORE CREDIT")
    if "Purp" in optional:
        _add(transaction, "Purp/Cd", "SECU")
    if "RmtInf" in optional:
        _add(transaction, "RmtInf/Ustrd", f"/BNF/SETTLEMENT {end_to_end_id}")
    if "SplmtryData" in optional:
        _supplementary(transaction, "/Document/FICdtTrf/CdtTrfTxInf", end_to_end_id)

    header = _app_header(
        sender=instructing_agent,
        recipient=instructed_agent,
        reference=msg_id,
        message=PACS_009,
        created=created,
        service=CBPR_SERVICE,
    )
    comment = f" credit transfer {msg_id} " if comment_before_root else None
    return _serialise(document, header, envelope=envelope, comment=comment, pretty_print=pretty_print)


def validate_official(document: bytes) -> list[str]:
    """[] when the Document (and the AppHdr, if the document is an envelope) is valid under the
    official schemas in protocols/iso20022/schemas/official/; else libxml2's messages with
    line numbers. The schema is the one the element's namespace names."""
    try:
        root = etree.fromstring(document, _PARSER)
    except etree.XMLSyntaxError as error:
        return [f"line {error.lineno}: {error.msg}"]
    if etree.QName(root).localname == "Document":
        parts = [root]
    else:
        parts = [child for child in root if isinstance(child.tag, str)]
        names = [etree.QName(part).localname for part in parts]
        if names != ["AppHdr", "Document"]:
            return [f"line {root.sourceline}: an envelope holds AppHdr then Document, not {names}"]
    problems = []
    for part in parts:
        schema = _schema(etree.QName(part).namespace)
        if schema is None:
            problems.append(f"line {part.sourceline}: no official schema for {part.tag}")
        elif not schema.validate(part):
            problems.extend(f"line {error.line}: {error.message}" for error in schema.error_log)
    return problems


# Values that look like what banks send.

_UPPER = string.ascii_uppercase
_ALPHANUMERIC = string.ascii_uppercase + string.digits
_COUNTRIES = ("DE", "FR", "NL", "LU", "BE", "GB", "US", "CH", "IT", "ES", "JP", "SE")
_LOUS = ("5299", "5493", "2138", "7LTW", "9695", "8156", "3157", "W22L")  # LEI issuer prefixes
_NAMES = ("Nordbank AG", "Banque du Levant SA", "Harbour Trust plc", "Alpen Privatbank AG", "Kanal Securities BV")


def lei(prefix18: str) -> str:
    """The LEI with its ISO 17442 check digits: ISO 7064 MOD 97-10, letters read as A=10 to
    Z=35, so that the whole code read as a number is 1 modulo 97."""
    assert re.fullmatch(r"[A-Z0-9]{18}", prefix18), prefix18
    number = int("".join(str(int(char, 36)) for char in prefix18) + "00")
    return f"{prefix18}{98 - number % 97:02d}"


def bics() -> st.SearchStrategy[str]:
    """BIC11 or BIC8: bank code, a country, a location (no test-BIC 0 second character), branch."""
    return st.builds(
        "".join,
        st.tuples(
            st.text(_UPPER, min_size=4, max_size=4),
            st.sampled_from(_COUNTRIES),
            st.sampled_from(("FF", "PP", "2L", "22", "33", "MM", "ZZ", "2A")),
            st.sampled_from(("XXX", "", "300")),
        ),
    )


def leis() -> st.SearchStrategy[str]:
    """LEIs from a real issuer prefix, the 00 of the pre-2017 layout, 12 entity characters."""
    return st.builds(
        lambda lou, entity: lei(f"{lou}00{entity}"),
        st.sampled_from(_LOUS),
        st.text(_ALPHANUMERIC, min_size=12, max_size=12),
    )


def isins() -> st.SearchStrategy[str]:
    return st.builds(
        lambda country, national: make_isin(country + national),
        st.sampled_from(("DE", "FR", "NL", "LU", "US", "GB", "XS", "IT")),
        st.text(_ALPHANUMERIC, min_size=9, max_size=9),
    )


def references() -> st.SearchStrategy[str]:
    prefixes = st.sampled_from(("INSTR-", "TRD", "SI", "DVP-", "PVP-", "BO"))
    return st.builds(lambda prefix, number: f"{prefix}{number}", prefixes, st.integers(1000, 10**12))


def accounts() -> st.SearchStrategy[str]:
    national = st.builds(
        lambda country, number: f"{country}{number:010d}", st.sampled_from(_COUNTRIES), st.integers(0, 10**10 - 1)
    )
    return st.integers(10**7, 10**14 - 1).map(str) | national


def parties() -> st.SearchStrategy[Who]:
    """Every way a back office names a party that both messages can carry."""
    proprietary = st.builds(
        lambda kind, number: f"{kind}{number:05d}", st.sampled_from(("PTY", "CLT", "ACC")), st.integers(0, 10**8)
    )
    return st.one_of(
        st.builds(Who, bic=bics()),
        st.builds(Who, bic=bics(), lei=leis()),
        st.builds(Who, proprietary=proprietary),
        st.builds(Who, proprietary=proprietary, lei=leis()),
        st.builds(Who, lei=leis(), name=st.sampled_from(_NAMES)),
    )


def sese023_documents(**fixed: object) -> st.SearchStrategy[tuple[dict, bytes]]:
    """(the keyword arguments, the document) of sese023, each argument not in fixed drawn
    (a fixed value may be a strategy to draw it from). Draws agree with each other and with
    what is fixed: the amount is quantity times the deal price, FREE has no amount, settlement
    is 0 to 5 days after trade; so two sides with the same core values fixed match."""
    _check_names(sese023, fixed)
    return _sese023_arguments(fixed).map(lambda arguments: (arguments, sese023(**arguments)))


def pacs009_legs(**fixed: object) -> st.SearchStrategy[tuple[dict, bytes]]:
    """(the keyword arguments, the document) of pacs009_leg, as sese023_documents."""
    _check_names(pacs009_leg, fixed)
    return _pacs009_arguments(fixed).map(lambda arguments: (arguments, pacs009_leg(**arguments)))


# Built once: a strategy built inside a draw is validated again on every example, which
# made drawing ten times slower than building and validating the document.
_REFERENCE = references()
_ACCOUNT = accounts()
_MAYBE_ACCOUNT = st.none() | _ACCOUNT
_PARTY = parties()
_BIC = bics()
_ISIN = isins()
_CSD = st.sampled_from(CSDS)
_NONE = st.none()
_BOOLEAN = st.booleans()
_DATE = st.dates(datetime.date(2025, 1, 1), datetime.date(2027, 12, 31)).map(datetime.date.isoformat)
_DAYS_TO_SETTLE = st.integers(0, 5)
_CLOCK = st.times().map(lambda moment: moment.replace(microsecond=0).isoformat())
_OFFSET = st.sampled_from(("+00:00", "+01:00", "-05:00", "Z"))
_CURRENCY = st.sampled_from(("EUR", "USD", "GBP", "CHF", "JPY", "SEK"))
_MINOR_UNITS = st.integers(1, 10**11)
_UNITS = st.integers(1, 1_000_000)
_FACE_AMOUNT = st.integers(1, 100_000).map(lambda thousands: str(thousands * 1000))
_PRICE_PER_UNIT = st.integers(100, 500_000).map(lambda cents: _decimal_text(cents, 2))
_PRICE_PERCENT = st.integers(9_000, 11_000).map(lambda hundredths: _decimal_text(hundredths, 2))
_LINKED = st.lists(_REFERENCE, min_size=1, max_size=3).map(tuple)
_ENVELOPE = st.sampled_from(ENVELOPES)
_MOVEMENT = st.sampled_from(("DELI", "RECE"))
_PAYMENT = st.sampled_from(("APMT", "FREE"))
_METHOD = st.sampled_from(("INDA", "INGA", "CLRG", "COVE"))
_SESE_PREFIX = st.sampled_from((None, "ns2", "sese"))
_PACS_PREFIX = st.sampled_from((None, "ns2", "pacs"))
_SESE_OPTIONAL = st.frozensets(st.sampled_from(sorted(SESE023_OPTIONAL)))
_PACS_OPTIONAL = st.frozensets(st.sampled_from(sorted(PACS009_OPTIONAL)))
_UETR = st.uuids(version=4).map(str)


@st.composite
def _sese023_arguments(draw: Callable, fixed: dict) -> dict:
    pick = _picker(draw, fixed)
    if "units" in fixed or "face_amount" in fixed:
        units, face_amount = pick("units", _NONE), pick("face_amount", _NONE)
    elif draw(_BOOLEAN):
        units, face_amount = None, draw(_FACE_AMOUNT)
    else:
        units, face_amount = draw(_UNITS), None
    deal_price = pick("deal_price", _PRICE_PER_UNIT if face_amount is None else _PRICE_PERCENT)
    if "amount" in fixed:
        amount = pick("amount", _NONE)
        payment = pick("payment", st.just("FREE" if amount is None else "APMT"))
    else:
        payment = pick("payment", _PAYMENT)
        currency = draw(_CURRENCY)
        amount = None if payment == "FREE" else _settlement_amount(currency, deal_price, units, face_amount)
    days = datetime.timedelta(days=draw(_DAYS_TO_SETTLE))
    if "settlement_date" in fixed and "trade_date" not in fixed:
        settlement_date = pick("settlement_date", _NONE)
        trade_date = (datetime.date.fromisoformat(settlement_date) - days).isoformat()
    else:
        trade_date = pick("trade_date", _DATE)
        later = (datetime.date.fromisoformat(trade_date) + days).isoformat()
        settlement_date = pick("settlement_date", st.just(later))
    optional = pick("optional", _SESE_OPTIONAL)
    return {
        "reference": pick("reference", _REFERENCE),
        "movement": pick("movement", _MOVEMENT),
        "payment": payment,
        "trade_date": trade_date,
        "settlement_date": settlement_date,
        "trade_date_time": pick("trade_date_time", _BOOLEAN),
        "trade_time": pick("trade_time", _CLOCK),
        "isin": pick("isin", _ISIN),
        "units": units,
        "face_amount": face_amount,
        "safekeeping": pick("safekeeping", _ACCOUNT),
        "cash_account": pick("cash_account", _MAYBE_ACCOUNT),
        "amount": amount,
        "deliverer": pick("deliverer", _PARTY),
        "receiver": pick("receiver", _PARTY),
        "common_id": pick("common_id", _REFERENCE if "CmonId" in optional else _NONE),
        "linked": pick("linked", _LINKED if "Lnkgs" in optional else st.just(())),
        "place_of_settlement": pick("place_of_settlement", _CSD if optional & {"Dpstry", "SfkpgPlc"} else _NONE),
        "deal_price": deal_price,
        "optional": optional,
        "envelope": pick("envelope", _ENVELOPE),
        "sender_bic": pick("sender_bic", _BIC),
        "recipient_bic": pick("recipient_bic", _CSD),
        "schema_location": pick("schema_location", _BOOLEAN),
        "comment_before_root": pick("comment_before_root", _BOOLEAN),
        "prefix": pick("prefix", _SESE_PREFIX),
        "pretty_print": pick("pretty_print", _BOOLEAN),
    }


@st.composite
def _pacs009_arguments(draw: Callable, fixed: dict) -> dict:
    pick = _picker(draw, fixed)
    currency = pick("currency", _CURRENCY)
    settlement_date = pick("settlement_date", _DATE)
    created = pick("created", _NONE) if "created" in fixed else f"{settlement_date}T{draw(_CLOCK)}{draw(_OFFSET)}"
    amount = pick("amount", _NONE) if "amount" in fixed else _decimal_text(draw(_MINOR_UNITS), CURRENCIES[currency])
    return {
        "msg_id": pick("msg_id", _REFERENCE),
        "end_to_end_id": pick("end_to_end_id", _REFERENCE),
        "uetr": pick("uetr", _UETR),
        "created": created,
        "settlement_date": settlement_date,
        "currency": currency,
        "amount": amount,
        "debtor": pick("debtor", _PARTY),
        "debtor_account": pick("debtor_account", _MAYBE_ACCOUNT),
        "creditor": pick("creditor", _PARTY),
        "creditor_account": pick("creditor_account", _MAYBE_ACCOUNT),
        "settlement_method": pick("settlement_method", _METHOD),
        "instructing_agent": pick("instructing_agent", _BIC),
        "instructed_agent": pick("instructed_agent", _BIC),
        "optional": pick("optional", _PACS_OPTIONAL),
        "envelope": pick("envelope", _ENVELOPE),
        "schema_location": pick("schema_location", _BOOLEAN),
        "comment_before_root": pick("comment_before_root", _BOOLEAN),
        "prefix": pick("prefix", _PACS_PREFIX),
        "pretty_print": pick("pretty_print", _BOOLEAN),
    }


def _picker(draw: Callable, fixed: dict) -> Callable[[str, st.SearchStrategy], object]:
    """The fixed value of an argument (drawn, if it is a strategy), else one drawn from default."""

    def pick(name: str, default: st.SearchStrategy) -> object:
        value = fixed.get(name, default)
        return draw(value) if isinstance(value, st.SearchStrategy) else value

    return pick


def _check_names(builder: Callable, fixed: dict) -> None:
    unknown = set(fixed) - set(inspect.signature(builder).parameters)
    assert not unknown, f"{builder.__name__} has no argument {sorted(unknown)}"


def _settlement_amount(currency: str, deal_price: str, units: int | None, face_amount: str | None) -> tuple[str, str]:
    """Quantity times price (a percentage of a face amount), in the currency's minor unit."""
    value = (
        Decimal(units) * Decimal(deal_price)
        if face_amount is None
        else Decimal(face_amount) * Decimal(deal_price) / 100
    )
    exponent = CURRENCIES[currency]
    return currency, f"{value.quantize(Decimal(1).scaleb(-exponent), ROUND_HALF_UP):f}"


def _decimal_text(minor: int, exponent: int) -> str:
    return f"{Decimal(minor).scaleb(-exponent):f}"


# Building and checking documents.


def _add(parent: etree._Element, path: str, text: str | None = None, **attributes: str) -> etree._Element:
    """New elements along path, each inside the one before, in parent's namespace; the last one
    gets the text and attributes and is returned. Callers add in xs:sequence order."""
    namespace = etree.QName(parent).namespace
    element = parent
    for name in path.split("/"):
        element = etree.SubElement(element, f"{{{namespace}}}{name}" if namespace else name)
    element.text = text
    for key, value in attributes.items():
        element.set(key, value)
    return element


def _document(
    message: str, body: str, *, prefix: str | None, schema_location: bool
) -> tuple[etree._Element, etree._Element]:
    namespace = ISO + message
    nsmap = {prefix: namespace, "xsi": XSI} if schema_location else {prefix: namespace}
    document = etree.Element(f"{{{namespace}}}Document", nsmap=nsmap)
    if schema_location:
        document.set(f"{{{XSI}}}schemaLocation", f"{namespace} {message}.xsd")
    return document, _add(document, body)


def _app_header(
    *, sender: str, recipient: str, reference: str, message: str, created: str, service: str | None
) -> etree._Element:
    namespace = ISO + HEAD
    header = etree.Element(f"{{{namespace}}}AppHdr", nsmap={None: namespace})
    _add(header, "Fr/FIId/FinInstnId/BICFI", sender)
    _add(header, "To/FIId/FinInstnId/BICFI", recipient)
    _add(header, "BizMsgIdr", reference)
    _add(header, "MsgDefIdr", message)
    if service is not None:
        _add(header, "BizSvc", service)
    _add(header, "CreDt", created)
    return header


def _serialise(
    document: etree._Element, header: etree._Element, *, envelope: str | None, comment: str | None, pretty_print: bool
) -> bytes:
    assert envelope in ENVELOPES, envelope
    if envelope is None:
        root = document
    else:
        root = (
            etree.Element(f"{{{SWIFT_ENVELOPE}}}Envelope", nsmap={None: SWIFT_ENVELOPE})
            if envelope == "Envelope"
            else etree.Element("RequestPayload")
        )
        root.extend((header, document))
    if comment is not None:
        root.addprevious(etree.Comment(comment))
    body = etree.tostring(root.getroottree(), encoding="UTF-8", pretty_print=pretty_print)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def _sese_party(party: etree._Element, who: Who, optional: frozenset[str]) -> None:
    """Id is one choice, so a party with only an LEI is named by its name, the LEI beside it."""
    assert not (who.bic and who.proprietary), "sese.023 Pty1/Id holds a bic or a proprietary id, not both"
    identification = _add(party, "Id")
    if who.bic:
        _add(identification, "AnyBIC", who.bic)
    elif who.proprietary:
        proprietary = _add(identification, "PrtryId")
        _add(proprietary, "Id", who.proprietary)
        _add(proprietary, "Issr", ISSUER)
        if "SchmeNm" in optional:
            _add(proprietary, "SchmeNm", "PARTICIPANT")
    else:
        assert who.name, "sese.023 names a party with only an LEI by Id/NmAndAdr/Nm: give its name"
        _add(identification, "NmAndAdr/Nm", who.name)
    if who.lei:
        _add(party, "LEI", who.lei)


def _pacs_party(institution: etree._Element, who: Who) -> None:
    if who.bic:
        _add(institution, "BICFI", who.bic)
    if who.lei:
        _add(institution, "LEI", who.lei)
    if who.name and not who.bic:
        _add(institution, "Nm", who.name)
    if who.proprietary:
        other = _add(institution, "Othr")
        _add(other, "Id", who.proprietary)
        _add(other, "Issr", ISSUER)


def _supplementary(parent: etree._Element, place: str, reference: str) -> None:
    data = _add(parent, "SplmtryData")
    _add(data, "PlcAndNm", place)
    envelope = _add(data, "Envlp")
    etree.SubElement(envelope, f"{{{BACKOFFICE}}}BckOffcRef", nsmap={None: BACKOFFICE}).text = reference


@functools.cache
def _schema(namespace: str | None) -> etree.XMLSchema | None:
    """The official schema for a namespace, compiled once per process."""
    match = _MESSAGE.fullmatch(namespace or "")
    path = OFFICIAL / f"{match.group(1)}.xsd" if match else None
    return etree.XMLSchema(etree.parse(str(path))) if path and path.is_file() else None
