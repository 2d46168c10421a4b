"""What Lockstep reads from and writes into ISO 20022 documents, as plain records.

The documents are the back offices' language; these records are ours. A reader turns
one counterparty's instruction (sese.023 for a DvP, pacs.009 for a PvP) into a
`OneSided`; matching pairs two of them (protocols.matching). Writers turn `Advice`,
`Confirmation` and `Statement` records into sese.024, sese.025 (pacs.002 for a PvP)
and camt.053 documents."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import attrs

SESE_023 = "sese.023.001.11"
PACS_009 = "pacs.009.001.11"
FORMATS = (SESE_023, PACS_009)  # what a counterparty instructs in
SESE_024 = "sese.024.001.12"  # what Lockstep writes: status advices,
SESE_025 = "sese.025.001.11"  # settlement confirmations,
PACS_002 = "pacs.002.001.14"  # a PvP's payment status,
CAMT_053 = "camt.053.001.12"  # account statements

# the party a document's identifier names (`BIC/<11 characters>`, `LEI/<20>`), or None:
# protocols.registry.Registry.identified_by. Ids issued by LOCKSTEP are party ids already.
Names = Callable[[str], str | None]


NORMAL_PRIORITY = 4  # an instruction's priority when it states none (T2S: 1 reserved, 2 top, 3 high, 4 normal)
HIGH_PRIORITY = 3  # a pacs.009 payment's InstrPrty HIGH


@attrs.frozen
class OneSided:
    """One counterparty's side of a trade, as its own document states it. Each side
    names only its own accounts: the account it pays `gives` from and the account it is
    paid `takes` into; the counterparty's accounts come from the counterparty's side.

    DvP (sese.023): the deliverer (DELI) gives the instrument (ISIN, units) from its
    safekeeping account and takes the cash (currency, minor units) into its cash account;
    the receiver (RECE) gives the cash and takes the instrument. Free of payment (FREE),
    the cash side is nothing: asset and account None, amount 0. PvP (pacs.009): each side
    gives one currency and takes the other (side `pay`, both transfers in one document),
    or sends only its own payment (side `leg`, one transfer): it names the counterparty's
    account it pays into (`pays_into`), takes nothing it can state, and the two legs pair
    by their shared EndToEndId (`common_id`)."""

    format: str  # one of FORMATS
    reference: str  # the sender's own id for this instruction (sese.023 TxId, pacs.009 MsgId)
    kind: str  # "dvp" | "pvp"
    side: str  # "deliver" | "receive" (DvP); "pay" (PvP)
    party: str  # who instructs (and signs): it pays `gives`
    counterparty: str
    trade_date: str | None  # YYYY-MM-DD; None where the format has none (pacs.009)
    settlement_date: str  # YYYY-MM-DD: the intended settlement date
    gives_asset: str | None  # ISIN or ISO 4217 currency; None: nothing (the receiver, free of payment)
    gives_amount: int  # units of an instrument, minor units of a currency
    gives_account: str | None  # the party's account the asset leaves
    takes_asset: str | None  # None: nothing (the deliverer, free of payment)
    takes_amount: int
    takes_account: str | None  # the party's account the counter asset arrives in
    common_id: str | None = None  # sese.023 CmonId, pacs.009 leg's EndToEndId: must agree where both give it
    depositories: tuple[str | None, str | None] = (None, None)  # the deliverer's and receiver's
    # places of settlement (Dpstry, as 11-character BICs): must agree where both sides give one
    linked: tuple[str, ...] = ()  # Lnkgs: references of instructions linked to this one, reported
    settle_with: tuple[str, ...] = ()  # Lnkgs with processing position WITH: the references (TxId)
    # of the party's own instructions this one settles together with, or not at all
    payment: str = "APMT"  # sese.023 Pmt: APMT against payment, FREE free of payment
    pays_into: str | None = None  # a PvP leg's (pacs.009 with one transfer): the counterparty's
    # account it pays into, as the payer names it
    uetr: str | None = None  # a PvP leg's UETR (SWIFT's end-to-end tracking id), echoed in its pacs.002
    face_amount: Decimal | None = None  # the quantity as the document gives a debt instrument's:
    # a face amount (FaceAmt), in the instrument's currency; its units are 0 until
    # sese023.in_units turns it into units by the instrument's denomination
    hold: bool = False  # sese.023 HldInd: the party holds it, and it does not settle until released
    priority: int = NORMAL_PRIORITY  # sese.023 Prty/Nmrc: the settlement queue serves lower numbers first
    partial: bool = False  # sese.023 PrtlSttlmInd PART (or PARC, PARQ): it may settle in parts


@attrs.frozen
class Denomination:
    """A debt instrument's face value per unit, from its reference data."""

    currency: str
    face_value_minor: int


@attrs.frozen
class Problem:
    """One thing wrong with a document: where, why, and the ISO 20022 rejection reason
    code (RejectionReason75Code) a status advice gives for it."""

    field: str
    reason: str
    code: str = "OTHR"


@attrs.frozen
class Advice:
    """A status advice for one counterparty about its instruction (sese.024; pacs.002 for PvP)."""

    party: str
    reference: str  # the party's instruction reference
    settlement_id: str | None  # once matched
    status: str  # "rejected" | "unmatched" | "matched" | "pending" | "failed" | "cancelled"
    reason_code: str  # an ISO 20022 reason code (e.g. CMIS, DQUA, DMON, DDAT, LACK, MONY, CANC) or ""
    reason: str  # narrative: the field and why
    time_ms: int
    instruction: OneSided | None  # None when the document could not be read
    problems: tuple[Problem, ...] = ()  # a rejected document's, each given as a reason of its own


def cash_through(cash: int, units: int, through: int) -> int:
    """The cash of a DvP's first `through` units of `units`, rounded down: a part from
    unit f to unit t pays cash_through(t) - cash_through(f), so parts add up to the
    whole to the minor unit however the trade is cut."""
    return cash * through // units


@attrs.frozen
class Part:
    """A DvP settled in parts: this part's units, from `from_units` to `to_units` of the
    trade's (protocols.matching.cash_through gives the cash of each)."""

    from_units: int
    to_units: int


@attrs.frozen
class Confirmation:
    """A settlement confirmation for one counterparty (sese.025; pacs.002 ACSC for PvP)."""

    party: str
    reference: str
    settlement_id: str
    instruction: OneSided
    settled_ms: int
    part: Part | None = None  # a partial settlement's; None: the whole trade at once


@attrs.frozen
class StatementEntry:
    reference: str  # the ledger instruction id (or journal seq for the ledger's own entries)
    seq: int  # the journal position
    time_ms: int
    amount_minor: int  # signed: positive is a credit to the account
    kind: str  # the journal entry kind: transfer, settle, claim, refund, issue, ...


@attrs.frozen
class Statement:
    """A cash account's statement over a journal range (camt.053)."""

    statement_id: str
    owner: str
    ledger: str
    account: str
    currency: str
    created_ms: int
    from_seq: int
    to_seq: int
    opening_minor: int  # available balance before from_seq
    closing_minor: int  # available balance after to_seq
    entries: tuple[StatementEntry, ...]
