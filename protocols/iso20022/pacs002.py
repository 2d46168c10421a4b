"""pacs.002.001.14, a payment status report: the outcome of a party's PvP (pacs.009).

The report names the instruction by its MsgId and its transfer by the EndToEndId: a
leg's own, or, for Lockstep's pair layout, the MsgId again (pacs009 requires it there),
so one TxInfAndSts covers the pair."""

from __future__ import annotations

import hashlib

from lxml import etree

from . import xml
from .model import PACS_002, PACS_009, Advice, Confirmation
from .pacs009 import put_agent

information_chars_max = 105
TX_STATUS = {
    "rejected": "RJCT",
    "failed": "RJCT",
    "cancelled": "RJCT",
    "unmatched": "PDNG",
    "pending": "PDNG",
    "matched": "ACSP",  # accepted, settlement in process
}


def write(outcome: Advice | Confirmation, *, sender: str, now_ms: int) -> bytes:
    """The outcome as a pacs.002 from `sender` at `now_ms`: ACSC once settled, else the
    status of the advice with its reason."""
    status = "ACSC" if isinstance(outcome, Confirmation) else TX_STATUS[outcome.status]
    root = xml.start(PACS_002)
    report = xml.put(root, "FIToFIPmtStsRpt")
    xml.put(report, "GrpHdr/MsgId", _message_id(outcome, status, sender, now_ms))
    xml.put(report, "GrpHdr/CreDtTm", xml.date_time(now_ms))
    put_agent(xml.find(report, "GrpHdr"), "InstgAgt", sender)
    xml.put(report, "OrgnlGrpInfAndSts/OrgnlMsgId", xml.text35(outcome.reference))
    xml.put(report, "OrgnlGrpInfAndSts/OrgnlMsgNmId", PACS_009)
    transaction = xml.put(report, "TxInfAndSts")
    instruction = outcome.instruction
    end_to_end = instruction.common_id if instruction is not None and instruction.side == "leg" else None
    xml.put(transaction, "OrgnlEndToEndId", xml.text35(end_to_end or outcome.reference))
    if instruction is not None and instruction.uetr is not None:
        xml.put(transaction, "OrgnlUETR", instruction.uetr)
    xml.put(transaction, "TxSts", status)
    if isinstance(outcome, Advice):
        given = [(p.code, f"{p.field}: {p.reason}") for p in outcome.problems] or [
            (outcome.reason_code, outcome.reason)
        ]
        for code, narrative in given:
            _put_reason(transaction, code, narrative.strip())
    if isinstance(outcome, Confirmation):
        xml.put(transaction, "FctvIntrBkSttlmDt/DtTm", xml.date_time(outcome.settled_ms))
    if outcome.settlement_id is not None:
        xml.put(transaction, "AcctSvcrRef", xml.text35(outcome.settlement_id))
    return xml.finish(root, PACS_002)


def _put_reason(transaction: etree._Element, code: str, narrative: str) -> None:
    """A status reason: our code as a proprietary reason, the narrative in pieces."""
    if not (code or narrative):
        return
    reason = xml.put(transaction, "StsRsnInf")
    if code:
        xml.put(reason, "Rsn/Prtry", code)
    for start in range(0, len(narrative), information_chars_max):
        xml.put(reason, "AddtlInf", narrative[start : start + information_chars_max])


def _message_id(outcome: Advice | Confirmation, status: str, sender: str, now_ms: int) -> str:
    """A MsgId derived from what the report says, so the same report always has the same id."""
    content = f"{sender}\n{now_ms}\n{outcome.party}\n{outcome.reference}\n{status}"
    return hashlib.sha256(content.encode()).hexdigest()[:32]
