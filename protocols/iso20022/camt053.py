"""camt.053.001.12, a bank-to-customer statement: a cash account's journal entries over
a range, between its opening (OPBD) and closing (CLBD) available balances."""

from __future__ import annotations

from lxml import etree

from . import xml
from .model import CAMT_053, Statement
from .pacs009 import put_agent


def write(statement: Statement) -> bytes:
    """The statement as a camt.053: one booked entry per journal entry, amounts printed
    with the currency's exponent, the ledger as the account servicer."""
    root = xml.start(CAMT_053)
    report = xml.put(root, "BkToCstmrStmt")
    statement_id = xml.text35(statement.statement_id)
    xml.put(report, "GrpHdr/MsgId", statement_id)
    xml.put(report, "GrpHdr/CreDtTm", xml.date_time(statement.created_ms))
    body = xml.put(report, "Stmt")
    xml.put(body, "Id", statement_id)
    xml.put(body, "CreDtTm", xml.date_time(statement.created_ms))
    xml.put(body, "Acct/Id/Othr/Id", statement.account)
    xml.put(body, "Acct/Ccy", statement.currency)
    xml.put(body, "Acct/Ownr/Id/OrgId/Othr/Id", statement.owner)
    xml.put(body, "Acct/Ownr/Id/OrgId/Othr/Issr", xml.ISSUER)
    put_agent(xml.find(body, "Acct"), "Svcr", statement.ledger)
    entries = statement.entries
    opened_ms = entries[0].time_ms if entries else statement.created_ms
    closed_ms = entries[-1].time_ms if entries else statement.created_ms
    _put_balance(body, "OPBD", statement.opening_minor, statement.currency, opened_ms)
    _put_balance(body, "CLBD", statement.closing_minor, statement.currency, closed_ms)
    for entry in entries:
        booked = xml.put(body, "Ntry")
        xml.put(booked, "NtryRef", str(entry.seq))
        _put_amount(booked, entry.amount_minor, statement.currency)
        xml.put(booked, "Sts/Cd", "BOOK")
        xml.put(booked, "BookgDt/DtTm", xml.date_time(entry.time_ms))
        xml.put(booked, "AcctSvcrRef", xml.text35(entry.reference))
        xml.put(booked, "BkTxCd/Prtry/Cd", entry.kind)
        xml.put(booked, "BkTxCd/Prtry/Issr", xml.ISSUER)
    return xml.finish(root, CAMT_053)


def _put_balance(body: etree._Element, code: str, minor: int, currency: str, time_ms: int) -> None:
    balance = xml.put(body, "Bal")
    xml.put(balance, "Tp/CdOrPrtry/Cd", code)
    _put_amount(balance, minor, currency)
    xml.put(balance, "Dt/DtTm", xml.date_time(time_ms))


def _put_amount(parent: etree._Element, minor: int, currency: str) -> None:
    """A signed amount as ISO 20022 has it: unsigned, with a credit or debit indicator."""
    xml.put(parent, "Amt", xml.amount_text(abs(minor), currency), Ccy=currency)
    xml.put(parent, "CdtDbtInd", "CRDT" if minor >= 0 else "DBIT")
