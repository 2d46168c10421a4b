"""pacs.009.001.11 in PvP style: one counterparty's side of a currency exchange.

The document holds exactly two credit transfers sharing one EndToEndId (the MsgId, so a
pacs.002 can name it from the reference alone) and one interbank settlement date: first
the party's own payment (it is the debtor, paying `gives` from its DbtrAcct), then the
payment it expects (it is the creditor, paid `takes` into its CdtrAcct). Parties are
FinInstnId/Othr/Id with Issr LOCKSTEP; accounts are Id/Othr/Id. Each side names only its
own accounts. Settlement method CLRG: the Lockstep ledgers are the clearing system."""

from __future__ import annotations

from lxml import etree

from ..errors import Code, Rejected
from ..identifiers import CURRENCIES
from . import xml
from .model import PACS_009, OneSided

TRANSACTIONS = 2


def read(document: str | bytes) -> OneSided:
    """The exchange as Lockstep's record; refused unless the two transfers mirror each
    other between the same two parties in two different currencies."""
    transfer = xml.find(xml.parse(document, PACS_009), "FICdtTrf")
    count = xml.find(transfer, "GrpHdr/NbOfTxs")
    if count.text != str(TRANSACTIONS):
        raise Rejected(
            Code.INVALID_FIELD, xml.field(count), f"a PvP holds {TRANSACTIONS} transactions, not {count.text}"
        )
    pays, expects = xml.find_all(transfer, "CdtTrfTxInf")
    party, counterparty = xml.text(pays, "Dbtr/FinInstnId/Othr/Id"), xml.text(pays, "Cdtr/FinInstnId/Othr/Id")
    if counterparty == party:
        raise Rejected(
            Code.INVALID_FIELD, xml.field(xml.find(pays, "Cdtr/FinInstnId/Othr/Id")), "the party pays itself"
        )
    _expect(expects, "Dbtr/FinInstnId/Othr/Id", counterparty, "the counterparty pays the second transaction")
    _expect(expects, "Cdtr/FinInstnId/Othr/Id", party, "the party is paid the second transaction")
    reference = xml.text(transfer, "GrpHdr/MsgId")
    for transaction in (pays, expects):
        _expect(transaction, "PmtId/EndToEndId", reference, "the EndToEndId is the MsgId, linking the pair")
    settlement_date = xml.date(xml.find(pays, "IntrBkSttlmDt"))
    _expect(expects, "IntrBkSttlmDt", settlement_date, "both transactions settle on the same date")
    gives_asset, gives_amount = xml.minor_units(xml.find(pays, "IntrBkSttlmAmt"))
    takes_asset, takes_amount = xml.minor_units(xml.find(expects, "IntrBkSttlmAmt"))
    if takes_asset == gives_asset:
        raise Rejected(
            Code.INVALID_FIELD,
            xml.field(xml.find(expects, "IntrBkSttlmAmt")),
            f"a PvP exchanges two currencies, both are {gives_asset}",
        )
    return OneSided(
        format=PACS_009,
        reference=reference,
        kind="pvp",
        side="pay",
        party=party,
        counterparty=counterparty,
        trade_date=None,
        settlement_date=settlement_date,
        gives_asset=gives_asset,
        gives_amount=gives_amount,
        gives_account=_own_account(pays, "DbtrAcct", "CdtrAcct"),
        takes_asset=takes_asset,
        takes_amount=takes_amount,
        takes_account=_own_account(expects, "CdtrAcct", "DbtrAcct"),
    )


def _expect(transaction: etree._Element, path: str, value: str, why: str) -> None:
    found = xml.find(transaction, path)
    if found.text != value:
        raise Rejected(Code.INVALID_FIELD, xml.field(found), f"{found.text!r}, expected {value!r}: {why}")


def _own_account(transaction: etree._Element, own: str, other: str) -> str:
    """The party's account in a transaction; the counterparty's account is its own to name."""
    account = transaction.find(f"{own}/Id/Othr/Id", namespaces={None: xml.namespace(PACS_009)})
    if account is None:
        raise Rejected(Code.INVALID_FIELD, f"{xml.field(transaction)}/{own}", "missing: the party's own account")
    foreign = transaction.find(other, namespaces={None: xml.namespace(PACS_009)})
    if foreign is not None:
        raise Rejected(
            Code.INVALID_FIELD, xml.field(foreign), "names the counterparty's account; each side names only its own"
        )
    return account.text


def write(one: OneSided, *, now_ms: int) -> bytes:
    """The pacs.009 that `read` turns back into `one`, created at `now_ms`."""
    assert one.format == PACS_009 and one.kind == "pvp" and one.side == "pay", one
    assert one.gives_asset in CURRENCIES and one.takes_asset in CURRENCIES and one.gives_asset != one.takes_asset, one
    root = xml.start(PACS_009)
    transfer = xml.put(root, "FICdtTrf")
    xml.put(transfer, "GrpHdr/MsgId", one.reference)
    xml.put(transfer, "GrpHdr/CreDtTm", xml.date_time(now_ms))
    xml.put(transfer, "GrpHdr/NbOfTxs", str(TRANSACTIONS))
    xml.put(transfer, "GrpHdr/SttlmInf/SttlmMtd", "CLRG")
    legs = (
        (one.party, one.counterparty, one.gives_asset, one.gives_amount, "Dbtr", one.gives_account),
        (one.counterparty, one.party, one.takes_asset, one.takes_amount, "Cdtr", one.takes_account),
    )
    for debtor, creditor, currency, minor, party_role, account in legs:
        transaction = xml.put(transfer, "CdtTrfTxInf")
        xml.put(transaction, "PmtId/EndToEndId", one.reference)
        xml.put(transaction, "IntrBkSttlmAmt", xml.amount_text(minor, currency), Ccy=currency)
        xml.put(transaction, "IntrBkSttlmDt", one.settlement_date)
        for role, party in (("Dbtr", debtor), ("Cdtr", creditor)):
            put_agent(transaction, role, party)
            if role == party_role:
                xml.put(transaction, f"{role}Acct/Id/Othr/Id", account)
    return xml.finish(root, PACS_009)


def put_agent(parent: etree._Element, role: str, party: str) -> None:
    """A financial institution as Lockstep names it: FinInstnId/Othr, issued by LOCKSTEP."""
    xml.put(parent, f"{role}/FinInstnId/Othr/Id", party)
    xml.put(parent, f"{role}/FinInstnId/Othr/Issr", xml.ISSUER)
