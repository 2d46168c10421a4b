"""pacs.009.001.11, one counterparty's side of a currency exchange (PvP), in either of
two layouts.

A leg: one credit transfer, as real senders write it (SWIFT CBPR+): the party is the
debtor, paying from its DbtrAcct into the counterparty's CdtrAcct; the counterparty sends
its own leg, and the two pair by their shared EndToEndId.

A pair (Lockstep's own layout, kept for senders that use it): two credit transfers
sharing one EndToEndId (the MsgId) and one settlement date: first the party's own payment,
then the payment it expects (it is the creditor, paid `takes` into its CdtrAcct); each
side names only its own accounts.

Institutions are named by BICFI, LEI or FinInstnId/Othr/Id issued by LOCKSTEP; accounts by
Id/IBAN or Id/Othr/Id. The writer uses Othr ids and settlement method CLRG."""

from __future__ import annotations

from lxml import etree

from ..errors import Code
from ..identifiers import CURRENCIES, IDENT_PATTERN, bic11
from . import xml
from .model import HIGH_PRIORITY, NORMAL_PRIORITY, PACS_009, Names, OneSided, Problem

TRANSACTIONS = 2


def read(document: str | bytes, names: Names | None = None) -> OneSided:
    """One side of a PvP as Lockstep's record: its own payment alone (one transfer, as
    real senders write it), or its payment and the one it expects (two). Anything else
    the standard allows (UETR, agents, any settlement method, remittance information)
    may be present and is ignored; what Lockstep cannot settle is refused, every problem
    at once."""
    transfer = xml.find(xml.parse(document, PACS_009), "FICdtTrf")
    findings = xml.Findings()
    count = xml.find(transfer, "GrpHdr/NbOfTxs")
    transactions = xml.find_all(transfer, "CdtTrfTxInf")
    if count.text != str(len(transactions)) or len(transactions) > 2:
        reason = f"NbOfTxs is {count.text}, the document holds {len(transactions)}: a PvP side holds 1 or 2"
        raise xml.Refused(Code.INVALID_FIELD, [Problem(xml.field(count), reason)])
    if len(transactions) == 1:
        return _leg(transfer, transactions[0], names, findings)
    return _pair(transfer, *transactions, names=names, findings=findings)


def _leg(transfer: etree._Element, pays: etree._Element, names: Names | None, findings: xml.Findings) -> OneSided:
    """The party's own payment: it is the debtor, paying from its DbtrAcct into the
    counterparty's CdtrAcct; the counterparty's own leg pairs with it by EndToEndId."""
    party, counterparty = _payer_and_payee(pays, names, findings)
    settlement_date = _date(pays, findings)
    gives = xml.minor_units(xml.find(pays, "IntrBkSttlmAmt"), findings)
    gives_account = _account(pays, "DbtrAcct", "the party's own account", findings)
    pays_into = _account(pays, "CdtrAcct", "the counterparty's account it pays into", findings)
    findings.done()
    assert party and counterparty and settlement_date and gives and gives_account and pays_into
    return OneSided(
        format=PACS_009,
        reference=xml.text(transfer, "GrpHdr/MsgId"),
        kind="pvp",
        side="leg",
        party=party,
        counterparty=counterparty,
        trade_date=None,
        settlement_date=settlement_date,
        gives_asset=gives[0],
        gives_amount=gives[1],
        gives_account=gives_account,
        takes_asset=None,
        takes_amount=0,
        takes_account=None,
        common_id=xml.text(pays, "PmtId/EndToEndId"),
        pays_into=pays_into,
        uetr=pays.findtext("{*}PmtId/{*}UETR"),
        priority=_priority(pays),
    )


def _pair(
    transfer: etree._Element,
    pays: etree._Element,
    expects: etree._Element,
    *,
    names: Names | None,
    findings: xml.Findings,
) -> OneSided:
    """Lockstep's own layout: the party's payment, then the payment it expects, both
    with the MsgId as EndToEndId; each side names only its own accounts."""
    party, counterparty = _payer_and_payee(pays, names, findings)
    _expect(
        expects,
        "Dbtr",
        counterparty,
        _agent(expects, "Dbtr", names, findings),
        "the counterparty pays the second transaction",
        findings,
    )
    _expect(
        expects,
        "Cdtr",
        party,
        _agent(expects, "Cdtr", names, findings),
        "the party is paid the second transaction",
        findings,
    )
    reference = xml.text(transfer, "GrpHdr/MsgId")
    for transaction in (pays, expects):
        end_to_end = xml.text(transaction, "PmtId/EndToEndId")
        _expect(
            transaction,
            "PmtId/EndToEndId",
            reference,
            end_to_end,
            "the EndToEndId is the MsgId, linking the pair",
            findings,
        )
    settlement_date = _date(pays, findings)
    _expect(
        expects,
        "IntrBkSttlmDt",
        settlement_date,
        _date(expects, findings),
        "both transactions settle on the same date",
        findings,
    )
    gives = xml.minor_units(xml.find(pays, "IntrBkSttlmAmt"), findings)
    takes = xml.minor_units(xml.find(expects, "IntrBkSttlmAmt"), findings)
    if gives and takes and gives[0] == takes[0]:
        findings.refuse(
            xml.find(expects, "IntrBkSttlmAmt"), f"a PvP exchanges two currencies, both are {gives[0]}", "DMON"
        )
    gives_account = _own_account(pays, "DbtrAcct", "CdtrAcct", findings)
    takes_account = _own_account(expects, "CdtrAcct", "DbtrAcct", findings)
    findings.done()
    assert party and counterparty and settlement_date and gives and takes and gives_account and takes_account
    return OneSided(
        format=PACS_009,
        reference=reference,
        kind="pvp",
        side="pay",
        party=party,
        counterparty=counterparty,
        trade_date=None,
        settlement_date=settlement_date,
        gives_asset=gives[0],
        gives_amount=gives[1],
        gives_account=gives_account,
        takes_asset=takes[0],
        takes_amount=takes[1],
        takes_account=takes_account,
        priority=_priority(pays),
    )


def _payer_and_payee(
    pays: etree._Element, names: Names | None, findings: xml.Findings
) -> tuple[str | None, str | None]:
    """The party's own payment names it as debtor and the counterparty as creditor."""
    party = _agent(pays, "Dbtr", names, findings)
    counterparty = _agent(pays, "Cdtr", names, findings)
    if party and party == counterparty:
        findings.refuse(xml.find(pays, "Cdtr"), "the party pays itself", "DEPT")
    return party, counterparty


def _agent(transaction: etree._Element, role: str, names: Names | None, findings: xml.Findings) -> str | None:
    """The financial institution in a role, by its BICFI, LEI or a Lockstep id (Othr
    issued by LOCKSTEP)."""
    institution = xml.find(transaction, f"{role}/FinInstnId")
    other, bic, lei = (institution.find(f"{{*}}{name}") for name in ("Othr", "BICFI", "LEI"))
    own = other is not None and other.findtext("{*}Issr") == xml.ISSUER
    written = [xml.text(other, "Id")] if own else []
    written += [f"BIC/{bic11(bic.text)}"] if bic is not None else []
    written += [f"LEI/{lei.text}"] if lei is not None else []
    return xml.party(institution, written, names, findings)


def _priority(transaction: etree._Element) -> int:
    """The party's payment's instruction priority (PmtTpInf/InstrPrty): HIGH is served
    before NORM, the default, in the settlement queue."""
    return HIGH_PRIORITY if transaction.findtext("{*}PmtTpInf/{*}InstrPrty") == "HIGH" else NORMAL_PRIORITY


def _date(transaction: etree._Element, findings: xml.Findings) -> str | None:
    date = transaction.find("{*}IntrBkSttlmDt")
    if date is None or not xml.DATE_PATTERN.fullmatch(date.text.strip()[:10]):
        findings.refuse(
            date if date is not None else f"{xml.field(transaction)}/IntrBkSttlmDt",
            "an interbank settlement date YYYY-MM-DD is needed",
            "DDAT",
        )
        return None
    return date.text.strip()[:10]


def _expect(
    transaction: etree._Element, path: str, value: str | None, found: str | None, why: str, findings: xml.Findings
) -> None:
    if value is not None and found is not None and found != value:
        findings.refuse(xml.find(transaction, path), f"{found!r}, expected {value!r}: {why}", "OTHR")


def _own_account(transaction: etree._Element, own: str, other: str, findings: xml.Findings) -> str | None:
    """The party's account in a transaction of the pair; the counterparty's account is
    its own to name."""
    foreign = transaction.find(f"{{*}}{other}")
    if foreign is not None:
        findings.refuse(foreign, "names the counterparty's account; each side names only its own", "CASH")
    return _account(transaction, own, "the party's own account", findings)


def _account(transaction: etree._Element, role: str, what: str, findings: xml.Findings) -> str | None:
    """An account (Id/IBAN or Id/Othr/Id) that must be a Lockstep account id."""
    account = transaction.find(f"{{*}}{role}/{{*}}Id/{{*}}IBAN")
    if account is None:
        account = transaction.find(f"{{*}}{role}/{{*}}Id/{{*}}Othr/{{*}}Id")
    if account is None:
        findings.refuse(f"{xml.field(transaction)}/{role}", f"missing: {what}", "CASH")
        return None
    if not IDENT_PATTERN.fullmatch(account.text or ""):
        findings.refuse(account, f"{account.text!r} is not a Lockstep account id ({IDENT_PATTERN.pattern})", "CASH")
        return None
    return account.text


def write(one: OneSided, *, now_ms: int) -> bytes:
    """The pacs.009 that `read` turns back into `one`, created at `now_ms`: the pair, or a
    leg alone."""
    assert one.format == PACS_009 and one.kind == "pvp" and one.side in ("pay", "leg"), one
    root = xml.start(PACS_009)
    transfer = xml.put(root, "FICdtTrf")
    xml.put(transfer, "GrpHdr/MsgId", one.reference)
    xml.put(transfer, "GrpHdr/CreDtTm", xml.date_time(now_ms))
    xml.put(transfer, "GrpHdr/NbOfTxs", "1" if one.side == "leg" else str(TRANSACTIONS))
    xml.put(transfer, "GrpHdr/SttlmInf/SttlmMtd", "CLRG")
    own = (one.party, one.counterparty, one.gives_asset, one.gives_amount)
    if one.side == "leg":
        assert one.common_id is not None and one.pays_into is not None, one
        _put_transfer(transfer, one, one.common_id, *own, {"Dbtr": one.gives_account, "Cdtr": one.pays_into})
        return xml.finish(root, PACS_009)
    assert one.gives_asset in CURRENCIES and one.takes_asset in CURRENCIES and one.gives_asset != one.takes_asset, one
    _put_transfer(transfer, one, one.reference, *own, {"Dbtr": one.gives_account})
    expected = (one.counterparty, one.party, one.takes_asset, one.takes_amount)
    _put_transfer(transfer, one, one.reference, *expected, {"Cdtr": one.takes_account})
    return xml.finish(root, PACS_009)


def _put_transfer(
    transfer: etree._Element,
    one: OneSided,
    end_to_end: str,
    debtor: str,
    creditor: str,
    currency: str | None,
    minor: int,
    accounts: dict[str, str | None],
) -> None:
    assert currency is not None
    transaction = xml.put(transfer, "CdtTrfTxInf")
    xml.put(transaction, "PmtId/EndToEndId", end_to_end)
    if one.uetr is not None:
        xml.put(transaction, "PmtId/UETR", one.uetr)
    if one.priority < NORMAL_PRIORITY and debtor == one.party:  # the party's own payment's
        xml.put(transaction, "PmtTpInf/InstrPrty", "HIGH")
    xml.put(transaction, "IntrBkSttlmAmt", xml.amount_text(minor, currency), Ccy=currency)
    xml.put(transaction, "IntrBkSttlmDt", one.settlement_date)
    for role, party in (("Dbtr", debtor), ("Cdtr", creditor)):
        put_agent(transaction, role, party)
        if (account := accounts.get(role)) is not None:
            xml.put(transaction, f"{role}Acct/Id/Othr/Id", account)


def put_agent(parent: etree._Element, role: str, party: str) -> None:
    """A financial institution as Lockstep names it: FinInstnId/Othr, issued by LOCKSTEP."""
    xml.put(parent, f"{role}/FinInstnId/Othr/Id", party)
    xml.put(parent, f"{role}/FinInstnId/Othr/Issr", xml.ISSUER)
