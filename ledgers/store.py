"""A ledger's durable state, in SQLite or PostgreSQL (`database.py`): a commit is durable
before anyone is told about it.

The schema is `schema.py`'s; the queries here are written once, in the dialect both
backends take. Writes happen only inside `transaction()`, which the service opens once
per batch (group commit). The store is its database's one writer, so it keeps the rows
it has read or written and trusts them, and writes a batch's rows at its commit, a
statement's rows together.

Every write of a balance, account, asset or lock row, or of an applied instruction's
idempotency row, also updates the state digest (`protocols.journal.StateDigest`), which
the ledger's checkpoints sign: so a checkpoint costs no scan of the tables, and a start
digests them once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import attrs

from protocols.canonical import encode
from protocols.htlc import HeldLock, LockState
from protocols.journal import (
    Checkpoint,
    StateDigest,
    Tables,
    account_row,
    asset_row,
    balance_row,
    instruction_row,
    lock_row,
)

from .database import connect
from .schema import REFUND_AT, migrate


@attrs.frozen
class Asset:
    """An asset this ledger carries: an instrument (kind "security") or a currency.
    `issuer` is the party that may issue it: the instrument's issuer, or the central
    bank of the currency. `reference` holds an instrument's reference data."""

    code: str
    kind: str
    issuer: str
    minor_units: int
    reference: dict = attrs.field(factory=dict)
    issued: int = 0
    redeemed: int = 0

    @property
    def outstanding(self) -> int:
        return self.issued - self.redeemed


class Store:
    def __init__(self, database: str | Path) -> None:
        """`database`: a file's path (SQLite) or a postgresql:// URL. Raises
        DatabaseUnavailable when it cannot be opened or trusted."""
        self._db = connect(database)
        self.name = self._db.name
        try:
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise
        self._in_transaction = False
        self.digest: StateDigest | None = None  # set by `follow` when the ledger has checked the tables at start
        # rows read or written, by (table, key): the one writer of its database may trust
        # them, which spares a read per row (a round trip, on PostgreSQL); dropped whole
        # when a transaction rolls back or when they pass ROWS_CACHED_MAX
        self._rows: dict[tuple, object] = {}
        self._instructions: dict[str, tuple[bytes, str, bytes] | None] = {}  # the batch's, read at once
        self._pending: dict[str, dict[object, tuple]] = {sql: {} for sql in _FLUSH_ORDER}  # written at commit

    def close(self) -> None:
        assert not self._in_transaction, "closing the store inside a transaction"
        self._db.close()

    def reader(self) -> AbstractContextManager:
        """A read-only connection of its own (for a metrics scrape), in the same dialect."""
        return self._db.reader()

    def follow(self, digest: StateDigest) -> None:
        """Keep `digest`, the state tables' digest as checked at start, through every write."""
        assert self.digest is None, "the digest is followed from the start check only"
        self.digest = digest

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One batch: everything inside commits together, or nothing does."""
        assert not self._in_transaction
        digest_before = None if self.digest is None else self.digest.value
        if len(self._rows) > ROWS_CACHED_MAX:
            self._rows.clear()
        self._in_transaction = True
        try:
            with self._db.transaction():
                yield
                self._flush()
        except BaseException:
            for rows in self._pending.values():
                rows.clear()
            self._rows.clear()
            if self.digest is not None:
                assert digest_before is not None  # taken above, when there is a digest
                self.digest.value = digest_before
            raise
        finally:
            self._in_transaction = False
            self._instructions.clear()

    # -- reads ---------------------------------------------------------------------

    def _scan(self, sql: str, params: tuple | list = ()) -> Any:
        """A read of more than one row by its key: it must see the rows this transaction
        has kept to write. (A row read by its key is in `_rows` if it was written.)"""
        if self._in_transaction:
            self._flush()
        return self._db.execute(sql, params)

    def _cached(self, key: tuple, read: Callable[[], object]) -> Any:
        value = self._rows.get(key, _UNREAD)
        if value is _UNREAD:
            value = self._rows[key] = read()
        return value

    def meta(self, key: str) -> str | None:
        def read() -> str | None:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return row[0] if row else None

        return self._cached(("meta", key), read)

    def fence(self, coordinator: str) -> int:
        """A coordinator's fence on this ledger (its highest epoch applied here, 0 for none),
        kept in `meta`: it is not ledger state but the ledger's memory of who may act."""
        value = self.meta(f"fence:{coordinator}")
        return 0 if value is None else int(value)

    def account_owner(self, account: str) -> str | None:
        def read() -> str | None:
            row = self._db.execute("SELECT owner FROM accounts WHERE account = ?", (account,)).fetchone()
            return row[0] if row else None

        return self._cached(("accounts", account), read)

    def all_accounts(self) -> dict[str, str]:
        return dict(self._scan("SELECT account, owner FROM accounts"))

    def accounts_of(self, owner: str, limit: int) -> list[str]:
        """A party's accounts, by id (a scan of accounts: no index by owner)."""
        rows = self._scan("SELECT account FROM accounts WHERE owner = ? ORDER BY account LIMIT ?", (owner, limit))
        return [account for (account,) in rows]

    def holders(self, asset: str, after_account: str, limit: int) -> list[tuple[str, str, int, int]]:
        """(account, owner, available, locked) of every account holding some of `asset`,
        by account id after `after_account` ("" from the first)."""
        return self._scan(
            "SELECT b.account, a.owner, b.available, b.locked FROM balances b JOIN accounts a ON a.account = b.account "
            "WHERE b.asset = ? AND b.account > ? AND b.available + b.locked > 0 ORDER BY b.account LIMIT ?",
            (asset, after_account, limit),
        ).fetchall()

    def all_keys(self) -> dict[str, str]:
        """Rotated keys: party -> the hex of its key's compressed point."""
        return dict(self._scan("SELECT party, public_key FROM keys"))

    def asset(self, code: str) -> Asset | None:
        def read() -> Asset | None:
            row = self._db.execute(
                "SELECT code, kind, issuer, minor_units, reference, issued, redeemed FROM assets WHERE code = ?",
                (code,),
            ).fetchone()
            return _asset(row) if row else None

        return self._cached(("assets", code), read)

    def assets(self) -> list[Asset]:
        rows = self._scan(
            "SELECT code, kind, issuer, minor_units, reference, issued, redeemed FROM assets ORDER BY code"
        )
        return [_asset(row) for row in rows]

    def balance(self, account: str, asset: str) -> tuple[int, int]:
        """(available, locked); an account that never held the asset has (0, 0)."""

        def read() -> tuple[int, int]:
            row = self._db.execute(
                "SELECT available, locked FROM balances WHERE account = ? AND asset = ?", (account, asset)
            ).fetchone()
            return (row[0], row[1]) if row else (0, 0)

        return self._cached(("balances", account, asset), read)

    def balances_of(self, account: str) -> dict[str, tuple[int, int]]:
        rows = self._scan("SELECT asset, available, locked FROM balances WHERE account = ? ORDER BY asset", (account,))
        return {asset: (available, locked) for asset, available, locked in rows}

    def all_balances(self) -> dict[tuple[str, str], tuple[int, int]]:
        rows = self._scan("SELECT account, asset, available, locked FROM balances")
        return {(account, asset): (available, locked) for account, asset, available, locked in rows}

    def held_totals(self) -> dict[str, int]:
        """Available plus locked over every account, by asset: what conservation compares
        with issued minus redeemed."""
        rows = self._scan("SELECT asset, CAST(SUM(available) + SUM(locked) AS BIGINT) FROM balances GROUP BY asset")
        return {asset: total for asset, total in rows}

    def lock(self, lock_id: str) -> HeldLock | None:
        def read() -> HeldLock | None:
            row = self._db.execute(f"SELECT {_LOCK_COLUMNS} FROM locks WHERE lock_id = ?", (lock_id,)).fetchone()
            return _lock(row) if row else None

        return self._cached(("locks", lock_id), read)

    def locks_due(self, now_ms: int, limit: int) -> list[HeldLock]:
        """Held locks at or past their refund time, soonest first."""
        rows = self._scan(
            f"SELECT {_LOCK_COLUMNS} FROM locks WHERE state = 'held' AND {REFUND_AT} <= ? "
            f"ORDER BY {REFUND_AT}, lock_id LIMIT ?",
            (now_ms, limit),
        )
        return [_lock(row) for row in rows]

    def locks_expiring(self, before_ms: int, limit: int) -> list[HeldLock]:
        """Held locks whose expiry (a decision lock's: the time to be decided by) is
        before `before_ms`, soonest first."""
        rows = self._scan(
            f"SELECT {_LOCK_COLUMNS} FROM locks WHERE state = 'held' AND expiry_ms < ? "
            "ORDER BY expiry_ms, lock_id LIMIT ?",
            (before_ms, limit),
        )
        return [_lock(row) for row in rows]

    def all_locks(self) -> list[HeldLock]:
        return [_lock(row) for row in self._scan(f"SELECT {_LOCK_COLUMNS} FROM locks ORDER BY lock_id")]

    def next_refund_ms(self) -> int | None:
        """When the ledger next refunds a lock by itself, if it holds any."""
        row = self._scan(f"SELECT MIN({REFUND_AT}) FROM locks WHERE state = 'held'").fetchone()
        assert row is not None  # an aggregate answers one row
        return row[0]

    def instruction(self, instruction_id: str) -> tuple[bytes, str, bytes] | None:
        """(digest, canonical body, signed receipt) of an instruction already answered."""
        if instruction_id in self._instructions:  # recalled, or written in this transaction
            return self._instructions[instruction_id]
        return self._db.execute(
            "SELECT digest, body, receipt FROM instructions WHERE id = ?", (instruction_id,)
        ).fetchone()

    def recall_instructions(self, ids: list[str]) -> None:
        """Look up these instructions at once, for `instruction` to answer for the rest of
        the transaction (with what it then writes of them)."""
        assert self._in_transaction, "recalled outside a transaction"
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), RECALL_IDS_MAX):
            chunk = unique[start : start + RECALL_IDS_MAX]
            for id_ in chunk:
                self._instructions.setdefault(id_, None)
            rows = self._scan(
                f"SELECT id, digest, body, receipt FROM instructions WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for id_, digest, body, receipt in rows:
                self._instructions[id_] = (digest, body, receipt)

    def tables(self) -> Tables:
        """Every state row, to hold against a replay of the journal at start."""
        assets = {
            a.code: ((a.kind, a.issuer, a.minor_units, a.reference), [a.issued, a.redeemed]) for a in self.assets()
        }
        return Tables(
            self.all_balances(),
            self.all_accounts(),
            assets,
            {lock.lock_id: lock for lock in self.all_locks()},
            self.all_keys(),
            {row[0] for row in self._scan("SELECT id FROM instructions")},
            dict(self._scan("SELECT id, seq FROM instructions WHERE seq IS NOT NULL")),
        )

    def head(self) -> tuple[int, str] | None:
        """(seq, hash) of the last journal entry."""
        return self._scan("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()

    def journal(self, from_seq: int = 0, limit: int | None = None) -> list[tuple[int, str, bytes]]:
        """Entries from `from_seq` on, `limit` of them at most (None: all)."""
        if limit is None:
            return self._scan(
                "SELECT seq, hash, entry FROM journal WHERE seq >= ? ORDER BY seq", (from_seq,)
            ).fetchall()
        return self._scan(
            "SELECT seq, hash, entry FROM journal WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit)
        ).fetchall()

    def checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint, as stored (its signature is the reader's to check)."""
        row = self._scan(
            "SELECT seq, entry_hash, state_digest, keys, signature FROM checkpoints ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        seq, entry_hash, digest, keys, signature = row
        return Checkpoint(seq, entry_hash, digest, json.loads(keys), bytes(signature))

    # -- writes (inside a transaction) ------------------------------------------------

    def _write(self, sql: str, key: object, params: tuple) -> None:
        """Keep the row to write at the transaction's end, the last write of a key
        winning: one `executemany` per statement then, a third of a statement's cost."""
        assert self._in_transaction, "write outside a transaction"
        rows = self._pending[sql]
        assert sql not in _INSERTS or key not in rows, f"{sql}: {key} written twice in one transaction"
        rows[key] = params

    def _flush(self) -> None:
        """Write what the transaction has kept, table by table in an order that meets
        every foreign key: before a read that scans a table, and at commit."""
        for sql, rows in self._pending.items():
            if rows:
                if sql is _PUT_CHECKPOINT:
                    self._db.execute("DELETE FROM checkpoints")
                self._db.executemany(sql, list(rows.values()))
                rows.clear()

    def _digest_row(self, old: list | None, new: list | None) -> None:
        assert self.digest is not None, "a state row written before the start check followed the digest"
        self.digest.replace(old, new)

    def set_meta(self, key: str, value: str) -> None:
        self._write(_SET_META, key, (key, value))
        self._rows["meta", key] = value

    def set_fence(self, coordinator: str, epoch: int) -> None:
        self.set_meta(f"fence:{coordinator}", str(epoch))

    def put_account(self, account: str, owner: str) -> None:
        self._write(_PUT_ACCOUNT, account, (account, owner))
        self._rows["accounts", account] = owner
        self._digest_row(None, account_row(account, owner))

    def put_key(self, party: str, public_key: str) -> None:
        self._write(_PUT_KEY, party, (party, public_key))

    def put_asset(self, asset: Asset) -> None:
        old = self.asset(asset.code)
        row = (
            asset.code,
            asset.kind,
            asset.issuer,
            asset.minor_units,
            _json(asset.reference),
            asset.issued,
            asset.redeemed,
        )
        self._write(_PUT_ASSET, asset.code, row)
        self._rows["assets", asset.code] = asset
        self._digest_row(None if old is None else _asset_row(old), _asset_row(asset))

    def set_balance(self, account: str, asset: str, available: int, locked: int) -> None:
        assert available >= 0 and locked >= 0, f"negative balance {account}/{asset}: {available}, {locked}"
        old = self.balance(account, asset)
        self._write(_SET_BALANCE, (account, asset), (account, asset, available, locked))
        self._rows["balances", account, asset] = (available, locked)
        self._digest_row(balance_row(account, asset, *old), balance_row(account, asset, available, locked))

    def put_lock(self, lock: HeldLock) -> None:
        old = self.lock(lock.lock_id)
        row = (
            lock.lock_id,
            lock.owner_account,
            lock.beneficiary_account,
            lock.asset,
            lock.amount,
            lock.hashlock,
            lock.expiry_ms,
            _json(list(lock.abort_by)),
            lock.state.value,
            lock.cancel_hashlock,
            lock.backstop_ms,
        )
        self._write(_PUT_LOCK, lock.lock_id, row)
        self._rows["locks", lock.lock_id] = lock
        self._digest_row(None if old is None else lock_row(old), lock_row(lock))

    def put_instruction(self, instruction_id: str, digest: bytes, body: str, receipt: bytes, seq: int | None) -> None:
        """`seq`: the entry that applied it; None for a refusal recorded against its id."""
        self._write(_PUT_INSTRUCTION, instruction_id, (instruction_id, digest, body, receipt, seq))
        self._instructions[instruction_id] = (digest, body, receipt)
        if seq is not None:
            self._digest_row(None, instruction_row(instruction_id, seq))

    def append_entry(self, seq: int, entry_hash: str, entry: bytes) -> None:
        self._write(_APPEND_ENTRY, seq, (seq, entry_hash, entry))

    def put_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Replace the checkpoint: only the latest is ever read."""
        row = (
            checkpoint.seq,
            checkpoint.entry_hash,
            checkpoint.state_digest,
            _json(checkpoint.keys),
            checkpoint.signature,
        )
        self._write(_PUT_CHECKPOINT, "latest", row)


ROWS_CACHED_MAX = 200_000  # about 40 MB of rows kept between batches
RECALL_IDS_MAX = 500  # ids in one query (SQLite takes 32,766 parameters)
_UNREAD = object()

_LOCK_COLUMNS = (
    "lock_id, owner_account, beneficiary_account, asset, amount, hashlock, expiry_ms, abort_by, state, "
    "cancel_hashlock, backstop_ms"
)
_SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
_PUT_ACCOUNT = "INSERT INTO accounts (account, owner) VALUES (?, ?)"
_PUT_KEY = (
    "INSERT INTO keys (party, public_key) VALUES (?, ?) "
    "ON CONFLICT (party) DO UPDATE SET public_key = excluded.public_key"
)
_PUT_ASSET = (
    "INSERT INTO assets (code, kind, issuer, minor_units, reference, issued, redeemed) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (code) DO UPDATE SET kind = excluded.kind, issuer = excluded.issuer, "
    "minor_units = excluded.minor_units, reference = excluded.reference, issued = excluded.issued, "
    "redeemed = excluded.redeemed"
)
_SET_BALANCE = (
    "INSERT INTO balances (account, asset, available, locked) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (account, asset) DO UPDATE SET available = excluded.available, locked = excluded.locked"
)
_PUT_LOCK = (
    f"INSERT INTO locks ({_LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (lock_id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _LOCK_COLUMNS.split(", ")[1:])
)
_PUT_INSTRUCTION = "INSERT INTO instructions (id, digest, body, receipt, seq) VALUES (?, ?, ?, ?, ?)"
_APPEND_ENTRY = "INSERT INTO journal (seq, hash, entry) VALUES (?, ?, ?)"
_PUT_CHECKPOINT = "INSERT INTO checkpoints (seq, entry_hash, state_digest, keys, signature) VALUES (?, ?, ?, ?, ?)"
# the order rows are written in: accounts and assets before the balances that name them
_FLUSH_ORDER = (
    _SET_META,
    _PUT_ACCOUNT,
    _PUT_KEY,
    _PUT_ASSET,
    _SET_BALANCE,
    _PUT_LOCK,
    _PUT_INSTRUCTION,
    _APPEND_ENTRY,
    _PUT_CHECKPOINT,
)
_INSERTS = (_PUT_ACCOUNT, _PUT_INSTRUCTION, _APPEND_ENTRY)  # a key written twice is a bug, not an update


def _lock(row: tuple) -> HeldLock:
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


def _asset_row(asset: Asset) -> list:
    return asset_row(
        asset.code, (asset.kind, asset.issuer, asset.minor_units, asset.reference), (asset.issued, asset.redeemed)
    )


def _asset(row: tuple) -> Asset:
    code, kind, issuer, minor_units, reference, issued, redeemed = row
    return Asset(code, kind, issuer, minor_units, json.loads(reference), issued, redeemed)


def _json(value: object) -> str:
    """A column's JSON text: canonical (keys sorted, no spaces); rows written before,
    with the standard library's spacing, read the same."""
    return encode(value).decode()
