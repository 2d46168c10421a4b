"""sese.025.001.11, a securities settlement confirmation: the party's DvP has settled,
whole or a part of it (then with what settled before and what remains)."""

from __future__ import annotations

from lxml import etree

from . import xml
from .model import SESE_025, Confirmation, cash_through
from .sese023 import CASH_DIRECTION, Terms, put_party, terms


def write(confirmation: Confirmation) -> bytes:
    """The confirmation as a sese.025; the effective settlement date is the UTC date of
    `settled_ms`."""
    one = confirmation.instruction
    dvp = terms(one)
    root = xml.start(SESE_025)
    settled = xml.put(root, "SctiesSttlmTxConf")
    xml.put(settled, "TxIdDtls/AcctOwnrTxId", xml.text35(confirmation.reference))
    xml.put(settled, "TxIdDtls/AcctSvcrTxId", xml.text35(confirmation.settlement_id))
    xml.put(settled, "TxIdDtls/SctiesMvmntTp", dvp.movement)
    xml.put(settled, "TxIdDtls/Pmt", dvp.payment)
    part = confirmation.part
    if part is not None:  # PAIN: a part, more to come; PARC: the last part
        xml.put(settled, "AddtlParams/PrtlSttlm", "PAIN" if part.to_units < dvp.units else "PARC")
    xml.put(settled, "TradDtls/TradDt/Dt/Dt", one.trade_date)
    xml.put(settled, "TradDtls/SttlmDt/Dt/Dt", one.settlement_date)
    xml.put(settled, "TradDtls/FctvSttlmDt/Dt/Dt", xml.utc_date(confirmation.settled_ms))
    xml.put(settled, "FinInstrmId/ISIN", dvp.isin)
    first, last = (part.from_units, part.to_units) if part is not None else (0, dvp.units)
    xml.put(settled, "QtyAndAcctDtls/SttldQty/Qty/Unit", str(last - first))
    if first:
        xml.put(settled, "QtyAndAcctDtls/PrevslySttldQty/Unit", str(first))
    if last < dvp.units:
        xml.put(settled, "QtyAndAcctDtls/RmngToBeSttldQty/Unit", str(dvp.units - last))
    if first:
        _put_cash(settled, "QtyAndAcctDtls/PrevslySttldAmt", dvp, 0, first)
    if last < dvp.units:
        _put_cash(settled, "QtyAndAcctDtls/RmngToBeSttldAmt", dvp, last, dvp.units)
    xml.put(settled, "QtyAndAcctDtls/SfkpgAcct/Id", dvp.safekeeping)
    if dvp.cash_account is not None:
        xml.put(settled, "QtyAndAcctDtls/CshAcct/Prtry", dvp.cash_account)
    xml.put(settled, "SttlmParams/SctiesTxTp/Cd", "TRAD")
    put_party(settled, "DlvrgSttlmPties", dvp.deliverer)
    put_party(settled, "RcvgSttlmPties", dvp.receiver)
    _put_cash(settled, "SttldAmt", dvp, first, last)
    return xml.finish(root, SESE_025)


def _put_cash(parent: etree._Element, path: str, dvp: Terms, first: int, last: int) -> None:
    """The cash of units `first` to `last`, with its direction; none free of payment."""
    if dvp.currency is not None:
        minor = cash_through(dvp.minor, dvp.units, last) - cash_through(dvp.minor, dvp.units, first)
        xml.put(parent, f"{path}/Amt", xml.amount_text(minor, dvp.currency), Ccy=dvp.currency)
        xml.put(parent, f"{path}/CdtDbtInd", CASH_DIRECTION[dvp.movement])
