"""The path desk: multi-hop payments through intermediaries (protocols.paths).

A payer's signed `path_payment` comes in. The desk asks every intermediary of the
registry for its quotes, all at once, chooses the path that costs the payer least, asks
each intermediary on it to accept its hop, and settles the payer's order and the signed
hops as one `path` through the coordinator: a decision lock a hop, one secret for all,
each lock's backstop the one its intermediaries signed. An intermediary that refuses
its hop, or does not answer, is left out and the path chosen again. The answer, a
`path_status`, is the settlement's phase once final and the path it took.

Nothing is journaled before the settlement starts: until then nothing is locked, and the
order sent again is routed again. Its settlement id comes from the payer and the
order's id (protocols.paths.path_id), so the coordinator drives one path at most for it,
whatever the quotes are the second time."""

from __future__ import annotations

import logging

import trio

from protocols.authority import terms_of
from protocols.bus import BusTimeout, service_of_intermediary
from protocols.canonical import decode
from protocols.errors import Code, Rejected
from protocols.messages import (
    Hop,
    HopRefused,
    HopRequest,
    PathPayment,
    PathStatus,
    PaymentPath,
    Quote,
    QuoteRequest,
    Quotes,
    from_body,
    to_body,
)
from protocols.paths import Route, check_hop, choose, hops, path_id
from protocols.registry import Role
from protocols.signing import Signed, decode_signed

from ..coordinator.journal import Record
from .base import Desk

log = logging.getLogger("lockstep.paths")

ASK_S = 2.0  # an intermediary's time to answer a quote or hop request
ROUTES_MAX = 3  # paths tried for one payment, each without the intermediaries that would not carry the last


class PathDesk(Desk):
    messages = (PathPayment,)

    def __init__(self, coordinator) -> None:
        super().__init__(coordinator)
        # settlement id -> the order being routed, set once answered, and the answer
        self._routing: dict[str, tuple[Signed[PathPayment], trio.Event, list[bytes]]] = {}
        self._requests = 0

    async def _resume(self) -> None:
        """Nothing: a payment routed before a restart is a settlement the coordinator resumes."""

    async def _reply(self, signed: Signed) -> bytes:
        payment: PathPayment = signed.msg
        registry = self.coordinator.registry
        registry.verify_all(signed)
        registry.signed_by(signed, (payment.payer,))
        if payment.coordinator != self.coordinator.id:
            raise Rejected(Code.WRONG_LEDGER, "coordinator", f"this is coordinator {self.coordinator.id!r}")
        settlement_id = path_id(payment)
        known = self.coordinator.journal.get(settlement_id)
        if known is not None:
            if decode(known.instruction).get("payment") != signed.wire():
                raise Rejected(
                    Code.ID_REUSED, "id", f"{payment.payer}'s payment {payment.id} was sent with other content"
                )
            return self._status(payment, await self.coordinator.wait(settlement_id))
        _, done, answer = self._routing.setdefault(settlement_id, (signed, trio.Event(), []))
        self._serve(settlement_id)
        await done.wait()
        return answer[0]

    async def _carry_out(self, settlement_id: str) -> None:
        signed, done, answer = self._routing[settlement_id]
        payment = signed.msg
        try:
            auth = await self._route(signed)
            reply = self._status(payment, await self.coordinator.settle(auth))
        except Exception as error:  # one payment's failure, answered; the coordinator goes on
            if not isinstance(error, Rejected):
                log.exception("payment %s of %s", payment.id, payment.payer)
                error = Rejected(Code.INVALID_FIELD, "$", f"not routed: {type(error).__name__}")
            log.info("payment %s of %s not routed: %s", payment.id, payment.payer, error.reason)
            known = self.coordinator.journal.get(settlement_id)  # settled through, when it failed after
            reply = self._status(payment, known) if known is not None else self._refusal_of(payment, error)
        finally:
            self._serving.discard(settlement_id)
            del self._routing[settlement_id]
        answer.append(reply)
        done.set()

    def _refusal_of(self, payment: PathPayment, error: Rejected) -> bytes:
        status = PathStatus(
            self.coordinator.id,
            payment.id,
            path_id(payment),
            "rejected",
            self.coordinator.clock.now_ms(),
            error.code.value,
            f"{error.field}: {error.reason}",
        )
        return self.coordinator.sign(status)

    def _status(self, payment: PathPayment, record: Record) -> bytes:
        """The payment's settlement as it stands, with the path it took."""
        terms = terms_of(decode(record.instruction), None)
        status = PathStatus(
            self.coordinator.id,
            payment.id,
            record.settlement_id,
            record.phase.value,
            self.coordinator.clock.now_ms(),
            record.reason_code,
            record.reason,
            terms.legs[::-1],
            (*terms.payers[::-1], terms.payees[0]),
            tuple(list(step) for step in record.steps),
        )
        return self.coordinator.sign(status)

    # -- routing ----------------------------------------------------------------------------

    async def _route(self, signed: Signed[PathPayment]) -> dict:
        """The `path` auth of the cheapest path whose intermediaries all accept their hops.
        Its times are set once: every round proposes an intermediary asked again the
        same hop, if its place in the path is the same."""
        payment = signed.msg
        timing = self.coordinator.timing
        now_ms = self.coordinator.clock.now_ms()
        first_backstop_ms = now_ms + timing.backstop_ms
        # decided once routed (every round), and while a claim of leg 0 still lands before its backstop
        decide_by_ms = min(
            now_ms + ROUTES_MAX * round(ASK_S * 1000) + timing.decide_ms, first_backstop_ms - timing.margin_ms
        )
        if payment.deadline_ms < decide_by_ms:
            raise Rejected(
                Code.EXPIRY_OUT_OF_RANGE,
                "deadline_ms",
                f"leaves less than the {decide_by_ms - now_ms} ms a payment may take to be routed and decided",
            )
        offered = await self._quotes(signed)
        left_out: set[str] = set()
        for _ in range(ROUTES_MAX):
            usable = [quote for party, (_, quotes) in offered.items() if party not in left_out for quote in quotes]
            route = choose(payment, usable, self.coordinator.id, decide_by_ms)
            if route is None:
                break
            proposed = hops(payment, route, first_backstop_ms, timing.margin_ms, decide_by_ms)
            accepted = await self._accept(proposed, route, payment, offered)
            signed_hops = tuple(hop for hop in accepted if hop is not None)
            refused = [quote.intermediary for quote, hop in zip(route.quotes, accepted, strict=True) if hop is None]
            if not refused:
                return to_body(PaymentPath(self.coordinator.id, signed.wire(), signed_hops))
            log.info("payment %s: %s would not carry it; routing again", payment.id, ", ".join(refused))
            left_out.update(refused)
        asked = ", ".join(sorted(offered)) or "no intermediary"
        raise Rejected(
            Code.NO_PATH,
            "$",
            f"no path carries {payment.amount} {payment.asset} to {payment.to_ledger} from {payment.source_asset} on "
            f"{payment.from_ledger} within {payment.source_max}: quotes from {asked}"
            + (f", of which {', '.join(sorted(left_out))} would not carry it" if left_out else ""),
        )

    async def _quotes(self, signed: Signed[PathPayment]) -> dict[str, tuple[dict, list[Quote]]]:
        """Every intermediary's signed answer and its quotes, from those that answer in time."""
        request = QuoteRequest(self._next_id(), self.coordinator.id, signed.wire())
        offered: dict[str, tuple[dict, list[Quote]]] = {}

        async def ask(party: str) -> None:
            answer = await self._ask(party, request, (Quotes,))
            if answer is None or answer.msg.payment != path_id(signed.msg):
                return
            try:
                quotes = [from_body(body, allowed=(Quote,)) for body in answer.msg.quotes]
            except Rejected as error:
                log.info("intermediary %s: its quotes do not read: %s", party, error)
                return
            offered[party] = (answer.wire(), [q for q in quotes if q.intermediary == party])

        async with trio.open_nursery() as nursery:
            for party in self.coordinator.registry:
                if Role.INTERMEDIARY in party.roles:
                    nursery.start_soon(ask, party.id)
        return offered

    async def _accept(
        self,
        proposed: tuple[Hop, ...],
        route: Route,
        payment: PathPayment,
        offered: dict[str, tuple[dict, list[Quote]]],
    ) -> list[dict | None]:
        """Each intermediary's signed hop as proposed, or None where it would not accept
        it (or it is not what its quote allows: not asked)."""
        accepted: list[dict | None] = [None] * len(proposed)

        async def ask(index: int, hop: Hop) -> None:
            try:
                check_hop(route.quotes[index], hop, self.coordinator.clock.now_ms())
            except Rejected as error:
                log.info("%s's hop of %s is not what it quoted: %s", hop.intermediary, payment.id, error)
                return
            request = HopRequest(self._next_id(), self.coordinator.id, offered[hop.intermediary][0], to_body(hop))
            answer = await self._ask(hop.intermediary, request, (Hop, HopRefused))
            if answer is not None and answer.msg == hop:
                accepted[index] = answer.wire()
            elif answer is not None:
                log.info(
                    "%s refused its hop of %s: %s", hop.intermediary, payment.id, getattr(answer.msg, "reason", "")
                )

        async with trio.open_nursery() as nursery:
            for index, hop in enumerate(proposed):
                nursery.start_soon(ask, index, hop)
        return accepted

    async def _ask(self, party: str, request, answers: tuple) -> Signed | None:
        """A request to an intermediary, signed by the coordinator; its answer, signed by
        it, or None if none came in time or it does not verify."""
        try:
            raw = await self.coordinator.bus.request(
                service_of_intermediary(party), self.coordinator.sign(request), timeout_s=ASK_S
            )
            answer = decode_signed(raw, allowed=answers)
            self.coordinator.registry.verify_all(answer)
            self.coordinator.registry.signed_by(answer, (party,))
        except (BusTimeout, Rejected) as error:
            log.info("intermediary %s: no answer to %s (%s)", party, request.TYPE, error)
            return None
        return answer

    def _next_id(self) -> str:
        self._requests += 1
        return f"{self.coordinator.id}-{self._requests}"
