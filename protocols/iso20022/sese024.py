"""sese.024.001.12, a securities settlement status advice: where a party's DvP
instruction stands. docs/ISO20022.md lists how each Advice.status is laid out."""

from __future__ import annotations

from lxml import etree

from . import xml
from .model import SESE_024, Advice
from .sese023 import put_amount, put_party, terms

reason_chars_max = 210

# status -> where its reason goes, the code type there, the code when ours is not in it
REASONS = {
    "rejected": ("PrcgSts/Rjctd", "RejectionReason75Code", "OTHR"),
    "cancelled": ("PrcgSts/Canc", "CancelledStatusReason16Code", "CANS"),
    "unmatched": ("MtchgSts/Umtchd", "UnmatchedReason11Code", "OTHR"),
    "pending": ("SttlmSts/Pdg", "PendingReason24Code", "OTHR"),
    "failed": ("SttlmSts/Flng", "FailingReason4Code", "OTHR"),
}
ACCEPTED = {"unmatched", "matched", "pending", "failed"}  # acknowledged and accepted for processing
MATCHED = {"matched", "pending", "failed"}


def write(advice: Advice) -> bytes:
    """The advice as a sese.024, with the instruction's details when it could be read."""
    assert advice.status in REASONS or advice.status == "matched", advice.status
    root = xml.start(SESE_024)
    status = xml.put(root, "SctiesSttlmTxStsAdvc")
    xml.put(status, "TxId/AcctOwnrTxId", xml.text35(advice.reference))
    if advice.settlement_id is not None:
        xml.put(status, "TxId/AcctSvcrTxId", xml.text35(advice.settlement_id))
    if advice.instruction is not None and advice.instruction.linked:  # reported back: the message holds one
        xml.put(status, "Lnkgs/SctiesSttlmTxId", xml.text35(advice.instruction.linked[0]))
    if advice.status in ACCEPTED:
        xml.put(status, "PrcgSts/AckdAccptd/NoSpcfdRsn", "NORE")
    if advice.status in MATCHED:
        xml.put(status, "MtchgSts/Mtchd")
    if advice.status in REASONS:
        _put_reason(status, advice)
    if advice.instruction is not None:
        _put_details(status, advice)
    return xml.finish(root, SESE_024)


def _put_reason(status: etree._Element, advice: Advice) -> None:
    """Our reason code where the status's code list has it, else the list's fallback with
    our code leading the narrative; a rejected document's problems each as a reason."""
    path, code_type, fallback = REASONS[advice.status]
    if advice.problems:
        holder = xml.put(status, path)
        for problem in advice.problems:
            reason = xml.put(holder, "Rsn")
            xml.put(reason, "Cd/Cd", problem.code if problem.code in xml.codes(SESE_024, code_type) else fallback)
            xml.put(reason, "AddtlRsnInf", f"{problem.field}: {problem.reason}"[:reason_chars_max])
        return
    known = advice.reason_code in xml.codes(SESE_024, code_type)
    xml.put(status, f"{path}/Rsn/Cd/Cd", advice.reason_code if known else fallback)
    narrative = advice.reason if known or not advice.reason_code else f"{advice.reason_code}: {advice.reason}"
    if narrative.strip():
        xml.put(status, f"{path}/Rsn/AddtlRsnInf", narrative.strip()[:reason_chars_max])


def _put_details(status: etree._Element, advice: Advice) -> None:
    one = advice.instruction
    assert one is not None, "an advice about a document that could not be read has no details"
    dvp = terms(one)
    details = xml.put(status, "TxDtls")
    xml.put(details, "SfkpgAcct/Id", dvp.safekeeping)
    xml.put(details, "FinInstrmId/ISIN", dvp.isin)
    xml.put(details, "SttlmQty/Qty/Unit", str(dvp.units))
    put_amount(details, "SttlmAmt", dvp)
    xml.put(details, "SttlmDt/Dt/Dt", one.settlement_date)
    xml.put(details, "TradDt/Dt/Dt", one.trade_date)
    xml.put(details, "SctiesMvmntTp", dvp.movement)
    xml.put(details, "Pmt", dvp.payment)
    xml.put(details, "SttlmParams/SctiesTxTp/Cd", "TRAD")
    put_party(details, "RcvgSttlmPties", dvp.receiver)
    put_party(details, "DlvrgSttlmPties", dvp.deliverer)
