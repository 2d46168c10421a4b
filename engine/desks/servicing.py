"""The asset-servicing desk: the coordinator as an issuer's paying agent.

It answers an issuer's signed `corporate_action` (a coupon or a redemption of one
instrument on a date) after checking it against the securities ledger, journals it at
once, and on the payment date reads the holders of record, journals every holder's due
(protocols.servicing) before paying anyone, then pays each through the coordinator's
settlement driver, at most PAYMENTS_IN_FLIGHT_MAX at a time. Each due ends paid or
unpaid with its reason; none is skipped silently.

Its tables live in the coordinator's database and are written before acting on them: a
restart finds each action in its state and pays the dues still `due` again through
`Coordinator.settle`, which runs an entitlement once whatever it is asked (its id hashes
every term), so nobody is paid twice."""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from protocols.authority import entitlement_id
from protocols.bus import BusTimeout
from protocols.bus.client import BadReply
from protocols.canonical import encode
from protocols.errors import Code, Rejected
from protocols.matching import day_window
from protocols.messages import (
    QUERY_LIMIT_MAX,
    CorporateAction,
    CorporateActionStatus,
    Entitlement,
    QueryAccounts,
    QueryBalances,
    QueryCorporateAction,
    QueryHolders,
    QueryInfo,
    readable_id,
    to_body,
)
from protocols.servicing import ActionState, Due, DueState, cash_account, check_action, check_due, coupon_period, dues
from protocols.settlement import Phase
from protocols.signing import Signed, from_wire

from .base import Desk, Units

log = logging.getLogger("lockstep.servicing")

PAYMENTS_IN_FLIGHT_MAX = 8  # entitlements settling at once, per action
HOLDERS_MAX = 2_000  # holders of record one action pays: its status stays well under a bus message
QUERY_TIMEOUT_S = 5.0  # a ledger's answer at intake, retries included
RETRY_S = 0.05


async def ask(client, make_query, deadline: float) -> Any:
    """A query's value, asked again on silence until the trio deadline (BusTimeout then);
    a ledger's refusal is raised as it came."""
    with trio.move_on_at(deadline):
        while True:
            try:
                return await client.query(make_query(client.next_query_id()))
            except (BusTimeout, BadReply) as error:
                log.debug("%s: %s; asking again", client.ledger_id, error)
                await trio.sleep(RETRY_S)
    raise BusTimeout(f"{client.ledger_id} did not answer in time")


class ServicingDesk(Desk):
    messages = (CorporateAction, QueryCorporateAction)

    def __init__(self, coordinator) -> None:
        super().__init__(coordinator)
        self._actions = Units(self._db, "corporate_actions", "action", ActionState, check_action, "corporate action")

    async def _resume(self) -> None:
        for action_id in self._actions.unfinished((ActionState.DONE, ActionState.FAILED)):
            log.info("resuming corporate action %s", action_id)
            self._serve(action_id)

    # -- intake ---------------------------------------------------------------------------

    async def _reply(self, signed: Signed) -> bytes:
        if isinstance(signed.msg, QueryCorporateAction):
            if self._actions.get(signed.msg.action_id) is None:
                raise Rejected(Code.INVALID_FIELD, "action_id", f"no corporate action {signed.msg.action_id!r}")
            return self.status(signed.msg.action_id)
        return await self.accept(signed)

    def _refusal(self, payload: bytes, error: Rejected) -> CorporateActionStatus:
        return CorporateActionStatus(
            self.coordinator.id,
            readable_id(payload, ("action_id", "id")),
            "rejected",
            self.coordinator.clock.now_ms(),
            error.code.value,
            f"{error.field}: {error.reason}",
        )

    async def accept(self, signed: Signed) -> bytes:
        """Check an issuer's action, journal it and schedule it; its status at once."""
        action: CorporateAction = signed.msg
        wire = encode(signed.wire()).decode()
        known = self._actions.get(action.id)
        if known is not None:
            if known[0] != wire:
                raise Rejected(Code.ID_REUSED, "id", f"corporate action {action.id} was sent with other content")
            return self.status(action.id)
        await self._check(signed)
        now_ms = self.coordinator.clock.now_ms()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._once(action)
            self._actions.add(action.id, wire, ActionState.ACCEPTED, now_ms)
        if self._actions.known(action.id)[0] != wire:  # another copy, other content, was journaled while we checked
            raise Rejected(Code.ID_REUSED, "id", f"corporate action {action.id} was sent with other content")
        self._serve(action.id)
        return self.status(action.id)

    def _once(self, action: CorporateAction) -> None:
        """One coupon per instrument and date: the same coupon sent again under another id
        would pay every holder again (entitlement ids hash the action). One that failed
        (holders unreadable) may be sent again. A redemption may: redeemed units are gone,
        so a second one pays only the holdings the first could not move."""
        if action.kind != "coupon":
            return
        mandated = (action.isin, action.kind, action.payment_date)
        others = self._db.execute(
            "SELECT id, action FROM corporate_actions WHERE id != ? AND state != ?",
            (action.id, ActionState.FAILED.value),
        )
        for other_id, raw in others:
            other = json.loads(raw)
            if (other.get("isin"), other.get("kind"), other.get("payment_date")) == mandated:
                raise Rejected(
                    Code.INVALID_FIELD,
                    "payment_date",
                    f"corporate action {other_id} already mandates the {action.payment_date} coupon of {action.isin}",
                )

    async def _check(self, signed: Signed) -> None:
        action: CorporateAction = signed.msg
        coordinator = self.coordinator
        coordinator.registry.verify_all(signed)
        coordinator.registry.signed_by(signed, (action.issuer,))
        if action.coordinator != coordinator.id:
            raise Rejected(Code.WRONG_LEDGER, "coordinator", f"this is coordinator {coordinator.id!r}")
        start_ms, _ = day_window(action.payment_date)
        if action.deadline_ms < max(start_ms, coordinator.clock.now_ms()) + coordinator.timing.total_ms():
            raise Rejected(
                Code.EXPIRY_OUT_OF_RANGE, "deadline_ms", "the deadline leaves no time to pay on the payment date"
            )
        deadline = trio.current_time() + QUERY_TIMEOUT_S
        try:
            reference = await self._instrument(action, deadline)
            for ledger, account, field in (
                (action.securities_ledger, action.issuer_securities_account, "issuer_securities_account"),
                (action.cash_ledger, action.issuer_cash_account, "issuer_cash_account"),
            ):
                client = coordinator.client(ledger)
                try:
                    owner = (
                        await ask(
                            client,
                            lambda q, ledger=ledger, account=account: QueryBalances(q, ledger, account),
                            deadline,
                        )
                    )["owner"]
                except Rejected as error:
                    raise Rejected(error.code, field, f"{ledger}: {error.reason}") from None
                if owner != action.issuer:
                    raise Rejected(
                        Code.NOT_AUTHORISED, field, f"{account} on {ledger} is not an account of {action.issuer}"
                    )
        except BusTimeout as error:
            raise Rejected(Code.TIMEOUT, "securities_ledger", str(error)) from None
        if reference["currency"] != action.currency:
            raise Rejected(Code.INVALID_FIELD, "currency", f"{action.isin} pays in {reference['currency']}")
        if action.kind == "coupon":
            if reference["coupon_rate_bp"] == 0:
                raise Rejected(Code.INVALID_FIELD, "kind", f"{action.isin} pays no coupon")
            coupon_period(reference, action.payment_date)
        elif action.payment_date < reference["maturity_date"]:
            raise Rejected(Code.NOT_YET, "payment_date", f"{action.isin} matures on {reference['maturity_date']}")

    async def _instrument(self, action: CorporateAction, deadline: float) -> dict:
        """The instrument's reference data, if the securities ledger has it under this issuer."""
        client = self.coordinator.client(action.securities_ledger)
        info = await ask(client, lambda q: QueryInfo(q, action.securities_ledger), deadline)
        asset = next((a for a in info["assets"] if a["code"] == action.isin and a["kind"] == "security"), None)
        if asset is None:
            raise Rejected(Code.UNKNOWN_ASSET, "isin", f"{action.securities_ledger} has no instrument {action.isin}")
        if asset["issuer"] != action.issuer:
            raise Rejected(
                Code.NOT_AUTHORISED, "issuer", f"{action.isin} is issued by {asset['issuer']}, not {action.issuer}"
            )
        return asset["reference"]

    # -- the payment date ---------------------------------------------------------------------

    async def _carry_out(self, action_id: str) -> None:
        """Take the action from its journaled state to DONE or FAILED."""
        wire, state = self._actions.known(action_id)[:2]
        signed_wire = json.loads(wire)
        action: CorporateAction = from_wire(signed_wire, allowed=(CorporateAction,)).msg
        if state is ActionState.ACCEPTED:
            start_ms, _ = day_window(action.payment_date)
            await trio.sleep_until(self.coordinator.clock.trio_time_at(start_ms))
            try:
                found = await self._dues(action)
            except (Rejected, BusTimeout) as error:
                code = error.code.value if isinstance(error, Rejected) else Code.TIMEOUT.value
                self._to(action_id, ActionState.ACCEPTED, ActionState.FAILED, code, str(error))
                return
            self._entitle(action, found)
            state = ActionState.ENTITLED
        if state is ActionState.ENTITLED:
            limiter = trio.CapacityLimiter(PAYMENTS_IN_FLIGHT_MAX)
            async with trio.open_nursery() as nursery:
                for due in self._dues_in(action_id, DueState.DUE):
                    nursery.start_soon(self._pay, signed_wire, action, due, limiter)
            self._to(action_id, ActionState.ENTITLED, ActionState.DONE)
        log.info("corporate action %s %s", action_id, self._actions.known(action_id)[1].value)

    async def _dues(self, action: CorporateAction) -> list[Due]:
        """Every holding of record as the securities ledger shows it now (available plus
        locked: a lock is not yet a sale), each holder's cash account, each due."""
        coordinator = self.coordinator
        deadline = coordinator.clock.trio_time_at(action.deadline_ms - coordinator.timing.total_ms())
        reference = await self._instrument(action, deadline)
        securities = coordinator.client(action.securities_ledger)
        holders: list[tuple[str, str, int]] = []
        after = ""
        while after is not None:
            page = await ask(
                securities,
                lambda q, after=after: QueryHolders(q, action.securities_ledger, action.isin, QUERY_LIMIT_MAX, after),
                deadline,
            )
            holders += [(h["account"], h["owner"], h["available"] + h["locked"]) for h in page["holders"]]
            if len(holders) > HOLDERS_MAX:
                raise Rejected(Code.TOO_LARGE, "isin", f"{action.isin} has more than {HOLDERS_MAX} holders")
            after = page["next_after"]
        cash = coordinator.client(action.cash_ledger)
        cash_accounts = {}
        for owner in sorted({owner for _, owner, _ in holders} - {action.issuer}):
            accounts = await ask(cash, lambda q, owner=owner: QueryAccounts(q, action.cash_ledger, owner), deadline)
            cash_accounts[owner] = cash_account(accounts["accounts"], action.currency)
        return dues(action.kind, reference, action.payment_date, action.issuer, holders, cash_accounts)

    def _entitle(self, action: CorporateAction, found: list[Due]) -> None:
        """Journal every due and the action's new state in one transaction, before paying."""
        rows = [
            (
                action.id,
                d.holder_account,
                d.holder,
                d.cash_account,
                d.units,
                d.amount_minor,
                d.state.value,
                d.reason_code,
                d.reason,
            )
            for d in found
        ]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO entitlements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._transition(action.id, ActionState.ACCEPTED, ActionState.ENTITLED)

    @staticmethod
    def _entitlement(wire: dict, due: Due) -> Entitlement:
        return Entitlement(wire, due.holder, due.holder_account, due.cash_account, due.units, due.amount_minor)

    async def _pay(self, wire: dict, action: CorporateAction, due: Due, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                record = await self.coordinator.settle(to_body(self._entitlement(wire, due)))
            except Rejected as error:
                outcome = (DueState.UNPAID, error.code.value, f"{error.field}: {error.reason}")
            else:
                outcome = (
                    (DueState.PAID, "", "")
                    if record.phase is Phase.SETTLED
                    else (
                        DueState.UNPAID,
                        record.reason_code or record.phase.value,
                        f"{record.phase.value}: {record.reason}",
                    )
                )
        check_due(due.state, outcome[0])
        self._db.execute(
            "UPDATE entitlements SET state = ?, reason_code = ?, reason = ? "
            "WHERE action_id = ? AND holder_account = ? AND state = ?",
            (outcome[0].value, outcome[1], outcome[2], action.id, due.holder_account, DueState.DUE.value),
        )
        log.info("%s %s to %s: %s %s", action.kind, action.id, due.holder, outcome[0].value, outcome[2])

    # -- the tables -----------------------------------------------------------------------------

    def _dues_in(self, action_id: str, state: DueState | None = None) -> list[Due]:
        rows = self._db.execute(
            "SELECT holder_account, holder, cash_account, units, amount_minor, state, reason_code, "
            "reason FROM entitlements WHERE action_id = ? ORDER BY holder_account",
            (action_id,),
        )
        found = [
            Due(holder_account, holder, cash, units, amount, DueState(state), reason_code, reason)
            for holder_account, holder, cash, units, amount, state, reason_code, reason in rows
        ]
        return [due for due in found if state is None or due.state is state]

    def _transition(
        self, action_id: str, current: ActionState, following: ActionState, reason_code: str = "", reason: str = ""
    ) -> None:
        """Inside a transaction: the action's state, as the table of transitions allows."""
        self._actions.to(action_id, current, following, self.coordinator.clock.now_ms(), reason_code, reason)

    def _to(
        self, action_id: str, current: ActionState, following: ActionState, reason_code: str = "", reason: str = ""
    ) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._transition(action_id, current, following, reason_code, reason)

    def status(self, action_id: str) -> bytes:
        wire, state, reason_code, reason, _ = self._actions.known(action_id)
        signed_wire = json.loads(wire)
        entitlements = tuple(
            {
                "holder": d.holder,
                "holder_account": d.holder_account,
                "holder_cash_account": d.cash_account,
                "isin": signed_wire["isin"],
                "units": d.units,
                "currency": signed_wire["currency"],
                "amount_minor": d.amount_minor,
                "state": d.state.value,
                "reason_code": d.reason_code,
                "reason": d.reason,  # the coordinator's settlement of a due that was sent to be paid:
                "settlement_id": entitlement_id(self._entitlement(signed_wire, d))
                if d.amount_minor and d.cash_account
                else "",
            }
            for d in self._dues_in(action_id)
        )
        return self.coordinator.sign(
            CorporateActionStatus(
                self.coordinator.id,
                action_id,
                state.value,
                self.coordinator.clock.now_ms(),
                reason_code,
                reason,
                entitlements,
            )
        )
