"""`lockstep provenance`: the token view of one ledger, read from its journal and checked
as the audit checks it. Where did an account's units of an asset come from, lot by lot
back to their issue; or where did an issue's units go."""

from __future__ import annotations

from protocols.money import format_amount
from protocols.registry import Registry
from protocols.tokens import Piece, Tokens

from .journals import AuditError, LedgerJournal, read_journals


def main(
    registry_path: str,
    database: str | None,
    broker: str | None,
    ledger: str | None,
    account: str | None,
    asset: str | None,
    issuance: int | None,
) -> int:
    """Print the holding's lots or the issue's whereabouts; 1 if the journal's token view
    and balances disagree anywhere (the lots shown are then up to the first disagreement)."""
    refusal = ("provenance", "give --db for the ledger's database, or --broker with --ledger")
    if bool(database) == bool(broker) or bool(broker) != bool(ledger):
        raise AuditError(*refusal)  # before the question's own refusal
    if (issuance is None) == (account is None) or (account is None) != (asset is None):
        raise AuditError("provenance", "give --account with --asset, or --issuance")
    registry = Registry.load(registry_path)
    (journal,) = read_journals(registry, [database] if database else [], broker, [ledger] if ledger else [], refusal)
    tokens = journal.tokens
    if tokens is None:
        print("\n".join(str(problem) for problem in journal.problems))
        return 1
    if issuance is not None:
        print(_issuance(journal, tokens, issuance))
    else:
        assert account is not None and asset is not None
        print(_holding(journal, tokens, account, asset))
    return 0 if journal.intact else 1


def _holding(journal: LedgerJournal, tokens: Tokens, account: str, asset: str) -> str:
    pieces = tokens.holding(account, asset)
    total = sum(piece.amount for piece in pieces)
    lines = [f"{account} on {journal.ledger}: {format_amount(asset, total)} available, in {len(pieces)} lots"]
    lines += [f"  {_piece(tokens, asset, piece)}" for piece in pieces]
    return "\n".join(lines)


def _issuance(journal: LedgerJournal, tokens: Tokens, seq: int) -> str:
    origin = f"{journal.ledger}:{seq}"
    if tokens.kinds.get(seq) != "issue":
        raise AuditError(f"--issuance {seq}", f"entry {seq} of {journal.ledger} is not an issue")
    found = list(tokens.issuance(origin))
    asset = next((asset for _, asset, _ in found if asset), "")
    issued = sum(piece.amount for _, _, piece in found)
    lines = [f"issue {origin}: {format_amount(asset, issued) if asset else issued}, now"]
    for pocket, held_asset, piece in found:
        lines.append(f"  {pocket}: {_piece(tokens, held_asset or asset, piece)}")
    return "\n".join(lines)


def _piece(tokens: Tokens, asset: str, piece: Piece) -> str:
    path = ", ".join(f"{seq} {tokens.kinds.get(seq, '?')}" for seq in piece.path)
    return f"{format_amount(asset, piece.amount)} of issue {piece.origin}, by entries {path}"
