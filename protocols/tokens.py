"""The token view of a ledger: every holding also a set of lots, each traced to its issue.

The account view keeps balances. The token ("pass") view, derived from the same journal,
keeps where each unit came from: an `issue` creates a lot, named by the entry that made
it (`{ledger}:{seq}`); every movement (a transfer, a settle's leg, a lock, a claim, a
cancel, a refund) takes what it moves from the payer's lots oldest first, splitting the
last, and hands the pieces on with the entry added to their path; a lock's pieces wait
in the lock itself until it ends; a `redeem` retires pieces the same way. So any holding
can be read lot by lot back to its issue, and any issue followed to where it went.

Both views come from one journal, so they must agree at every height: the pieces in an
account are its available balance, the pieces in its held locks its locked balance.
`Tokens.disagreements` says where they do not (the audit checks each entry's accounts)."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping

import attrs

from .htlc import LockState
from .messages import Entry

LOCK = "lock:"  # a lock's own pocket: `lock:{lock id}`


Trail = tuple[int, "Trail"] | None  # the last entry that moved a piece, and the trail before it


@attrs.frozen
class Piece:
    """Some units of one lot: the issue that made them, and each entry that moved them
    (a trail shared by the pieces a split made, so that a journal's history is kept once)."""

    origin: str  # `{ledger}:{seq}` of the issue entry
    amount: int
    trail: Trail = attrs.field(default=None, eq=False, repr=False)

    @property
    def path(self) -> tuple[int, ...]:
        """The seq of every entry that moved them, in order: the issue first."""
        seqs, trail = [], self.trail
        while trail is not None:
            seqs.append(trail[0])
            trail = trail[1]
        return tuple(reversed(seqs))

    def moved(self, seq: int, amount: int | None = None) -> Piece:
        return Piece(self.origin, self.amount if amount is None else amount, (seq, self.trail))


@attrs.frozen
class Retired:
    """Pieces a `redeem` took out of circulation, from which account, at which entry."""

    account: str
    seq: int
    piece: Piece


class Tokens:
    """A ledger's lots, replayed entry by entry from entry 0."""

    def __init__(self, ledger: str) -> None:
        self.ledger = ledger
        self.pockets: dict[tuple[str, str], deque[Piece]] = defaultdict(deque)  # (account or lock pocket, asset)
        self.locks: dict[str, tuple[str, str, str]] = {}  # a held lock's id -> (owner, beneficiary, asset)
        self.retired: list[Retired] = []
        self.kinds: dict[int, str] = {}  # the kind of each entry that moved lots, to tell a path

    def apply(self, entry: Entry) -> None:
        """Move the lots as the entry moved the balances; AssertionError if a payer's lots
        cannot cover what it paid (the views then disagree)."""
        instruction, seq = entry.instruction or {}, entry.seq
        self.kinds[seq] = entry.kind
        if entry.kind == "issue":
            piece = Piece(f"{self.ledger}:{seq}", instruction["amount"], (seq, None))
            self.pockets[(instruction["account"], instruction["asset"])].append(piece)
        elif entry.kind == "redeem":
            for piece in self._take(instruction["account"], instruction["asset"], instruction["amount"], seq):
                self.retired.append(Retired(instruction["account"], seq, piece))
        elif entry.kind == "transfer":
            self._move(
                instruction["from_account"], instruction["to_account"], instruction["asset"], instruction["amount"], seq
            )
        elif entry.kind == "settle":
            for leg in instruction["legs"]:
                self._move(leg["from_account"], leg["to_account"], leg["asset"], leg["amount"], seq)
        elif entry.kind == "lock":
            lock_id = instruction["id"]
            self.locks[lock_id] = (
                instruction["owner_account"],
                instruction["beneficiary_account"],
                instruction["asset"],
            )
            self._move(instruction["owner_account"], LOCK + lock_id, instruction["asset"], instruction["amount"], seq)
        for lock_id, state in entry.effects.get("locks", ()):
            if state == LockState.HELD.value:
                continue
            owner, beneficiary, asset = self.locks.pop(lock_id)
            to = beneficiary if state == LockState.CLAIMED.value else owner
            pieces = self.pockets.get((LOCK + lock_id, asset), ())
            self._move(LOCK + lock_id, to, asset, sum(piece.amount for piece in pieces), seq)

    def _take(self, pocket: str, asset: str, amount: int, seq: int) -> list[Piece]:
        """`amount` out of a pocket's pieces, oldest first, the last one split."""
        pieces, taken = self.pockets[(pocket, asset)], []
        while amount:
            assert pieces, f"{pocket} has no lot of {asset} left for {amount} at entry {seq}"
            piece = pieces.popleft()
            if piece.amount > amount:
                pieces.appendleft(Piece(piece.origin, piece.amount - amount, piece.trail))
                piece = Piece(piece.origin, amount, piece.trail)
            taken.append(piece.moved(seq))
            amount -= piece.amount
        if not pieces:
            del self.pockets[(pocket, asset)]
        return taken

    def _move(self, source: str, target: str, asset: str, amount: int, seq: int) -> None:
        self.pockets[(target, asset)].extend(self._take(source, asset, amount, seq))

    # -- reading --------------------------------------------------------------------------

    def holding(self, account: str, asset: str) -> list[Piece]:
        """An account's available units of an asset, lot by lot, oldest first."""
        return list(self.pockets.get((account, asset), ()))

    def issuance(self, origin: str) -> Iterator[tuple[str, str, Piece]]:
        """Where an issue's units are now: (pocket, asset, piece), and the retired as ("redeemed", ...)."""
        for (pocket, asset), pieces in sorted(self.pockets.items()):
            for piece in pieces:
                if piece.origin == origin:
                    yield pocket, asset, piece
        for retired in self.retired:
            if retired.piece.origin == origin:
                yield f"redeemed from {retired.account}", "", retired.piece

    def disagreements(
        self, accounts: Iterable[tuple[str, str]], balances: Mapping[tuple[str, str], list[int]]
    ) -> list[str]:
        """Where the lots of these (account, asset) differ from their balances: available,
        and locked (the lots waiting in the account's held locks)."""
        locked: dict[tuple[str, str], int] = defaultdict(int)
        for lock_id, (owner, _, asset) in self.locks.items():
            locked[(owner, asset)] += sum(piece.amount for piece in self.pockets.get((LOCK + lock_id, asset), ()))
        found = []
        for account, asset in sorted(set(accounts)):
            available, held = balances.get((account, asset), [0, 0])
            lots = sum(piece.amount for piece in self.pockets.get((account, asset), ()))
            if (lots, locked[(account, asset)]) != (available, held):
                found.append(
                    f"{account} {asset}: lots {lots} available, {locked[(account, asset)]} locked; "
                    f"balances {available} available, {held} locked"
                )
        return found
