"""`lockstep corporate-action`: an issuer signs a coupon or redemption mandate and sends
it to its paying agent (the coordinator) over the bus, or asks how one stands; prints
the coordinator's signed status, holder by holder."""

from __future__ import annotations

from protocols import canonical
from protocols.bus import BusTimeout, service_of_coordinator
from protocols.errors import Rejected
from protocols.matching import day_window
from protocols.messages import Body, CorporateAction, CorporateActionStatus, QueryCorporateAction, SettlementStatus
from protocols.money import format_amount
from protocols.registry import Registry
from protocols.signing import PrivateKey, Signed, from_wire, sign, unsigned

from ..daemon import DaemonError, on_bus

ANSWER_TIMEOUT_S = 10


async def main(args) -> int:
    """Send the action (or with `--query`, ask for its status) and print the answer."""
    registry = Registry.load(args.registry)
    if args.coordinator not in registry:
        raise DaemonError(f"--coordinator {args.coordinator}", f"not in the registry {args.registry}")
    if args.query:
        message: Signed[Body] = unsigned(QueryCorporateAction(f"q-{args.id}", args.coordinator, args.id))
    else:
        key = PrivateKey.load(args.issuer_key)
        try:
            start_ms, _ = day_window(args.date)
            action = CorporateAction(
                args.id,
                args.coordinator,
                args.issuer,
                args.kind,
                args.isin,
                args.securities_ledger,
                args.cash_ledger,
                args.securities_account,
                args.cash_account,
                args.currency,
                args.date,
                start_ms + args.deadline_ms,
            )
        except Rejected as error:
            raise DaemonError(f"corporate action {args.id}", f"{error.field}: {error.reason}") from None
        message = sign(action, (args.issuer, key))

    async def ask(bus) -> bytes:
        try:
            return await bus.request(
                service_of_coordinator(args.coordinator), message.encode(), timeout_s=ANSWER_TIMEOUT_S
            )
        except BusTimeout:
            raise DaemonError(
                f"coordinator {args.coordinator}", f"did not answer within {ANSWER_TIMEOUT_S} s"
            ) from None

    answer = await on_bus(args.broker, ask)
    try:
        signed = from_wire(canonical.decode(answer), allowed=(CorporateActionStatus, SettlementStatus))
    except Rejected as error:
        raise DaemonError(f"coordinator {args.coordinator}", f"its answer is not a status: {error}") from None
    if not signed.signed_by(args.coordinator, registry[args.coordinator].public_key):
        raise DaemonError(f"coordinator {args.coordinator}", "the answer is not signed by the coordinator")
    if isinstance(signed.msg, SettlementStatus):
        raise DaemonError(
            f"coordinator {args.coordinator}", f"refused the action: {signed.msg.reason_code}: {signed.msg.reason}"
        )
    status = signed.msg
    assert isinstance(status, CorporateActionStatus)  # what `allowed` let through, less the status above
    print(f"corporate action {status.action_id}: {status.state.upper()}")
    if status.reason_code:
        print(f"  reason: {status.reason_code}: {status.reason}")
    for due in status.entitlements:
        reason = f"  {due['reason_code']}: {due['reason']}" if due["reason"] else ""
        print(
            f"  {due['holder']:<16} {due['holder_account']:<16} {format_amount(due['isin'], due['units']):>30} "
            f"{format_amount(due['currency'], due['amount_minor']):>24} {due['state']}{reason}"
        )
    return 1 if status.state in ("rejected", "failed") else 0
