"""The ledger engine without I/O of its own beyond its store: it takes a batch of raw
requests and the ledger's time, applies them in one SQLite transaction, and returns one
signed reply per request and the journal entries to publish. The trio service around
it (`service.py`) only moves bytes between the bus and `process`.

Each batch first refunds every lock at or past its refund time (a time-lock's expiry, a
decision lock's backstop), so that balances reflect it the moment a batch runs and a
claim in the same batch is judged after it.

Before it serves, a ledger checks its journal and state tables. With a checkpoint (signed
every CHECKPOINT_INTERVAL_ENTRIES entries, at every start and at a clean stop) that costs
O(state rows + entries since the checkpoint), not O(journal): see docs/PROTOCOL.md §10."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from protocols import canonical, journal
from protocols.batch import BatchSignature
from protocols.canonical import MESSAGE_BYTES_MAX
from protocols.envelope import BATCH_BYTES_MAX, enclose, is_batch, item_id, open_batch, seal
from protocols.errors import Code, Rejected
from protocols.htlc import refund
from protocols.journal import (
    GENESIS_HASH,
    ChainBroken,
    Checkpoint,
    Link,
    Replay,
    StateDigest,
    Tables,
    applied_problems,
    differences,
    differences_since,
    state_digest,
    verify_chain,
)
from protocols.messages import (
    INSTRUCTIONS,
    QUERIES,
    QUERY_LIMIT_MAX,
    Body,
    Entry,
    Instruction,
    Query,
    QueryAccounts,
    QueryBalances,
    QueryHolders,
    QueryInfo,
    QueryJournal,
    QueryLock,
    QueryLocks,
    QueryReceipt,
    Receipt,
    Result,
    readable_id,
)
from protocols.money import format_amount
from protocols.registry import Registry, Role
from protocols.signing import PrivateKey, Signed, from_wire, load_public_point, sign, sign_batch, unsigned

from . import rules
from .changes import Changes
from .config import LedgerConfig
from .store import Store

ACCEPTED: tuple[type[Instruction | Query], ...] = INSTRUCTIONS + QUERIES  # what a ledger answers
log = logging.getLogger("lockstep.ledger")

JOURNAL_PAGE_MAX = 200
JOURNAL_PAGE_BYTES_MAX = 512 * 1024  # well under the broker's 1 MiB packet limit
ENTRIES_PER_EVENT_MAX = 64  # under one signature in one event: a few hundred KiB, under the broker's 1 MiB
CHECKPOINT_INTERVAL_ENTRIES = 1_000  # a start after a kill re-reads fewer than this plus one batch (~70 ms)

# Refusals not recorded against the instruction id: the sender had no authority to
# spend it (so nobody can burn another party's id), or a retry may succeed (stale).
_NOT_RECORDED = frozenset({Code.NOT_AUTHORISED, Code.MISSING_SIGNATURE, Code.STALE, Code.FENCED})


class StartRefused(Exception):
    """The ledger will not serve: its key, registry or database is not what it should be."""


class Ledger:
    def __init__(self, config: LedgerConfig, registry: Registry, key: PrivateKey, store: Store, now_ms: int) -> None:
        self.config = config
        self.id = config.ledger_id
        self.registry = registry
        self._key = key
        self.store = store
        party = registry.get(self.id)
        if party is None or Role.LEDGER not in party.roles:
            raise StartRefused(f"{self.id} is not registered as a ledger party in the registry")
        if party.public_key.public_numbers() != key.public.public_numbers():
            raise StartRefused(f"the key file does not match the key registered for {self.id}")
        stored_id = store.meta("ledger_id")
        if stored_id not in (None, self.id):
            raise StartRefused(f"{store.name} belongs to ledger {stored_id!r}, not {self.id!r}")
        checkpoint = store.checkpoint()
        self.seq, self.prev_hash = self._verify(checkpoint)
        self._checkpoint_seq = -1 if checkpoint is None else checkpoint.seq
        self._rotate(store.all_keys())
        self._unsealed: list[tuple[str, Signed[Entry]]] = []  # this batch's entries, each with its hash
        self._events: list[bytes] = []  # sealed, to publish
        self._unpublished = 0  # entries in `_events`
        # each answered request's (message type, None if applied else the refusal's code): for metrics
        self.on_outcome: Callable[[str, str | None], None] = lambda kind, code: None
        self._begin(now_ms)

    # -- start ---------------------------------------------------------------------------

    def _verify(self, checkpoint: Checkpoint | None) -> tuple[int, str]:
        """Check the hash chain and that the state tables are what the journal says: from
        the latest checkpoint when there is one, else (a database older than checkpoints)
        from entry 0. Returns the next entry's (seq, prev_hash)."""
        tables = self.store.tables()
        digest = state_digest(tables)
        head = self._verify_all(tables) if checkpoint is None else self._verify_since(checkpoint, tables, digest)
        self.store.follow(digest)
        return head

    def _verify_all(self, tables: Tables) -> tuple[int, str]:
        """Replay every entry and hold every state row against the replay."""
        replay = Replay()
        seq, prev_hash = 0, GENESIS_HASH
        for entry, entry_hash in self._entries(0, GENESIS_HASH):
            self._replay(replay, entry)
            seq, prev_hash = entry.seq + 1, entry_hash
        assert replay.applied is not None  # a replay from entry 0 keeps every applied instruction
        problems = (
            replay.conservation_problems()
            + differences(replay, tables)
            + applied_problems(dict(tables.applied), replay.applied)
        )
        if problems:
            raise StartRefused(f"{self.store.name}: state does not match the journal: {problems[0]}")
        return seq, prev_hash

    def _verify_since(self, checkpoint: Checkpoint, tables: Tables, digest: StateDigest) -> tuple[int, str]:
        """Check the checkpoint, the chain from its entry to the head and the tables
        against both. On a difference, the whole journal is read to name the row."""
        entries = self._entries(checkpoint.seq, None)
        first = next(entries, None)
        where = f"{self.store.name}: the checkpoint at journal entry {checkpoint.seq}"
        if first is None:
            raise StartRefused(f"{where} names an entry that is missing")
        if first[1] != checkpoint.entry_hash:
            raise StartRefused(f"{where} names hash {checkpoint.entry_hash}, the entry's is {first[1]}")
        if not checkpoint.signed_by(self.id, self._key.public):
            raise StartRefused(f"{where} is not signed by this ledger's key")
        since = Replay(earlier_locks={})
        seq, prev_hash = checkpoint.seq + 1, checkpoint.entry_hash
        for entry, entry_hash in entries:
            self._replay(since, entry)
            seq, prev_hash = entry.seq + 1, entry_hash
        problems = differences_since(checkpoint, since, tables, digest) + tables.conservation_problems()
        if problems:
            try:
                self._verify_all(tables)
            except StartRefused as refused:
                raise StartRefused(f"{refused} (found from the checkpoint at entry {checkpoint.seq})") from None
            raise StartRefused(f"{where}: {problems[0]}, though the tables match the whole journal")
        return seq, prev_hash

    def _entries(self, seq: int, prev_hash: str | None) -> Iterator[tuple[Entry, str]]:
        """The stored entries from `seq` on, each in place, by this ledger, linked (from
        `prev_hash`; None: the first taken as it is) and matching its stored hash, the
        last one's signature checked when the last is read."""
        links = (Link(s, h, raw) for s, h, raw in self.store.journal(seq))
        try:
            for signed, entry_hash in verify_chain(
                links, self.id, self._key.public, signatures="last", seq=seq, prev_hash=prev_hash
            ):
                yield signed.msg, entry_hash
        except ChainBroken as error:
            raise StartRefused(f"{self.store.name}: {error}") from None

    def _replay(self, replay: Replay, entry: Entry) -> None:
        try:
            replay.apply(entry)
        except ValueError as error:
            raise StartRefused(f"{self.store.name}: journal entry {entry.seq}: {error}") from None

    def _rotate(self, keys: dict[str, str]) -> None:
        """Verify from now on with these parties' new keys (RotateKey)."""
        if keys:
            self.registry = self.registry.with_keys({party: load_public_point(key) for party, key in keys.items()})

    def _begin(self, now_ms: int) -> None:
        """First start: record who this ledger is; every start: add new currencies and
        checkpoint the head, so that the next start reads from here."""
        with self.store.transaction():
            if self.store.meta("ledger_id") is None:
                self.store.set_meta("ledger_id", self.id)
            changes = Changes(self.store)
            rules.add_currencies(self.config, changes)
            effects = changes.effects()
            if effects:
                changes.write()
                self._append(now_ms, "configure", None, effects)
                self._seal()
            self._checkpoint_after(1)

    def close(self) -> None:
        """Stop cleanly: a checkpoint at the head, so that the next start reads one entry."""
        with self.store.transaction():
            self._checkpoint_after(1)
        self.store.close()

    def _checkpoint_after(self, entries: int) -> None:
        """Checkpoint the head if at least `entries` entries came after the latest
        checkpoint. Called inside a transaction, after every write of the entries
        (their idempotency rows included), so the digest is the head's state."""
        if self.seq - 1 - self._checkpoint_seq < entries:
            return
        assert self.store.digest is not None
        checkpoint = Checkpoint(self.seq - 1, self.prev_hash, self.store.digest.hexdigest(), self.store.all_keys())
        self.store.put_checkpoint(checkpoint.signed(self.id, self._key))
        self._checkpoint_seq = checkpoint.seq

    # -- batches -------------------------------------------------------------------------

    def process(self, payloads: list[bytes], now_ms: int) -> tuple[list[bytes], list[bytes]]:
        """Apply a batch; return (one reply per payload, the journal's events to publish,
        including any written at start that nobody has heard of yet). A payload is one
        message or an envelope of many (protocols/envelope.py): its reply is one signed
        reply, or one envelope of replies signed once."""
        seq_before = self.seq - self._unpublished
        with self.store.transaction():
            self._expire(now_ms)
            values = [_decoded(payload) for payload in payloads]
            self.store.recall_instructions(_instruction_ids(values))
            replies = [self._request(payload, value, now_ms) for payload, value in zip(payloads, values, strict=True)]
            self._seal()
            self._checkpoint_after(CHECKPOINT_INTERVAL_ENTRIES)
        events, self._events = self._events, []
        assert self.seq - seq_before == self._unpublished, (self.seq, seq_before, self._unpublished)
        self._unpublished = 0
        return replies, events

    def next_refund_ms(self) -> int | None:
        return self.store.next_refund_ms()

    def _expire(self, now_ms: int) -> None:
        for lock in self.store.locks_due(now_ms, self.config.limits.batch_size_max):
            changes = Changes(self.store)
            rules.release(refund(lock, now_ms), changes)
            changes.write()
            self._append(now_ms, "expire", None, changes.effects())
            self.on_outcome("expire", None)
            log.info(
                "expired lock %s: %s back to %s",
                lock.lock_id,
                format_amount(lock.asset, lock.amount),
                lock.owner_account,
            )

    def _request(self, payload: bytes, value: object, now_ms: int) -> bytes:
        """A message alone may be MESSAGE_BYTES_MAX long; a batch, BATCH_BYTES_MAX."""
        if isinstance(value, Rejected):
            return self._sign(self._refusal("unknown", readable_id(payload), _too_large(payload) or value, now_ms))
        if isinstance(value, dict) and is_batch(value):
            return self._batch(value, now_ms)
        try:
            too_large = _too_large(payload)
            if too_large:
                raise too_large
            signed = from_wire(value, allowed=ACCEPTED)
        except Rejected as error:
            return self._sign(self._refusal("unknown", readable_id(payload), error, now_ms))
        reply = self._handle(signed, now_ms)
        return reply.with_sig(self.id, self._key.sign(reply.data)).encode()

    def _batch(self, value: dict, now_ms: int) -> bytes:
        """A batch of instructions, each applied or refused on its own, in order; the
        receipts go back in one envelope, signed once."""
        try:
            _signer, items = open_batch(value, allowed=INSTRUCTIONS)
        except Rejected as error:
            return self._sign(self._refusal("batch", "unknown", error, now_ms))
        replies = [
            self._handle(item, now_ms)
            if isinstance(item, Signed)
            else unsigned(self._refusal("unknown", item_id(raw), item, now_ms))
            for item, raw in zip(items, value["items"], strict=True)
        ]
        return seal(replies, self.id, self._key)

    def _handle(self, signed: Signed, now_ms: int) -> Signed:
        """The reply to one message, not yet signed: signed alone or as part of a batch."""
        msg = signed.msg
        if msg.ledger != self.id:
            wrong = Rejected(Code.WRONG_LEDGER, "ledger", f"this is ledger {self.id!r}, not {msg.ledger!r}")
            return unsigned(self._refusal(msg.TYPE, msg.id, wrong, now_ms))
        if isinstance(msg, QUERIES):
            try:
                return unsigned(self._answer(msg, now_ms))
            except Rejected as error:
                return unsigned(self._refusal(msg.TYPE, msg.id, error, now_ms))
        return self._instruct(signed, now_ms)

    def _instruct(self, signed: Signed, now_ms: int) -> Signed[Receipt]:
        msg = signed.msg
        known = self.store.instruction(msg.id)
        if known is not None:
            digest, body, first = known
            if digest == signed.digest:
                return unsigned(_stored_receipt(first))
            reused = _reuse(canonical.decode(body.encode()), signed.body)
            return unsigned(self._refusal(msg.TYPE, msg.id, reused, now_ms))
        try:
            self.registry.verify_all(signed)
        except Rejected as error:  # unauthenticated: not recorded, an attacker cannot burn an id
            return unsigned(self._refusal(msg.TYPE, msg.id, error, now_ms))
        changes = Changes(self.store)
        try:
            rules.apply(signed, rules.Context(self.config, self.registry, now_ms), changes)
        except Rejected as error:
            log.info("refused %s %s: %s", msg.TYPE, msg.id, error)
            if error.code in _NOT_RECORDED or error.field.startswith("auth."):
                return unsigned(self._refusal(msg.TYPE, msg.id, error, now_ms))
            receipt, seq = self._refusal(msg.TYPE, msg.id, error, now_ms), None
        else:
            changes.write()
            effects = changes.effects()
            self._rotate(dict(effects.get("keys", ())))
            seq, entry_hash = self._append(now_ms, msg.TYPE, signed.wire(), effects)
            log.info("applied %s %s as entry %d", msg.TYPE, msg.id, seq)
            self.on_outcome(msg.TYPE, None)
            receipt = Receipt(self.id, msg.id, "applied", now_ms, seq=seq, entry_hash=entry_hash)
        # the receipt is kept unsigned: a repeat is answered in the framing of its own request
        reply = unsigned(receipt)
        self.store.put_instruction(msg.id, signed.digest, signed.body_bytes.decode(), reply.encode(), seq)
        return reply

    def _append(self, now_ms: int, kind: str, instruction: dict | None, effects: dict) -> tuple[int, str]:
        """Add an entry to the batch's journal; `_seal` signs and stores the batch's entries."""
        entry = unsigned(Entry(self.id, self.seq, self.prev_hash, now_ms, kind, instruction, effects))
        seq, hash_ = self.seq, journal.entry_hash(entry)
        self._unsealed.append((hash_, entry))
        self.seq, self.prev_hash = seq + 1, hash_
        return seq, hash_

    def _seal(self) -> None:
        """Sign the entries written since the last seal (one signature for them all, or
        an entry's own when it is alone, as a version-1 follower reads it), store them,
        and queue them to publish: one event for the batch."""
        unsealed, self._unsealed = self._unsealed, []
        for start in range(0, len(unsealed), ENTRIES_PER_EVENT_MAX):
            chunk = unsealed[start : start + ENTRIES_PER_EVENT_MAX]
            entries = [entry for _, entry in chunk]
            if len(entries) == 1:  # signed as it was encoded when appended, not encoded again
                signed = [entries[0].with_sig(self.id, self._key.sign(entries[0].data))]
                self._events.append(signed[0].encode())
            else:
                signed = sign_batch(entries, self.id, self._key)  # one signature, stored and published
                share = signed[0].sigs[self.id]
                assert isinstance(share, BatchSignature)
                self._events.append(enclose(entries, self.id, share.sig))
            for (hash_, _), entry in zip(chunk, signed, strict=True):
                self.store.append_entry(entry.msg.seq, hash_, entry.encode())
            self._unpublished += len(chunk)

    # -- replies -------------------------------------------------------------------------

    def _sign(self, msg: Body) -> bytes:
        return sign(msg, (self.id, self._key)).encode()

    def _refusal(self, kind: str, instruction_id: str, error: Rejected, now_ms: int) -> Receipt:
        self.on_outcome(kind, error.code.value)
        return Receipt(
            self.id,
            instruction_id,
            "rejected",
            now_ms,
            code=error.code.value,
            field=error.field,
            reason=error.reason,
        )

    def _answer(self, msg: Body, now_ms: int) -> Body:
        if isinstance(msg, QueryReceipt):
            known = self.store.instruction(msg.instruction_id)
            if known is None:
                raise Rejected(
                    Code.UNKNOWN_INSTRUCTION, "instruction_id", f"no instruction {msg.instruction_id!r} was answered"
                )
            return _stored_receipt(known[2])
        assert isinstance(msg, Query)
        return Result(self.id, msg.id, now_ms, self._query(msg))

    def _query(self, msg: Body) -> Any:
        if isinstance(msg, QueryInfo):
            assets = [
                {
                    "code": a.code,
                    "kind": a.kind,
                    "issuer": a.issuer,
                    "minor_units": a.minor_units,
                    "reference": a.reference,
                    "issued": a.issued,
                    "redeemed": a.redeemed,
                }
                for a in self.store.assets()
            ]
            return {
                "ledger": self.id,
                "role": self.config.role,
                "operator": self.config.operator,
                "assets": assets,
                "held": self.store.held_totals(),
                "head_seq": self.seq,
                "head_hash": self.prev_hash,
                "checkpoint_seq": None if self._checkpoint_seq < 0 else self._checkpoint_seq,
            }
        if isinstance(msg, QueryBalances):
            owner = self.store.account_owner(msg.account)
            if owner is None:
                raise Rejected(Code.UNKNOWN_ACCOUNT, "account", f"no account {msg.account!r} on this ledger")
            balances = {
                asset: {"available": available, "locked": locked}
                for asset, (available, locked) in self.store.balances_of(msg.account).items()
            }
            return {"account": msg.account, "owner": owner, "balances": balances}
        if isinstance(msg, QueryLock):
            lock = self.store.lock(msg.lock_id)
            if lock is None:
                raise Rejected(Code.UNKNOWN_LOCK, "lock_id", f"no lock {msg.lock_id!r} on this ledger")
            return lock_view(lock)
        if isinstance(msg, QueryLocks):
            limit = _limit(msg.limit, QUERY_LIMIT_MAX)
            return [lock_view(lock) for lock in self.store.locks_expiring(msg.expiring_before_ms, limit)]
        if isinstance(msg, QueryJournal):
            limit = _limit(msg.limit, JOURNAL_PAGE_MAX)
            entries: list[dict] = []
            size = 0
            for _, _, raw in self.store.journal(msg.from_seq, limit):
                size += len(raw)
                if entries and size > JOURNAL_PAGE_BYTES_MAX:
                    break  # a shorter page; the reader asks again from where it ends
                entries.append(canonical.decode(raw, bytes_max=len(raw)))
            return {"head": self.seq, "entries": entries}
        if isinstance(msg, QueryHolders):
            limit = _limit(msg.limit, QUERY_LIMIT_MAX)
            holders = [
                {"account": account, "owner": owner, "available": available, "locked": locked}
                for account, owner, available, locked in self.store.holders(msg.asset, msg.after_account, limit)
            ]
            return {
                "asset": msg.asset,
                "holders": holders,
                "next_after": holders[-1]["account"] if len(holders) == limit else None,
            }
        if isinstance(msg, QueryAccounts):
            accounts = self.store.accounts_of(msg.owner, QUERY_LIMIT_MAX)
            return {
                "owner": msg.owner,
                "accounts": [
                    {
                        "account": account,
                        "balances": {
                            asset: {"available": available, "locked": locked}
                            for asset, (available, locked) in self.store.balances_of(account).items()
                        },
                    }
                    for account in accounts
                ],
            }
        raise AssertionError(f"unhandled query {msg.TYPE}")


def lock_view(lock) -> dict[str, Any]:
    return {
        "lock_id": lock.lock_id,
        "owner_account": lock.owner_account,
        "beneficiary_account": lock.beneficiary_account,
        "asset": lock.asset,
        "amount": lock.amount,
        "hashlock": lock.hashlock.hex(),
        "expiry_ms": lock.expiry_ms,
        "abort_by": list(lock.abort_by),
        "state": lock.state.value,
        "cancel_hashlock": None if lock.cancel_hashlock is None else lock.cancel_hashlock.hex(),
        "backstop_ms": lock.backstop_ms,
    }


def _decoded(payload: bytes) -> object:
    """A request's value, or why it does not decode."""
    try:
        return canonical.decode(payload, bytes_max=BATCH_BYTES_MAX)
    except Rejected as error:
        return error


def _instruction_ids(values: list[object]) -> list[str]:
    """The ids that the requests of a batch may be instructions under, read before they
    are judged so that the store looks up the batch's in one query (a guess: whatever a
    request turns out to be, it is judged as usual)."""
    ids = []
    for value in values:
        if not isinstance(value, dict):
            continue
        items = value.get("items") if is_batch(value) else [value]
        ids += [item["id"] for item in items or () if isinstance(item, dict) and isinstance(item.get("id"), str)]
    return ids


def _too_large(payload: bytes) -> Rejected | None:
    if len(payload) <= MESSAGE_BYTES_MAX:
        return None
    return Rejected(Code.TOO_LARGE, "$", f"message is {len(payload)} bytes, limit is {MESSAGE_BYTES_MAX}")


def _stored_receipt(raw: bytes) -> Receipt:
    """A receipt as the instructions table keeps it: unsigned, or signed as a database
    older than batches kept it."""
    receipt = from_wire(canonical.decode(raw, bytes_max=len(raw)), allowed=(Receipt,)).msg
    assert isinstance(receipt, Receipt)
    return receipt


def _limit(limit: int, limit_max: int) -> int:
    if not 1 <= limit <= limit_max:
        raise Rejected(Code.INVALID_FIELD, "limit", f"must be 1 to {limit_max}")
    return limit


def _reuse(first: dict, again: dict) -> Rejected:
    """Name the first field in which a reused id's content differs (TigerBeetle's rule)."""
    missing = object()
    differing = sorted(key for key in first.keys() | again.keys() if first.get(key, missing) != again.get(key, missing))
    field = differing[0] if differing else "sigs"
    return Rejected(
        Code.ID_REUSED, field, f"id {again.get('id')!r} was used for an instruction with a different {field}"
    )
