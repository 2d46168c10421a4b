"""The token view (protocols/tokens.py): lots made by each issue, moved oldest first by
every transfer, leg, lock and its end, retired by redeem; traced back to their issue and
forward from it (`lockstep provenance`), and checked against the balances at every entry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.audit.journals import read_database
from engine.world.local import BOND
from protocols.messages import Entry
from protocols.registry import Registry
from protocols.tokens import LOCK, Tokens
from tests.test_audit import history  # noqa: F401 (the audit's history, a fixture)


def entry(seq: int, kind: str, instruction: dict | None = None, **effects) -> Entry:
    return Entry("csd", seq, "0" * 64, seq, kind, instruction, effects)


def issue(seq: int, account: str, amount: int) -> Entry:
    return entry(seq, "issue", {"id": f"i{seq}", "account": account, "asset": BOND, "amount": amount})


def view(pieces) -> list[tuple[str, int, tuple[int, ...]]]:
    return [(piece.origin, piece.amount, piece.path) for piece in pieces]


def transfer(seq: int, source: str, target: str, amount: int) -> Entry:
    fields = {"id": f"t{seq}", "from_account": source, "to_account": target, "asset": BOND, "amount": amount}
    return entry(seq, "transfer", fields)


def test_a_transfer_takes_the_oldest_lots_first_and_splits_the_last():
    tokens = Tokens("csd")
    for each in (issue(0, "a", 30), issue(1, "a", 50), transfer(2, "a", "b", 40)):
        tokens.apply(each)
    assert view(tokens.holding("b", BOND)) == [("csd:0", 30, (0, 2)), ("csd:1", 10, (1, 2))]
    assert view(tokens.holding("a", BOND)) == [("csd:1", 40, (1,))]
    assert sorted((pocket, piece.amount) for pocket, _, piece in tokens.issuance("csd:1")) == [("a", 40), ("b", 10)]


def test_a_lock_holds_its_lots_until_claimed_or_cancelled_and_a_redeem_retires_them():
    tokens = Tokens("csd")
    lock = {"id": "s:0", "owner_account": "a", "beneficiary_account": "b", "asset": BOND, "amount": 20}
    tokens.apply(issue(0, "a", 50))
    tokens.apply(entry(1, "lock", lock, locks=[["s:0", "held"]]))
    assert view(tokens.pockets[(LOCK + "s:0", BOND)]) == [("csd:0", 20, (0, 1))]
    assert tokens.disagreements([("a", BOND)], {("a", BOND): [30, 20]}) == []
    tokens.apply(entry(2, "claim", {"id": "c"}, locks=[["s:0", "claimed"]]))
    assert view(tokens.holding("b", BOND)) == [("csd:0", 20, (0, 1, 2))]
    tokens.apply(entry(3, "lock", {**lock, "id": "s:1", "amount": 10}, locks=[["s:1", "held"]]))
    tokens.apply(entry(4, "refund", None, locks=[["s:1", "refunded"]]))  # the ledger's own, at the backstop
    assert view(tokens.holding("a", BOND)) == [("csd:0", 20, (0,)), ("csd:0", 10, (0, 3, 4))]
    tokens.apply(entry(5, "redeem", {"id": "r", "account": "a", "asset": BOND, "amount": 25}))
    assert view(r.piece for r in tokens.retired) == [("csd:0", 20, (0, 5)), ("csd:0", 5, (0, 3, 4, 5))]
    assert tokens.disagreements([("a", BOND), ("b", BOND)], {("a", BOND): [5, 0], ("b", BOND): [20, 0]}) == []


def test_balances_the_lots_do_not_account_for_are_a_disagreement():
    tokens = Tokens("csd")
    tokens.apply(issue(0, "a", 50))
    assert tokens.disagreements([("a", BOND)], {("a", BOND): [60, 0]}) == [
        "a " + BOND + ": lots 50 available, 0 locked; balances 60 available, 0 locked"
    ]
    with pytest.raises(AssertionError, match="no lot"):
        tokens.apply(transfer(1, "a", "b", 51))


def test_every_bond_a_bank_holds_traces_back_to_the_csd_issue_through_the_entries_that_moved_it(history):  # noqa: F811
    """The audit's history: the treasury's issue, half transferred to bank-a, then DvPs
    settled by lock and claim. bank-b's bonds each come from that issue, by the transfer,
    a lock and its claim; and the issue's units are all somewhere."""
    registry = Registry.load(history / "registry.toml")
    journal = read_database(history / "csd.db", registry)
    tokens = journal.tokens
    assert tokens is not None and not journal.problems
    held = tokens.holding("b-sec", BOND)
    assert sum(piece.amount for piece in held) == journal.replay.balances[("b-sec", BOND)][0] > 0
    (issued,) = [seq for seq, kind in tokens.kinds.items() if kind == "issue"]
    for piece in held:
        assert piece.origin == f"csd:{issued}"
        assert [tokens.kinds[seq] for seq in piece.path][:2] == ["issue", "transfer"]
        assert [tokens.kinds[seq] for seq in piece.path][-2:] == ["lock", "claim"]
    assert sum(piece.amount for _, _, piece in tokens.issuance(f"csd:{issued}")) == 1_000_000

    def provenance(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "engine.cli", "provenance", "--registry", str(history / "registry.toml")]
        return subprocess.run([*command, "--db", str(history / "csd.db"), *args], capture_output=True, text=True)

    shown = provenance("--account", "b-sec", "--asset", BOND)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"b-sec on csd: {BOND} ") and lines[0].endswith(f"in {len(held)} lots")
    assert f"of issue csd:{issued}, by entries {issued} issue, " in lines[1] and lines[1].endswith(" claim")
    went = provenance("--issuance", str(issued))
    assert went.returncode == 0 and went.stdout.startswith(f"issue csd:{issued}: {BOND} 1,000,000 units, now")
    assert any(line.startswith("  b-sec: ") for line in went.stdout.splitlines()), went.stdout
    wrong = provenance("--issuance", "0")
    assert wrong.returncode == 2 and "is not an issue" in wrong.stderr
