"""sese.025.001.11, a securities settlement confirmation: the party's DvP has settled."""

from __future__ import annotations

from . import xml
from .model import SESE_025, Confirmation
from .sese023 import put_amount, put_party, terms


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
    xml.put(settled, "TradDtls/TradDt/Dt/Dt", one.trade_date)
    xml.put(settled, "TradDtls/SttlmDt/Dt/Dt", one.settlement_date)
    xml.put(settled, "TradDtls/FctvSttlmDt/Dt/Dt", xml.utc_date(confirmation.settled_ms))
    xml.put(settled, "FinInstrmId/ISIN", dvp.isin)
    xml.put(settled, "QtyAndAcctDtls/SttldQty/Qty/Unit", str(dvp.units))
    xml.put(settled, "QtyAndAcctDtls/SfkpgAcct/Id", dvp.safekeeping)
    if dvp.cash_account is not None:
        xml.put(settled, "QtyAndAcctDtls/CshAcct/Prtry", dvp.cash_account)
    xml.put(settled, "SttlmParams/SctiesTxTp/Cd", "TRAD")
    put_party(settled, "DlvrgSttlmPties", dvp.deliverer)
    put_party(settled, "RcvgSttlmPties", dvp.receiver)
    put_amount(settled, "SttldAmt", dvp)
    return xml.finish(root, SESE_025)
