"""`lockstep audit`: penetrating supervision over the ledgers' journals.

The auditor trusts nothing but the ledgers' keys in the registry. It reads every ledger's
journal (from its database file, read-only, or over the bus), checks every hash link and
every ledger signature, replays the effects to recompute every balance, and checks, entry
by entry, that no value is created or destroyed, no balance goes negative, and the token
view (protocols/tokens.py: each unit a lot traced to its issue) holds what the balances do. Then it
checks across ledgers what no single ledger can see: that every settlement's locks
(`{id}:0`, `{id}:1`, and on for a linked settlement's netted legs) ended claimed on
every leg or on none, and that no lock is left
held past its refund time (a time-lock's expiry, a decision lock's backstop) plus a grace period.

A journal that breaks is trusted up to the entry before the break; a settlement leg whose
fate may lie beyond a break, or on a ledger not audited, is left unjudged, not guessed.
"Now", for each ledger, is the time of its last entry: the clock that decided its
expiries, so that an audit of the same files always says the same."""

from __future__ import annotations

import enum
import itertools
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from pathlib import Path

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric import ec

from protocols import canonical
from protocols.authority import terms_of
from protocols.bus import Bus, BusTimeout
from protocols.bus.address import redacted
from protocols.bus.client import BadReply, LedgerClient
from protocols.bus.follow import PAGE_SIZE
from protocols.bus.mqtt import MqttBus
from protocols.canonical import INT_MAX
from protocols.databases import error_line, is_postgres
from protocols.errors import Rejected
from protocols.failures import ExpectedFailure, file_reason
from protocols.htlc import HeldLock, LockState
from protocols.journal import GENESIS_HASH, ChainBroken, ChainChecker, Link, Replay, Tables, differences, verify_chain
from protocols.matching import MATCHED_PREFIX, pair_of
from protocols.messages import Entry, QueryJournal
from protocols.money import format_amount, format_balance
from protocols.registry import Registry, Role
from protocols.settlement import lock_id
from protocols.signing import Signed
from protocols.tokens import Tokens

from . import effects
from .graces import AUDIT_GRACE_MS


class AuditError(ExpectedFailure):
    """A journal could not be read at all (a database, a ledger over the bus), or the
    command was asked for something it cannot do."""


class Kind(enum.Enum):
    JOURNAL = "journal"  # an entry out of place, a broken hash link or signature
    REPLAY = "replay"  # signed by the ledger, but its effects cannot have happened
    FORGED = "forged"  # signed by the ledger, but not what its instruction vouches for (effects.py)
    STATE = "state"  # a ledger's state tables differ from its journal
    CONSERVATION = "conservation"  # an entry creates or destroys value, or leaves a balance negative
    ONE_LEGGED = "one_legged"  # one leg claimed, the other beyond claiming
    LOCK_OVERDUE = "lock_overdue"  # still held past its refund time (expiry or backstop) plus the grace period
    SETTLED_TWICE = "settled_twice"  # a matched pair moved by more than one of its tries
    TOKENS = "tokens"  # the token view (lots traced to their issue) differs from the balances


@attrs.frozen
class At:
    """A journal entry, as a violation names it."""

    ledger: str
    seq: int
    kind: str = ""
    time_ms: int = attrs.field(default=0, eq=False)  # on the ledger's clock

    def __str__(self) -> str:
        return f"{self.ledger}#{self.seq}" + (f" {self.kind}" if self.kind else "")


@attrs.frozen
class Violation:
    kind: Kind
    reason: str
    ledgers: tuple[str, ...]
    entries: tuple[At, ...] = ()
    settlement: str | None = None

    def __str__(self) -> str:
        return f"VIOLATION {self.text()}"

    def text(self) -> str:
        """What, where, which settlement, which entries: the report's line and the observer's alert."""
        subject = f"settlement {self.settlement}: " if self.settlement else ""
        entries = f" [entries {', '.join(map(str, self.entries))}]" if self.entries else ""
        return f"{self.kind.value} on {', '.join(self.ledgers)}: {subject}{self.reason}{entries}"


@attrs.frozen
class Terms:
    """What the journals need of a settlement to judge it: where its legs are, and the
    deadline after which no ledger accepts a lock for it."""

    settlement: str
    ledgers: tuple[str, ...]
    deadline_ms: int
    units: tuple[int, int] | None = None  # a partial try of a matched pair: the trade's units it moves
    pairs: tuple[str, ...] = ()  # a linked settlement's: the matched pairs' tries it settles together
    payers: tuple[str, ...] = ()  # a multi-hop payment's: who pays each leg (leg i + 1 pays leg i's payer)

    def tries(self, entries: tuple[At, ...]) -> list[Try]:
        """The matched pairs' tries that moved, if it moved: itself, or each of its pairs."""
        if self.pairs:
            return [Try(pair, entries, None) for pair in self.pairs]
        return [Try(self.settlement, entries, self.units)]


class _Unreplayable(Exception):
    def __init__(self, violation: Violation) -> None:
        super().__init__(violation.reason)
        self.violation = violation


# -- one ledger ---------------------------------------------------------------------------------


@attrs.define
class LedgerJournal:
    """One ledger's journal as far as it can be trusted: replayed, with the entries that
    placed and ended each lock, the settlement each coordinator's lock belongs to, and
    every problem found on the way."""

    ledger: str
    replay: Replay = attrs.field(factory=Replay)
    registry: Registry | None = None  # to verify each instruction's signatures and authority
    entries: int = 0
    head_hash: str = GENESIS_HASH
    now_ms: int = 0  # time of the last entry
    placed: dict[str, At] = attrs.field(factory=dict)  # lock id -> its lock entry
    ended: dict[str, At] = attrs.field(factory=dict)  # lock id -> its claim, cancel, abort or refund
    legs: dict[str, Terms] = attrs.field(factory=dict)  # lock id -> its settlement (from `auth`)
    settles: int = 0  # same-ledger settlements
    # a matched pair's same-ledger try: its id -> its settle entry, and a partial try's units
    settled: list[tuple[str, At, tuple[int, int] | None]] = attrs.field(factory=list)  # each, however often
    problems: list[Violation] = attrs.field(factory=list)
    broken_at: int | None = None
    tokens: Tokens | None = None  # the token view, checked against the balances entry by entry (the
    # audit's, from entry 0; not the live observer's, whose memory stays bounded)

    @property
    def intact(self) -> bool:
        return self.broken_at is None

    def read(self, checked: Iterable[tuple[Signed, str]]) -> None:
        """Apply entries as they pass the chain checks, up to the first that does not."""
        try:
            for signed, entry_hash in checked:
                self._apply(signed.msg, entry_hash)
        except ChainBroken as error:
            self.chain_broken(error)
        except _Unreplayable as error:
            self.problems.append(error.violation)
            self.broken_at = error.violation.entries[0].seq

    def chain_broken(self, error: ChainBroken) -> None:
        self.stop(error.seq, f"journal entry {error.seq} {error.reason}")

    def stop(self, seq: int, reason: str) -> None:
        """The journal is not what the ledger wrote from entry `seq` on."""
        self.problems.append(
            Violation(Kind.JOURNAL, f"{reason}; nothing from it on is trusted", (self.ledger,), (At(self.ledger, seq),))
        )
        self.broken_at = seq

    def _apply(self, entry: Entry, entry_hash: str) -> None:
        at = At(self.ledger, entry.seq, entry.kind, entry.time_ms)
        forged = None
        try:
            self._check_locks(entry, at)
            try:
                effects.check(entry, self.replay, self.registry)
            except effects.Unvouched as error:  # replayed all the same, to say what it did to balances
                forged = Violation(Kind.FORGED, f"{entry.kind} entry: {error}", (self.ledger,), (at,))
            self.replay.apply(entry)
            if entry.kind == "lock" and entry.instruction is not None:
                self._placed(entry.instruction, at)
        except (AttributeError, KeyError, TypeError, ValueError, Rejected) as error:
            raise _Unreplayable(
                Violation(Kind.REPLAY, f"effects cannot be replayed: {error!r}", (self.ledger,), (at,))
            ) from None
        self._check_conservation(entry.effects, at)
        self._check_tokens(entry, at)
        if forged is not None:
            raise _Unreplayable(forged)
        if entry.kind == "settle":
            self.settles += 1
            auth = entry.instruction.get("auth") if entry.instruction is not None else None
            if auth is not None and auth.get("type") == "matched":  # a matched pair's try: kept to check
                self.settled.append((terms_of(auth, None).id, at, _part(auth)))
            if auth is not None and auth.get("type") == "linked":  # each of its pairs' tries, likewise
                self.settled += [(pair.id, at, None) for pair in terms_of(auth, None).pairs]
        self.entries += 1
        self.head_hash, self.now_ms = entry_hash, entry.time_ms

    def _check_locks(self, entry: Entry, at: At) -> None:
        """A lock is placed once and ends once, from held."""
        if entry.kind == "lock" and entry.instruction is not None and entry.instruction.get("id") in self.replay.locks:
            raise _Unreplayable(
                Violation(Kind.REPLAY, f"places lock {entry.instruction['id']} a second time", (self.ledger,), (at,))
            )
        for lock, state in entry.effects.get("locks", ()):
            if state == LockState.HELD.value:
                continue
            was = self._not_held(lock, at)
            if was is not None:
                raise _Unreplayable(
                    Violation(Kind.REPLAY, f"ends lock {lock} {state}, but it is {was}", (self.ledger,), (at,))
                )
            self.ended[lock] = at

    def _not_held(self, lock: str, at: At) -> str | None:
        current = self.replay.locks.get(lock)
        if current is None:
            return "not in the journal"
        if current.state is not LockState.HELD:
            return current.state.value
        if self.ended.get(lock) == at:
            return "ended earlier in this entry"
        return None

    def _placed(self, instruction: dict, at: At) -> None:
        self.placed[instruction["id"]] = at
        if instruction.get("auth") is not None:
            terms = terms_of(instruction["auth"], None)  # its signatures: effects.check
            ledgers = tuple(leg.ledger for leg in terms.legs)
            pairs = tuple(pair.id for pair in terms.pairs)
            payers = terms.payers if terms.kind == "path" else ()
            self.legs[instruction["id"]] = Terms(
                terms.id, ledgers, terms.deadline_ms, _part(instruction["auth"]), pairs, payers
            )

    def _check_tokens(self, entry: Entry, at: At) -> None:
        """The token view moved as the entry moved the balances: each account it touched
        holds in lots what it holds in its balances. After a disagreement the token view
        is not followed further (every entry after would disagree too)."""
        if self.tokens is None:
            return
        try:
            self.tokens.apply(entry)
            touched = [(account, asset) for account, asset, _, _ in entry.effects.get("balances", ())]
            found = self.tokens.disagreements(touched, self.replay.balances)
        except (AssertionError, KeyError, TypeError) as error:
            found = [f"its lots cannot be moved as it says: {error}"]
        if found:
            reason = "the token view and the account view disagree: " + "; ".join(found)
            self.problems.append(Violation(Kind.TOKENS, reason, (self.ledger,), (at,)))
            self.tokens = None

    def _check_conservation(self, effects: dict, at: At) -> None:
        """What this entry moved between balances equals what it issued less what it
        redeemed, asset by asset, and it leaves no balance negative."""
        moved: dict[str, int] = defaultdict(int)
        supplied: dict[str, int] = defaultdict(int)
        for _, asset, available_delta, locked_delta in effects.get("balances", ()):
            moved[asset] += available_delta + locked_delta
        for asset, issued_delta, redeemed_delta in effects.get("supply", ()):
            supplied[asset] += issued_delta - redeemed_delta
        problems = [
            f"balances change by {format_amount(asset, moved[asset])}, "
            f"issued minus redeemed by {format_amount(asset, supplied[asset])}"
            for asset in sorted(moved.keys() | supplied.keys())
            if moved[asset] != supplied[asset]
        ]
        for account, asset in sorted({(row[0], row[1]) for row in effects.get("balances", ())}):
            available, locked = self.replay.balances[(account, asset)]
            if available < 0 or locked < 0:
                problems.append(f"{account} left negative: {format_balance(asset, available, locked)}")
        self.problems += [Violation(Kind.CONSERVATION, problem, (self.ledger,), (at,)) for problem in problems]

    def overdue(self, grace_ms: int, now_ms: int | None = None) -> Iterator[Violation]:
        """Locks held past their refund time plus grace: at the time of the last entry, or at `now_ms`
        on an observer's clock if later."""
        now_ms = self.now_ms if now_ms is None else max(self.now_ms, now_ms)
        for lock in self.replay.locks.values():
            if lock.state is LockState.HELD and now_ms > lock.refund_at_ms + grace_ms:
                terms = self.legs.get(lock.lock_id)
                yield Violation(
                    Kind.LOCK_OVERDUE,
                    f"lock {lock.lock_id} ({format_amount(lock.asset, lock.amount)} of "
                    f"{lock.owner_account}) still held {now_ms - lock.refund_at_ms} ms after its "
                    f"{'backstop' if lock.decides else 'expiry'}",
                    (self.ledger,),
                    (self.placed[lock.lock_id],),
                    terms.settlement if terms else None,
                )

    def forget(self, lock: str) -> None:
        """Drop what is kept of an ended lock whose settlement is judged for good (a live
        observer's memory bound). An entry that ends it again is still refused by the
        replay, as ending a lock not in the journal; one placing it again goes unnoticed."""
        for kept in (self.replay.locks, self.placed, self.ended, self.legs):
            kept.pop(lock, None)

    def summary(self) -> LedgerSummary:
        # each entry was checked on its own; the totals then hold too (pairs the check)
        assert self.problems or not self.replay.conservation_problems(), self.replay.conservation_problems()
        outstanding = {code: issued - redeemed for code, (issued, redeemed) in sorted(self.replay.supply.items())}
        return LedgerSummary(self.ledger, self.entries, self.head_hash, outstanding, self.broken_at)


# -- across ledgers ----------------------------------------------------------------------------


@attrs.frozen
class LegView:
    """One leg's lock as its ledger's journal tells it. `state` is a lock state, "absent"
    (never placed) or "unknown" (ledger not audited, or its journal broken before the
    leg's end); `open` says whether it may still be claimed (or placed, then claimed)."""

    ledger: str
    state: str
    open: bool
    entries: tuple[At, ...] = ()


def legs_of(terms: Terms, journals: Mapping[str, LedgerJournal], now_ms: int | None = None) -> list[LegView]:
    """Each leg of a settlement as its ledger's journal tells it. The journal's "now" is
    the time of its last entry, or `now_ms` if later: a time every ledger's clock has
    surely passed, which a live observer knows and the journals may not show yet."""
    return [
        _leg(journals.get(ledger), ledger, lock_id(terms.settlement, index), terms.deadline_ms, now_ms)
        for index, ledger in enumerate(terms.ledgers)
    ]


def _leg(journal: LedgerJournal | None, ledger: str, lock: str, deadline_ms: int, now_ms: int | None) -> LegView:
    if journal is None:
        return LegView(ledger, "unknown", False)
    held = journal.replay.locks.get(lock)
    entries = tuple(at for at in (journal.placed.get(lock), journal.ended.get(lock)) if at is not None)
    if held is not None and held.state is not LockState.HELD:
        return LegView(ledger, held.state.value, False, entries)  # an end is final: a break after it changes nothing
    if not journal.intact:
        return LegView(ledger, "unknown", False, entries)
    now_ms = journal.now_ms if now_ms is None else max(journal.now_ms, now_ms)
    if held is None:
        return LegView(ledger, "absent", now_ms <= deadline_ms)
    return LegView(ledger, "held", now_ms < held.refund_at_ms, entries)


_BEYOND_CLAIMING = {  # a leg's state -> what it says, and why that breaks atomicity when it is not plain
    "refunded": ("refunded to its owner", ""),
    "aborted": ("aborted", ""),
    "cancelled": ("cancelled", ": both the claim secret and the cancellation were revealed"),
    "held": ("still held past its refund time", ""),
    "absent": ("never locked, and the deadline has passed", ""),
}


def judge(terms: Terms, legs: list[LegView]) -> tuple[str, Violation | str | None]:
    """A settlement's outcome across its ledgers, with its violation or a note."""
    states = [leg.state for leg in legs]
    if "unknown" in states:
        return "unchecked", None
    if all(state == "claimed" for state in states):
        return "settled", None
    if "claimed" not in states:
        return ("in progress" if "held" in states else "rolled back"), None
    claimed = states.index("claimed")
    others = [(index, leg) for index, leg in enumerate(legs) if leg.state != "claimed"]
    said = f"leg {claimed} claimed on {legs[claimed].ledger}, "
    if all(leg.open for _, leg in others):
        unclaimed = ", ".join(
            f"leg {index} {'not yet locked' if leg.state == 'absent' else leg.state} on {leg.ledger}"
            for index, leg in others
        )
        return "incomplete", f"settlement {terms.settlement}: {said}{unclaimed}, still claimable"
    index, other = next((index, leg) for index, leg in others if not leg.open)
    entries = tuple(at for leg in legs for at in leg.entries)
    return "one-legged", Violation(
        Kind.ONE_LEGGED,
        f"{said}leg {index} {_BEYOND_CLAIMING[other.state][0]} on {other.ledger}{_BEYOND_CLAIMING[other.state][1]}"
        + _unpaid(terms, legs),
        tuple(dict.fromkeys(leg.ledger for leg in legs)),
        entries,
        terms.settlement,
    )


def _unpaid(terms: Terms, legs: list[LegView]) -> str:
    """In a multi-hop payment, each intermediary that paid its outgoing leg (leg i) and
    cannot be paid its incoming one (leg i + 1): who lost by it."""
    losers = [
        f"{terms.payers[index]} paid leg {index} and was not paid leg {index + 1}"
        for index in range(len(terms.payers) - 1)
        if legs[index].state == "claimed" and legs[index + 1].state != "claimed" and not legs[index + 1].open
    ]
    return f"; {', '.join(losers)}" if losers else ""


@attrs.frozen
class LedgerSummary:
    ledger: str
    entries: int
    head_hash: str
    outstanding: dict[str, int]  # asset -> issued minus redeemed, in minor units
    broken_at: int | None = None

    def __str__(self) -> str:
        assets = ", ".join(format_amount(code, amount) for code, amount in self.outstanding.items()) or "no assets"
        broken = f" (broken at entry {self.broken_at})" if self.broken_at is not None else ""
        return f"{self.ledger}: {self.entries} entries checked{broken}, head {self.head_hash}; outstanding {assets}"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


@attrs.frozen
class Report:
    ledgers: tuple[LedgerSummary, ...]
    violations: tuple[Violation, ...]
    incomplete: tuple[str, ...]  # one leg claimed, the other still claimable: not yet a violation
    settlements: dict[str, int]  # settlements with locks, by outcome
    settles: int  # same-ledger settlements: one entry each, atomic by construction

    @property
    def clean(self) -> bool:
        return not self.violations

    def text(self) -> str:
        lines = [str(ledger) for ledger in self.ledgers]
        lines += [str(violation) for violation in self.violations]
        lines += [f"incomplete: {note}" for note in self.incomplete]
        outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(self.settlements.items()))
        lines.append(
            f"{'CLEAN' if self.clean else 'VIOLATIONS'}: {_count(len(self.ledgers), 'ledger')}, "
            f"{_count(sum(ledger.entries for ledger in self.ledgers), 'entry', 'entries')}; "
            f"{_count(sum(self.settlements.values()), 'cross-ledger settlement')} ({outcomes or 'none'}), "
            f"{self.settles} same-ledger; {_count(len(self.violations), 'violation')}"
        )
        return "\n".join(lines)


def audit(journals: list[LedgerJournal], grace_ms: int = AUDIT_GRACE_MS) -> Report:
    """Everything the journals read show, checked across ledgers."""
    by_ledger = {journal.ledger: journal for journal in journals}
    assert len(by_ledger) == len(journals), "a ledger is audited twice"
    violations = [problem for journal in journals for problem in journal.problems]
    for journal in journals:
        violations += journal.overdue(grace_ms)
    terms = {t.settlement: t for journal in journals for t in journal.legs.values()}
    outcomes: Counter[str] = Counter()
    notes = []
    moved: dict[str, list[Try]] = {}  # a matched pair -> its tries that moved a leg
    for _, t in sorted(terms.items()):
        legs = legs_of(t, by_ledger)
        outcome, finding = judge(t, legs)
        outcomes[outcome] += 1
        if isinstance(finding, Violation):
            violations.append(finding)
        elif finding is not None:
            notes.append(finding)
        if any(leg.state == "claimed" for leg in legs):
            for each in t.tries(tuple(e for g in legs for e in g.entries)):
                moved.setdefault(pair_of(each.settlement), []).append(each)
    for journal in journals:
        for settlement, at, units in journal.settled:
            moved.setdefault(pair_of(settlement), []).append(Try(settlement, (at,), units))
    violations += settled_twice(moved)
    return Report(
        tuple(journal.summary() for journal in journals),
        tuple(violations),
        tuple(notes),
        dict(outcomes),
        sum(journal.settles for journal in journals),
    )


@attrs.frozen
class Try:
    """A try of a matched pair that moved a leg, and the trade's units it moved (None: all)."""

    settlement: str
    entries: tuple[At, ...]
    units: tuple[int, int] | None


def _part(auth: dict) -> tuple[int, int] | None:
    """The units of the trade a matched pair's partial try moves."""
    if auth.get("type") != "matched" or auth.get("part_to") is None:
        return None
    return auth.get("part_from", 0), auth["part_to"]


def settled_twice(moved: Mapping[str, list[Try]]) -> Iterator[Violation]:
    """A matched pair's units are settled by one try at most (protocols.matching.attempt_id,
    part_of): the queue begins a try only after the one before it ended, and each part
    begins where the parts before it ended."""
    for pair, tries in sorted(moved.items()):
        if not pair.startswith(MATCHED_PREFIX) or len(tries) < 2:
            continue
        spans = sorted((t.units or (0, INT_MAX)) for t in tries)
        if all(before[1] <= after[0] for before, after in itertools.pairwise(spans)):
            continue  # parts, one after another
        entries = tuple(at for t in tries for at in t.entries)
        yield Violation(
            Kind.SETTLED_TWICE,
            f"matched pair {pair} moved by {len(tries)} tries: {', '.join(sorted(t.settlement for t in tries))}",
            tuple(dict.fromkeys(at.ledger for at in entries)),
            entries,
            pair,
        )


# -- reading ------------------------------------------------------------------------------------


def ledger_key(registry: Registry, ledger_id: str) -> ec.EllipticCurvePublicKey:
    party = registry.get(ledger_id)
    if party is None or Role.LEDGER not in party.roles:
        raise AuditError(f"ledger {ledger_id}", "not a ledger in the registry: its journal cannot be verified")
    return party.public_key


def read_database(database: str | Path, registry: Registry) -> LedgerJournal:
    """A ledger's journal straight from its database, read-only: an SQLite file, or a
    postgresql:// URL (read in one snapshot)."""
    if is_postgres(str(database)):
        import psycopg  # loaded only for a ledger on PostgreSQL

        name = redacted(str(database))
        try:
            with closing(psycopg.connect(str(database))) as db:
                db.read_only = True
                db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                return _read(db, name, registry, _Schema(keys=True, decision_locks=True))
        except psycopg.Error as error:
            raise AuditError(f"database {name}", f"cannot read it as a ledger's: {error_line(error)}") from None
    try:
        Path(database).open("rb").close()  # sqlite says only "unable to open database file"
    except OSError as error:
        raise AuditError(f"database {database}", file_reason(error)) from None
    uri = Path(database).resolve().as_uri() + "?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as db:
            return _read(db, str(database), registry, _Schema.of(db))
    except sqlite3.Error as error:
        raise AuditError(f"database {database}", f"not a ledger's database: {error}") from None


@attrs.frozen
class _Schema:
    """Which later tables and columns a database has: a file from before a migration
    lacks them (PostgreSQL came in with both)."""

    keys: bool
    decision_locks: bool

    @classmethod
    def of(cls, db: sqlite3.Connection) -> _Schema:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        locks = {row[1] for row in db.execute("PRAGMA table_info(locks)")}
        return cls("keys" in tables, "backstop_ms" in locks)


def _read(db, name: str, registry: Registry, schema: _Schema) -> LedgerJournal:
    ledger_id = _ledger_id(db, name)
    key = ledger_key(registry, ledger_id)
    rows = db.execute("SELECT seq, hash, entry FROM journal ORDER BY seq")
    journal = LedgerJournal(ledger_id, registry=registry, tokens=Tokens(ledger_id))
    journal.read(verify_chain((Link(seq, stored, _blob(raw)) for seq, stored, raw in rows), ledger_id, key))
    if journal.intact:  # the tables against the journal, as the ledger checks them at start
        journal.problems += [
            Violation(Kind.STATE, f"{problem} (its state tables, read from {name})", (ledger_id,))
            for problem in differences(journal.replay, _tables(db, schema))
        ]
    return journal


def _tables(db, schema: _Schema) -> Tables:
    """A ledger's state tables, read with plain SQL (the auditor runs none of the ledger's code)."""
    assets = {
        code: ((kind, issuer, minor_units, json.loads(reference)), [issued, redeemed])
        for code, kind, issuer, minor_units, reference, issued, redeemed in db.execute(
            "SELECT code, kind, issuer, minor_units, reference, issued, redeemed FROM assets"
        )
    }
    decision_columns = "cancel_hashlock, backstop_ms" if schema.decision_locks else "NULL, NULL"
    locks = {
        row[0]: _lock_row(row)
        for row in db.execute(
            "SELECT lock_id, owner_account, beneficiary_account, asset, amount, hashlock, "
            f"expiry_ms, abort_by, state, {decision_columns} FROM locks"
        )
    }
    return Tables(
        {
            (account, asset): (available, locked)
            for account, asset, available, locked in db.execute(
                "SELECT account, asset, available, locked FROM balances"
            )
        },
        dict(db.execute("SELECT account, owner FROM accounts")),
        assets,
        locks,
        dict(db.execute("SELECT party, public_key FROM keys")) if schema.keys else {},
        {row[0] for row in db.execute("SELECT id FROM instructions")},
    )


def _lock_row(row: tuple) -> HeldLock:
    lock_id, owner, beneficiary, asset, amount, hashlock, expiry_ms, abort_by, state, cancel_hashlock, backstop = row
    return HeldLock(
        lock_id,
        owner,
        beneficiary,
        asset,
        amount,
        bytes(hashlock),
        expiry_ms,
        tuple(json.loads(abort_by)),
        LockState(state),
        None if cancel_hashlock is None else bytes(cancel_hashlock),
        backstop,
    )


def _ledger_id(db, name: str) -> str:
    """From the `meta` table, or else (a file from before it) from the first journal entry."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()
    except sqlite3.OperationalError:
        row = None
    if row is None:
        first = db.execute("SELECT entry FROM journal ORDER BY seq LIMIT 1").fetchone()
        try:
            entry = canonical.decode(_blob(first[0])) if first else None
        except Rejected:
            entry = None
        row = (entry.get("ledger"),) if isinstance(entry, dict) else None
    if row is None or not isinstance(row[0], str):
        raise AuditError(f"database {name}", "no ledger id in its meta table or its journal")
    return row[0]


def _blob(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


async def read_over_bus(
    bus: Bus, registry: Registry, ledger_ids: Iterable[str], *, page_limit: int = PAGE_SIZE
) -> list[LedgerJournal]:
    return [
        await _read_ledger(LedgerClient(bus, ledger, ledger_key(registry, ledger)), registry, page_limit)
        for ledger in ledger_ids
    ]


async def _read_ledger(client: LedgerClient, registry: Registry, page_limit: int) -> LedgerJournal:
    """Page through the journal from entry 0 to the head the ledger reports; a page
    may be shorter than asked for (pages are capped in bytes too)."""
    journal = LedgerJournal(client.ledger_id, registry=registry, tokens=Tokens(client.ledger_id))
    checker = ChainChecker(client.ledger_id, client.ledger_key)
    while journal.intact:
        try:
            page = await client.query(QueryJournal(client.next_query_id(), client.ledger_id, checker.seq, page_limit))
        except (BusTimeout, BadReply, Rejected) as error:
            raise AuditError(f"ledger {client.ledger_id}", str(error)) from None
        if not (isinstance(page, dict) and isinstance(page.get("entries"), list) and isinstance(page.get("head"), int)):
            raise AuditError(f"ledger {client.ledger_id}", f"answered query_journal with {str(page)[:80]}")
        journal.read(checker.check(value) for value in page["entries"])
        if checker.seq >= page["head"]:
            break
        if not page["entries"]:
            journal.stop(checker.seq, f"journal entry {checker.seq} is not sent, yet the head is {page['head']}")
    return journal


async def _read_over_mqtt(url: str, registry: Registry, ledger_ids: list[str]) -> list[LedgerJournal]:
    failure = None
    async with MqttBus.connect(url) as bus:
        try:
            return await read_over_bus(bus, registry, ledger_ids)
        except AuditError as error:
            failure = error  # raised outside the bus's nursery, which would wrap it in a group
    assert failure is not None
    raise failure


def read_journals(
    registry: Registry,
    databases: list[str] | None,
    broker: str | None,
    ledger_ids: list[str],
    refusal: tuple[str, str],
) -> list[LedgerJournal]:
    """The journals a command names: from their databases, or over a broker; `refusal`
    (subject, reason) when it names neither or both."""
    if bool(databases) == bool(broker) or bool(broker) != bool(ledger_ids):
        raise AuditError(*refusal)
    if databases:
        return [read_database(path, registry) for path in databases]
    assert broker is not None  # checked above: --db or --broker
    return trio.run(_read_over_mqtt, broker, registry, ledger_ids)


def main(
    registry_path: str,
    databases: list[str] | None,
    broker: str | None,
    ledger_ids: list[str],
    grace_ms: int = AUDIT_GRACE_MS,
) -> int:
    """Print the report; 0 if clean, 1 on any violation. An ExpectedFailure if the
    journals cannot be read (the command prints it: exit status 2)."""
    if grace_ms < 0:
        raise AuditError(f"--grace-ms {grace_ms}", "must not be negative")
    why = "give --db for each ledger's database, or --broker with --ledger for each ledger"
    journals = read_journals(Registry.load(registry_path), databases, broker, ledger_ids, ("audit", why))
    twice = [ledger for ledger, count in Counter(j.ledger for j in journals).items() if count > 1]
    if twice:
        raise AuditError(f"ledger {twice[0]}", "given more than once")
    report = audit(journals, grace_ms)
    print(report.text())
    return 0 if report.clean else 1
