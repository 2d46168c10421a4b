"""sese.023.001.11, a securities settlement instruction: one counterparty's side of a DvP.

The instructing party is Pty1 on its own side (the deliverer's for DELI, the receiver's
for RECE); it names its own safekeeping and cash accounts and nothing of the other's.
The writer exists for back-office simulation, demos and tests; `read(write(x)) == x`."""

from __future__ import annotations

import attrs
from lxml import etree

from ..errors import Code, Rejected
from ..identifiers import CURRENCIES, isin_problem
from . import xml
from .model import SESE_023, OneSided

SIDES = {"DELI": "deliver", "RECE": "receive"}
CASH_DIRECTION = {"DELI": "CRDT", "RECE": "DBIT"}  # the deliverer is paid, the receiver pays


def read(document: str | bytes) -> OneSided:
    """The instruction as Lockstep's record; refused unless it is a DvP against payment
    in whole units and whole minor units of a known currency."""
    instruction = xml.find(xml.parse(document, SESE_023), "SctiesSttlmTxInstr")
    movement = xml.text(instruction, "SttlmTpAndAddtlParams/SctiesMvmntTp")
    payment = xml.find(instruction, "SttlmTpAndAddtlParams/Pmt")
    if payment.text != "APMT":
        raise Rejected(
            Code.INVALID_FIELD,
            xml.field(payment),
            f"Lockstep settles delivery against payment (APMT) only, not {payment.text}",
        )
    trade_date = xml.date(xml.find(instruction, "TradDtls/TradDt/Dt/Dt"))
    settlement = xml.find(instruction, "TradDtls/SttlmDt/Dt/Dt")
    settlement_date = xml.date(settlement)
    if settlement_date < trade_date:
        raise Rejected(
            Code.INVALID_FIELD,
            xml.field(settlement),
            f"settlement date {settlement_date} is before the trade date {trade_date}",
        )
    isin = xml.find(instruction, "FinInstrmId/ISIN")
    if problem := isin_problem(isin.text):
        raise Rejected(Code.INVALID_FIELD, xml.field(isin), problem)
    units = xml.whole_units(xml.find(instruction, "QtyAndAcctDtls/SttlmQty/Qty/Unit"))
    safekeeping = xml.text(instruction, "QtyAndAcctDtls/SfkpgAcct/Id")
    cash_account = xml.text(instruction, "QtyAndAcctDtls/CshAcct/Prtry")
    currency, minor = xml.minor_units(xml.find(instruction, "SttlmAmt/Amt"))
    direction = xml.find(instruction, "SttlmAmt/CdtDbtInd")
    if direction.text != CASH_DIRECTION[movement]:
        raise Rejected(
            Code.INVALID_FIELD,
            xml.field(direction),
            f"{movement} {'receives' if movement == 'DELI' else 'pays'} the cash: "
            f"{CASH_DIRECTION[movement]}, not {direction.text}",
        )
    deliverer = xml.text(instruction, "DlvrgSttlmPties/Pty1/Id/PrtryId/Id")
    receiver = xml.find(instruction, "RcvgSttlmPties/Pty1/Id/PrtryId/Id")
    if receiver.text == deliverer:
        raise Rejected(Code.INVALID_FIELD, xml.field(receiver), "the receiver is the deliverer")
    security, cash = (isin.text, units, safekeeping), (currency, minor, cash_account)
    gives, takes = (security, cash) if movement == "DELI" else (cash, security)
    party, counterparty = (deliverer, receiver.text) if movement == "DELI" else (receiver.text, deliverer)
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
    )


@attrs.frozen
class Terms:
    """A DvP as the sese messages lay it out: by movement, not by gives and takes."""

    movement: str  # DELI | RECE
    isin: str
    units: int
    safekeeping: str  # the party's securities account
    currency: str
    minor: int
    cash_account: str  # the party's cash account
    deliverer: str
    receiver: str


def terms(one: OneSided) -> Terms:
    assert one.format == SESE_023 and one.kind == "dvp", one
    movement = {side: code for code, side in SIDES.items()}[one.side]
    gives, takes = (
        (one.gives_asset, one.gives_amount, one.gives_account),
        (one.takes_asset, one.takes_amount, one.takes_account),
    )
    security, cash = (gives, takes) if movement == "DELI" else (takes, gives)
    parties = (one.party, one.counterparty) if movement == "DELI" else (one.counterparty, one.party)
    assert cash[0] in CURRENCIES and isin_problem(security[0]) is None, one
    return Terms(movement, *security, *cash, *parties)


def write(one: OneSided) -> bytes:
    """The sese.023 that `read` turns back into `one`."""
    dvp = terms(one)
    root = xml.start(SESE_023)
    instruction = xml.put(root, "SctiesSttlmTxInstr")
    xml.put(instruction, "TxId", one.reference)
    xml.put(instruction, "SttlmTpAndAddtlParams/SctiesMvmntTp", dvp.movement)
    xml.put(instruction, "SttlmTpAndAddtlParams/Pmt", "APMT")
    xml.put(instruction, "TradDtls/TradDt/Dt/Dt", one.trade_date)
    xml.put(instruction, "TradDtls/SttlmDt/Dt/Dt", one.settlement_date)
    xml.put(instruction, "FinInstrmId/ISIN", dvp.isin)
    xml.put(instruction, "QtyAndAcctDtls/SttlmQty/Qty/Unit", str(dvp.units))
    xml.put(instruction, "QtyAndAcctDtls/SfkpgAcct/Id", dvp.safekeeping)
    xml.put(instruction, "QtyAndAcctDtls/CshAcct/Prtry", dvp.cash_account)
    xml.put(instruction, "SttlmParams/SctiesTxTp/Cd", "TRAD")
    put_party(instruction, "DlvrgSttlmPties", dvp.deliverer)
    put_party(instruction, "RcvgSttlmPties", dvp.receiver)
    put_amount(instruction, "SttlmAmt", dvp)
    return xml.finish(root, SESE_023)


def put_party(parent: etree._Element, side: str, party: str) -> None:
    """A settlement party as Lockstep names it: a proprietary id issued by LOCKSTEP."""
    xml.put(parent, f"{side}/Pty1/Id/PrtryId/Id", party)
    xml.put(parent, f"{side}/Pty1/Id/PrtryId/Issr", xml.ISSUER)


def put_amount(parent: etree._Element, name: str, dvp: Terms) -> None:
    """The cash amount with its direction as the instructing party sees it."""
    xml.put(parent, f"{name}/Amt", xml.amount_text(dvp.minor, dvp.currency), Ccy=dvp.currency)
    xml.put(parent, f"{name}/CdtDbtInd", CASH_DIRECTION[dvp.movement])
