"""`lockstep pay`: a payer's multi-hop payment (docs/PROTOCOL.md, path_payment). The
order is signed with the payer's key and sent to the coordinator, whose path desk finds
intermediaries to carry it between the ledgers; printed is the outcome and the path it
took, hop by hop, each amount as people read it."""

from __future__ import annotations

from protocols.bus import Bus
from protocols.bus.clock import ServiceClock
from protocols.errors import Rejected
from protocols.messages import PathPayment, PathStatus
from protocols.money import format_amount, parse_amount

from ..daemon import DaemonError, on_bus
from .submit import DeskClient, load_party


def order(
    payment_id: str,
    coordinator: str,
    party: str,
    source: tuple[str, str, str],
    source_max: str,
    payee: str,
    target: tuple[str, str, str],
    amount: str,
    now_ms: int,
    deadline_s: float,
) -> PathPayment:
    """The payer's order from the command's arguments; ExpectedFailure naming the flag."""
    (from_ledger, from_account, source_asset), (to_ledger, to_account, asset) = source, target
    amounts = []
    for flag, currency, text in (("--source-max", source_asset, source_max), ("--amount", asset, amount)):
        try:
            amounts.append(parse_amount(currency, text))
        except ValueError as error:
            raise DaemonError(flag, str(error)) from None
    try:
        return PathPayment(
            payment_id,
            coordinator,
            party,
            now_ms,
            from_ledger,
            from_account,
            source_asset,
            amounts[0],
            payee,
            to_ledger,
            to_account,
            asset,
            amounts[1],
            now_ms + round(deadline_s * 1000),
        )
    except Rejected as error:
        raise DaemonError("payment", f"{error.field}: {error.reason}") from None


def report(status: PathStatus) -> str:
    """The outcome, then each hop: who paid whom how much, on which ledger."""
    lines = [f"payment {status.payment}: {status.phase} (settlement {status.settlement_id})"]
    if status.reason:
        lines.append(f"  {status.reason_code}: {status.reason}")
    for leg, payer, payee in zip(status.legs, status.parties, status.parties[1:], strict=False):
        lines.append(f"  {payer} -> {payee}: {format_amount(leg.asset, leg.amount)} on {leg.ledger}")
    return "\n".join(lines)


async def main(
    broker: str,
    registry_path: str,
    coordinator: str,
    party: str,
    key_file: str,
    payment_id: str,
    source: tuple[str, str, str],
    source_max: str,
    payee: str,
    target: tuple[str, str, str],
    amount: str,
    deadline_s: float,
) -> int:
    """Send the order and wait for its outcome; 0 if settled, 1 otherwise."""
    registry, key = load_party(registry_path, key_file, coordinator)
    payment = order(
        payment_id, coordinator, party, source, source_max, payee, target, amount, ServiceClock().now_ms(), deadline_s
    )

    async def send(bus: Bus) -> int:
        # routed within the deadline, then settled: claims take what they take
        status = await DeskClient(bus, registry, coordinator, party, key).pay(payment, deadline_s + 60)
        print(report(status))
        return 0 if status.phase == "settled" else 1

    return await on_bus(broker, send)
