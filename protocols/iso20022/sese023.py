"""sese.023.001.11, a securities settlement instruction: one counterparty's side of a DvP.

The instructing party is Pty1 on its own side (the deliverer's for DELI, the receiver's
for RECE); it names its own safekeeping and cash accounts and nothing of the other's.
The writer exists for back-office simulation, demos and tests: `read(write(x)) == x` for
a side without a common reference, links or places of settlement, which it does not write."""

from __future__ import annotations

from decimal import Decimal

import attrs
from lxml import etree

from ..errors import Code
from ..identifiers import CURRENCIES, IDENT_PATTERN, bic11, isin_problem
from ..money import format_amount
from . import xml
from .model import NORMAL_PRIORITY, SESE_023, Denomination, Names, OneSided, Problem

SIDES = {"DELI": "deliver", "RECE": "receive"}
FACE_FIELD = "document:/Document/SctiesSttlmTxInstr/QtyAndAcctDtls/SttlmQty/Qty/FaceAmt"
CASH_DIRECTION = {"DELI": "CRDT", "RECE": "DBIT"}  # the deliverer is paid, the receiver pays


def read(document: str | bytes, names: Names | None = None) -> OneSided:
    """The instruction as Lockstep's record. Anything the standard allows may be present:
    what Lockstep does not use is ignored. Refused, every problem at once, unless it is a
    delivery or receipt, against payment or free of it, in whole units (and whole minor
    units of a known currency) between two parties `names` knows (without `names`,
    identifiers other than Lockstep ids are kept as written)."""
    instruction = xml.find(xml.parse(document, SESE_023), "SctiesSttlmTxInstr")
    findings = xml.Findings()
    movement = xml.text(instruction, "SttlmTpAndAddtlParams/SctiesMvmntTp")
    payment = xml.text(instruction, "SttlmTpAndAddtlParams/Pmt")
    trade_date = _date(instruction, "TradDtls/TradDt", findings, "DTRD", "the trade date is a matching field")
    settlement_date = _date(instruction, "TradDtls/SttlmDt", findings, "DDAT", "the intended settlement date")
    if trade_date and settlement_date and settlement_date < trade_date:
        findings.refuse(
            xml.find(instruction, "TradDtls/SttlmDt"),
            f"settlement date {settlement_date} is before the trade date {trade_date}",
            "DDAT",
        )
    isin = _isin(instruction, findings)
    quantity = _quantity(instruction, findings)
    safekeeping = _account(instruction, "QtyAndAcctDtls/SfkpgAcct/Id", findings, "SAFE", "safekeeping account")
    cash: tuple[str | None, int] | None
    if payment == "APMT":
        cash_account = _account(instruction, "QtyAndAcctDtls/CshAcct/*", findings, "CASH", "cash account")
        cash = _cash(instruction, movement, findings)
    else:
        cash_account, cash = None, (None, 0)
        if (amount := instruction.find("{*}SttlmAmt")) is not None:
            findings.refuse(amount, "a delivery free of payment (FREE) carries no settlement amount", "DMON")
    deliverer = party_of(instruction, "DlvrgSttlmPties/Pty1", names, findings)
    receiver = party_of(instruction, "RcvgSttlmPties/Pty1", names, findings)
    if deliverer and receiver and deliverer == receiver:
        findings.refuse(xml.find(instruction, "RcvgSttlmPties/Pty1"), "the receiver is the deliverer", "DEPT")
    priority = _priority(instruction, findings)
    findings.done()
    assert trade_date and settlement_date and isin and quantity and safekeeping and cash and deliverer and receiver
    units, face = (quantity, None) if isinstance(quantity, int) else (0, quantity)
    security, money = (isin, units, safekeeping), (*cash, cash_account)
    gives, takes = (security, money) if movement == "DELI" else (money, security)
    party, counterparty = (deliverer, receiver) if movement == "DELI" else (receiver, deliverer)
    common = instruction.find("{*}SttlmTpAndAddtlParams/{*}CmonId")
    return OneSided(
        format=SESE_023,
        reference=xml.text(instruction, "TxId"),
        kind="dvp",
        side=SIDES[movement],
        party=party,
        counterparty=counterparty,
        trade_date=trade_date,
        settlement_date=settlement_date,
        gives_asset=gives[0],
        gives_amount=gives[1],
        gives_account=gives[2],
        takes_asset=takes[0],
        takes_amount=takes[1],
        takes_account=takes[2],
        common_id=common.text if common is not None else None,
        depositories=(_depository(instruction, "DlvrgSttlmPties"), _depository(instruction, "RcvgSttlmPties")),
        linked=tuple(ref.text for ref in instruction.iterfind("{*}Lnkgs/{*}Ref/*")),
        settle_with=_settle_with(instruction),
        payment=payment,
        face_amount=face,
        hold=_held(instruction),
        partial=_optional(instruction, "SttlmParams/PrtlSttlmInd") in PARTIAL,
        priority=priority,
    )


PARTIAL = ("PART", "PARC", "PARQ")  # PrtlSttlmInd codes that allow settling in parts (NPAR: not)


def _settle_with(instruction: etree._Element) -> tuple[str, ...]:
    """The references of the Lnkgs whose processing position is WITH: settle together."""
    return tuple(
        ref.text
        for linkage in instruction.iterfind("{*}Lnkgs")
        if linkage.findtext("{*}PrcgPos/{*}Cd") == "WITH"
        for ref in linkage.iterfind("{*}Ref/*")
        if ref.text
    )


def _optional(instruction: etree._Element, path: str) -> str | None:
    found = instruction.find("/".join("{*}" + step for step in path.split("/")))
    return found.text if found is not None else None


def _held(instruction: etree._Element) -> bool:
    indicator = instruction.find("{*}SttlmParams/{*}HldInd/{*}Ind")
    return indicator is not None and indicator.text in ("true", "1")


def _priority(instruction: etree._Element, findings: xml.Findings) -> int:
    """Prty/Nmrc, 0001 the most urgent; a proprietary priority is not one Lockstep orders by."""
    given = instruction.find("{*}SttlmParams/{*}Prty")
    if given is None:
        return NORMAL_PRIORITY
    number = given.find("{*}Nmrc")
    if number is None or int(number.text or "0") < 1:
        findings.refuse(given, "a priority is a number from 0001 (the most urgent) to 9999 (Nmrc)", "OTHR")
        return NORMAL_PRIORITY
    return int(number.text or "0")


def _date(instruction: etree._Element, path: str, findings: xml.Findings, code: str, why: str) -> str | None:
    choice = instruction.find(_qualified(path))
    if choice is None:
        findings.refuse(f"{xml.field(instruction)}/{path}", f"missing: {why}", code)
        return None
    return xml.date(choice, findings, code)


def _isin(instruction: etree._Element, findings: xml.Findings) -> str | None:
    isin = instruction.find("{*}FinInstrmId/{*}ISIN")
    if isin is None:
        findings.refuse(
            xml.find(instruction, "FinInstrmId"),
            "an ISIN is needed: Lockstep's ledgers name securities by ISIN",
            "DSEC",
        )
        return None
    if problem := isin_problem(isin.text):
        findings.refuse(isin, problem, "DSEC")
        return None
    return isin.text


def _quantity(instruction: etree._Element, findings: xml.Findings) -> int | Decimal | None:
    """Units (Qty/Unit), or a face amount (Qty/FaceAmt) as debt instruments are instructed."""
    quantity = xml.find(instruction, "QtyAndAcctDtls/SttlmQty")
    unit, face = quantity.find("{*}Qty/{*}Unit"), quantity.find("{*}Qty/{*}FaceAmt")
    if unit is not None:
        return xml.whole(unit, findings, "units")
    if face is not None:
        amount = Decimal(face.text.strip())
        if amount > 0:
            return amount
        findings.refuse(face, "must be positive", "DQUA")
        return None
    given = quantity.find("{*}Qty")
    stated = etree.QName(next(iter(given if given is not None else quantity))).localname
    findings.refuse(quantity, f"Lockstep settles a quantity in units or as a face amount, not {stated}", "DQUA")
    return None


def in_units(one: OneSided, denomination: Denomination) -> OneSided:
    """A side given as a face amount, in units of the instrument's denomination; Refused
    (DQUA) unless it is a whole number of them in the instrument's currency."""
    if one.face_amount is None:
        return one
    minor = one.face_amount.scaleb(CURRENCIES[denomination.currency])
    units, rest = divmod(minor, denomination.face_value_minor)
    if rest or units <= 0:
        face_value = format_amount(denomination.currency, denomination.face_value_minor)
        raise xml.Refused(
            Code.INVALID_FIELD,
            [Problem(FACE_FIELD, f"{one.face_amount} is not a whole number of units of {face_value}", "DQUA")],
        )
    if one.side == "deliver":
        return attrs.evolve(one, gives_amount=int(units))
    return attrs.evolve(one, takes_amount=int(units))


def _account(instruction: etree._Element, path: str, findings: xml.Findings, code: str, what: str) -> str | None:
    account = instruction.find(_qualified(path))
    if account is None:
        findings.refuse(f"{xml.field(instruction)}/{path.removesuffix('/*')}", f"missing: the party's {what}", code)
        return None
    if not IDENT_PATTERN.fullmatch(account.text or ""):
        findings.refuse(account, f"{account.text!r} is not a Lockstep account id ({IDENT_PATTERN.pattern})", code)
        return None
    return account.text


def _cash(instruction: etree._Element, movement: str, findings: xml.Findings) -> tuple[str, int] | None:
    amount = instruction.find("{*}SttlmAmt")
    if amount is None:
        findings.refuse(f"{xml.field(instruction)}/SttlmAmt", "missing: a payment's settlement amount", "DMON")
        return None
    direction = xml.find(amount, "CdtDbtInd")
    if direction.text != CASH_DIRECTION[movement]:
        findings.refuse(
            direction,
            f"{movement} {'receives' if movement == 'DELI' else 'pays'} the cash: "
            f"{CASH_DIRECTION[movement]}, not {direction.text}",
            "DMON",
        )
    return xml.minor_units(xml.find(amount, "Amt"), findings)


def party_of(parent: etree._Element, path: str, names: Names | None, findings: xml.Findings) -> str | None:
    """The party a settlement party block names: by a Lockstep id (PrtryId issued by
    LOCKSTEP), its BIC (AnyBIC) or its LEI."""
    block = parent.find(_qualified(path))
    if block is None:
        findings.refuse(f"{xml.field(parent)}/{path}", "missing: who settles on this side", "DEPT")
        return None
    own = block.find("{*}Id/{*}PrtryId")
    written = [xml.text(own, "Id")] if own is not None and xml.text(own, "Issr") == xml.ISSUER else []
    bic, lei = block.find("{*}Id/{*}AnyBIC"), block.find("{*}LEI")
    written += [f"BIC/{bic11(bic.text)}"] if bic is not None else []
    written += [f"LEI/{lei.text}"] if lei is not None else []
    return xml.party(block, written, names, findings)


def _depository(instruction: etree._Element, side: str) -> str | None:
    bic = instruction.find(f"{{*}}{side}/{{*}}Dpstry/{{*}}Id/{{*}}AnyBIC")
    return bic11(bic.text) if bic is not None else None


def _qualified(path: str) -> str:
    return "/".join(step if step == "*" else f"{{*}}{step}" for step in path.split("/"))


@attrs.frozen
class Terms:
    """A DvP as the sese messages lay it out: by movement, not by gives and takes."""

    movement: str  # DELI | RECE
    isin: str
    units: int
    safekeeping: str  # the party's securities account
    currency: str | None  # None free of payment
    minor: int
    cash_account: str | None  # the party's cash account
    deliverer: str
    receiver: str
    payment: str  # APMT | FREE


def terms(one: OneSided) -> Terms:
    assert one.format == SESE_023 and one.kind == "dvp", one
    movement = {side: code for code, side in SIDES.items()}[one.side]
    gives, takes = (
        (one.gives_asset, one.gives_amount, one.gives_account),
        (one.takes_asset, one.takes_amount, one.takes_account),
    )
    security, cash = (gives, takes) if movement == "DELI" else (takes, gives)
    parties = (one.party, one.counterparty) if movement == "DELI" else (one.counterparty, one.party)
    (isin, units, safekeeping), (currency, minor, cash_account) = security, cash
    assert isin is not None and safekeeping is not None and isin_problem(isin) is None, one
    assert (currency in CURRENCIES) == (one.payment == "APMT"), one
    return Terms(movement, isin, units, safekeeping, currency, minor, cash_account, *parties, one.payment)


def write(one: OneSided) -> bytes:
    """The sese.023 that `read` turns back into `one`."""
    dvp = terms(one)
    root = xml.start(SESE_023)
    instruction = xml.put(root, "SctiesSttlmTxInstr")
    xml.put(instruction, "TxId", one.reference)
    xml.put(instruction, "SttlmTpAndAddtlParams/SctiesMvmntTp", dvp.movement)
    xml.put(instruction, "SttlmTpAndAddtlParams/Pmt", dvp.payment)
    for reference in one.settle_with:
        linkage = xml.put(instruction, "Lnkgs")
        xml.put(linkage, "PrcgPos/Cd", "WITH")
        xml.put(linkage, "Ref/SctiesSttlmTxId", reference)
    xml.put(instruction, "TradDtls/TradDt/Dt/Dt", one.trade_date)
    xml.put(instruction, "TradDtls/SttlmDt/Dt/Dt", one.settlement_date)
    xml.put(instruction, "FinInstrmId/ISIN", dvp.isin)
    if one.face_amount is None:
        xml.put(instruction, "QtyAndAcctDtls/SttlmQty/Qty/Unit", str(dvp.units))
    else:
        xml.put(instruction, "QtyAndAcctDtls/SttlmQty/Qty/FaceAmt", str(one.face_amount))
    xml.put(instruction, "QtyAndAcctDtls/SfkpgAcct/Id", dvp.safekeeping)
    if dvp.cash_account is not None:
        xml.put(instruction, "QtyAndAcctDtls/CshAcct/Prtry", dvp.cash_account)
    if one.hold:
        xml.put(instruction, "SttlmParams/HldInd/Ind", "true")
    if one.priority != NORMAL_PRIORITY:
        xml.put(instruction, "SttlmParams/Prty/Nmrc", f"{one.priority:04d}")
    xml.put(instruction, "SttlmParams/SctiesTxTp/Cd", "TRAD")
    if one.partial:
        xml.put(instruction, "SttlmParams/PrtlSttlmInd", "PART")
    put_party(instruction, "DlvrgSttlmPties", dvp.deliverer)
    put_party(instruction, "RcvgSttlmPties", dvp.receiver)
    put_amount(instruction, "SttlmAmt", dvp)
    return xml.finish(root, SESE_023)


def put_party(parent: etree._Element, side: str, party: str) -> None:
    """A settlement party as Lockstep names it: a proprietary id issued by LOCKSTEP."""
    xml.put(parent, f"{side}/Pty1/Id/PrtryId/Id", party)
    xml.put(parent, f"{side}/Pty1/Id/PrtryId/Issr", xml.ISSUER)


def put_amount(parent: etree._Element, name: str, dvp: Terms) -> None:
    """The cash amount with its direction as the instructing party sees it; none free of payment."""
    if dvp.currency is not None:
        xml.put(parent, f"{name}/Amt", xml.amount_text(dvp.minor, dvp.currency), Ccy=dvp.currency)
        xml.put(parent, f"{name}/CdtDbtInd", CASH_DIRECTION[dvp.movement])
