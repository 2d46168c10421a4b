"""`lockstep corporate-action`: an issuer signs a coupon or redemption mandate and sends
it to its paying agent (the coordinator) over the bus, or asks how one stands; prints
the coordinator's signed status, holder by holder."""

from __future__ import annotations

from protocols import canonical
from protocols.bus import BusTimeout, service_of_coordinator
from protocols.errors import Rejected
from protocols.matching import day_window
from protocols.messages import CorporateAction, CorporateActionStatus, QueryCorporateAction, SettlementStatus
from protocols.registry import Registry
from protocols.signing import PrivateKey, from_wire, sign, unsigned

from .daemon import DaemonError, on_bus

ANSWER_TIMEOUT_S = 10
DEADLINE_MS_DEFAULT = 12 * 3_600_000   # pay within the first 12 hours of the payment date


async def main(args) -> int:
    """Send the action (or with `--query`, ask for its status) and print the answer."""
    try:
        registry = Registry.load(args.registry)
    except (OSError, ValueError) as error:
        raise DaemonError(str(error)) from None
    if args.query:
        message = unsigned(QueryCorporateAction(f"q-{args.id}", args.coordinator, args.id))
    else:
        try:
            key = PrivateKey.load(args.issuer_key)
            start_ms, _ = day_window(args.date)
            action = CorporateAction(args.id, args.coordinator, args.issuer, args.kind, args.isin,
                                     args.securities_ledger, args.cash_ledger, args.securities_account,
                                     args.cash_account, args.currency, args.date,
                                     start_ms + args.deadline_ms)
        except (OSError, TypeError, ValueError, Rejected) as error:   # TypeError: a field not given
            raise DaemonError(f"corporate action: {error}") from None
        message = sign(action, (args.issuer, key))

    async def ask(bus) -> bytes:
        try:
            return await bus.request(service_of_coordinator(args.coordinator), message.encode(), timeout_s=ANSWER_TIMEOUT_S)
        except BusTimeout:
            raise DaemonError(f"coordinator {args.coordinator} did not answer within {ANSWER_TIMEOUT_S} s") from None

    signed = from_wire(canonical.decode(await on_bus(args.broker, ask)), allowed=(CorporateActionStatus, SettlementStatus))
    if not signed.signed_by(args.coordinator, registry.get(args.coordinator).public_key):
        raise DaemonError("the answer is not signed by the coordinator")
    if isinstance(signed.msg, SettlementStatus):
        raise DaemonError(f"refused: {signed.msg.reason_code}: {signed.msg.reason}")
    status: CorporateActionStatus = signed.msg
    print(f"corporate action {status.action_id}: {status.state.upper()}")
    if status.reason_code:
        print(f"  reason: {status.reason_code}: {status.reason}")
    for due in status.entitlements:
        reason = f"  {due['reason_code']}: {due['reason']}" if due["reason"] else ""
        print(f"  {due['holder']:<16} {due['holder_account']:<16} {due['units']:>12} units "
              f"{due['amount_minor']:>16} {due['state']}{reason}")
    return 1 if status.state in ("rejected", "failed") else 0
