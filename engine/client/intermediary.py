"""An intermediary's service, `lockstep intermediary`: a market maker or correspondent
bank that carries hops of multi-hop payments between the ledgers it holds accounts on.

It answers a coordinator's `quote_request` with a quote for every offer in its book
that the payment could use, and a `hop_request` with its signed `hop`, only under a
quote of its own and within its rate, its limit and its margin (protocols.paths
.check_hop), for the coordinator that asks; the same signed hop however often it is
asked. (It may sign two paths' hops of one payment: the payer's ledger locks the
payer's order once, so one path at most can settle.) Nothing else
is asked of it: the coordinator claims every leg, and, should the coordinator fail for
longer than the margin, a watchtower of its own (`lockstep watchtower --party`) claims
its incoming leg with the claim secret that its outgoing leg's claim made public.

Its config (paths relative to the file):

    intermediary = "mm-1"
    key_file = "keys/mm-1.pem"
    registry = "registry.toml"
    broker = "mqtt://127.0.0.1:1883"
    margin_ms = 10000          # optional: its incoming lock outlives its outgoing one by this
    quote_valid_ms = 30000     # optional: how long a quote may be accepted

    [[offers]]
    takes = "cbdc-eur:EUR:m1-eur"   # ledger:currency:account it is paid into
    gives = "cbdc-usd:USD:m1-usd"   # ledger:currency:account it pays from
    rate = "1.0850"                 # what it gives for one unit taken
    gives_max = 100000000           # the most it gives on one hop, in minor units
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import attrs
import trio

from protocols.bus import Bus, service_of_intermediary
from protocols.bus.address import broker_setting
from protocols.bus.clock import ServiceClock
from protocols.errors import Code, Rejected
from protocols.failures import ExpectedFailure, read_toml
from protocols.messages import (
    SETTLEMENT_ID_PATTERN,
    Hop,
    HopRefused,
    HopRequest,
    PathPayment,
    Quote,
    QuoteRequest,
    Quotes,
    from_body,
    to_body,
)
from protocols.paths import check_hop, path_id
from protocols.registry import Registry, Role
from protocols.signing import PrivateKey, Signed, decode_signed, from_wire, sign

log = logging.getLogger("lockstep.intermediary")

MARGIN_MS = 10_000
QUOTE_VALID_MS = 30_000


@attrs.frozen
class Side:
    """Where an offer takes or gives: a ledger, a currency, an account of the intermediary's."""

    ledger: str
    asset: str
    account: str


@attrs.frozen
class Offer:
    takes: Side
    gives: Side
    rate: Fraction  # given for one unit taken
    gives_max: int


@attrs.frozen
class IntermediaryConfig:
    party: str
    key_file: Path
    registry: Path
    broker: str | None
    offers: tuple[Offer, ...]
    margin_ms: int = MARGIN_MS
    quote_valid_ms: int = QUOTE_VALID_MS

    @classmethod
    def load(cls, path: str | Path) -> IntermediaryConfig:
        path = Path(path)
        source = f"intermediary config {path}"
        data = read_toml("intermediary config", path)
        known = {"intermediary", "key_file", "registry", "broker", "broker_password_file", "broker_ca_file"}
        for key in data:
            if key not in known | {"margin_ms", "quote_valid_ms", "offers"}:
                raise ExpectedFailure(source, f"{key}: unknown setting")
        for key in ("intermediary", "key_file", "registry"):
            if not isinstance(data.get(key), str):
                raise ExpectedFailure(source, f"{key}: required, a string")
        times = {}
        for key, default in (("margin_ms", MARGIN_MS), ("quote_valid_ms", QUOTE_VALID_MS)):
            value = data.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 86_400_000:
                raise ExpectedFailure(source, f"{key}: a whole number of ms from 1 to 86400000")
            times[key] = value
        offers = data.get("offers", [])
        if not isinstance(offers, list) or not offers:
            raise ExpectedFailure(source, "offers: required, a list of [[offers]] tables")
        try:
            broker = broker_setting(data, path.parent)
        except ValueError as error:
            raise ExpectedFailure(source, str(error)) from None
        return cls(
            data["intermediary"],
            path.parent / data["key_file"],
            path.parent / data["registry"],
            broker,
            tuple(_offer(source, f"offers[{index}]", table) for index, table in enumerate(offers)),
            **times,
        )


def _offer(source: str, where: str, table: object) -> Offer:
    if not isinstance(table, dict) or set(table) != {"takes", "gives", "rate", "gives_max"}:
        raise ExpectedFailure(source, f"{where}: a table of takes, gives, rate and gives_max")
    sides = []
    for name in ("takes", "gives"):
        parts = table[name].split(":") if isinstance(table[name], str) else []
        if len(parts) != 3 or not all(parts):
            raise ExpectedFailure(source, f"{where}.{name}: LEDGER:CURRENCY:ACCOUNT")
        sides.append(Side(*parts))
    try:
        rate = Fraction(table["rate"]) if isinstance(table["rate"], str) else Fraction(-1)
    except ValueError:
        rate = Fraction(-1)
    if rate <= 0:
        raise ExpectedFailure(source, f'{where}.rate: a positive decimal in quotes, such as "1.0850"')
    gives_max = table["gives_max"]
    if not isinstance(gives_max, int) or isinstance(gives_max, bool) or gives_max <= 0:
        raise ExpectedFailure(source, f"{where}.gives_max: a positive whole number of minor units")
    if sides[0].ledger == sides[1].ledger:
        raise ExpectedFailure(source, f"{where}: takes and gives on two ledgers")
    return Offer(sides[0], sides[1], rate, gives_max)


class Intermediary:
    """Quotes and accepts hops on the bus as `party`, from its book of offers."""

    def __init__(
        self,
        party: str,
        key: PrivateKey,
        registry: Registry,
        bus: Bus,
        clock: ServiceClock,
        offers: tuple[Offer, ...],
        margin_ms: int = MARGIN_MS,
        quote_valid_ms: int = QUOTE_VALID_MS,
    ) -> None:
        self.party = party
        self._key = key
        self._registry = registry
        self._bus = bus
        self._clock = clock
        self._offers = offers
        self._margin_ms = margin_ms
        self._quote_valid_ms = quote_valid_ms
        self._signed: dict[Hop, bytes] = {}  # each hop signed, until its time to decide has passed

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with self._bus.serve(service_of_intermediary(self.party)) as requests:
            task_status.started()
            async for request in requests:
                await request.reply(self.answer(request.payload))

    def answer(self, payload: bytes) -> bytes:
        """Quotes for a `quote_request`; a signed hop, or why not, for a `hop_request`."""
        now_ms = self._clock.now_ms()
        payment = "unknown"  # until the request names one
        try:
            signed = decode_signed(payload, allowed=(QuoteRequest, HopRequest))
            self._from_coordinator(signed)
            msg = signed.msg
            if isinstance(msg, QuoteRequest):
                return self._quotes(msg, now_ms)
            assert isinstance(msg, HopRequest)
            named = msg.hop.get("payment")
            payment = named if isinstance(named, str) and SETTLEMENT_ID_PATTERN.fullmatch(named) else payment
            return self._hop(msg, now_ms)
        except Rejected as error:
            log.info("refused %s: %s", error.field, error.reason)
            refusal = HopRefused(self.party, payment, now_ms, error.code.value, error.field or "$", error.reason)
            return sign(refusal, (self.party, self._key)).encode()

    def _from_coordinator(self, signed: Signed) -> None:
        coordinator = signed.msg.coordinator
        if not self._registry.has_role(coordinator, Role.COORDINATOR):
            raise Rejected(Code.NOT_AUTHORISED, "coordinator", f"{coordinator!r} is not a coordinator")
        self._registry.verify_all(signed)
        self._registry.signed_by(signed, (coordinator,))

    def _quotes(self, request: QuoteRequest, now_ms: int) -> bytes:
        signed = from_wire(request.payment, allowed=(PathPayment,))
        self._registry.verify_all(signed)
        self._registry.signed_by(signed, (signed.msg.payer,))
        payment: PathPayment = signed.msg
        if payment.coordinator != request.coordinator:
            raise Rejected(Code.NOT_AUTHORISED, "payment.coordinator", f"names {payment.coordinator}")
        quotes = tuple(
            Quote(
                f"{path_id(payment)[2:14]}-{index}",
                request.coordinator,
                self.party,
                path_id(payment),
                offer.takes.ledger,
                offer.takes.account,
                offer.takes.asset,
                offer.gives.ledger,
                offer.gives.account,
                offer.gives.asset,
                offer.rate.numerator,
                offer.rate.denominator,
                offer.gives_max,
                self._margin_ms,
                now_ms + self._quote_valid_ms,
            )
            for index, offer in enumerate(self._offers)
        )
        answer = Quotes(self.party, path_id(payment), now_ms, tuple(to_body(quote) for quote in quotes))
        return sign(answer, (self.party, self._key)).encode()

    def _hop(self, request: HopRequest, now_ms: int) -> bytes:
        try:
            quotes = from_wire(request.quotes, allowed=(Quotes,))
            self._registry.verify_all(quotes)
            self._registry.signed_by(quotes, (self.party,))  # its own, as it answered
            given = [from_body(body, allowed=(Quote,)) for body in quotes.msg.quotes]
        except Rejected as error:
            raise Rejected(error.code, f"quotes.{error.field}", error.reason) from None
        try:
            hop = from_body(request.hop, allowed=(Hop,))
        except Rejected as error:
            raise Rejected(error.code, f"hop.{error.field}", error.reason) from None
        if hop.coordinator != request.coordinator:
            raise Rejected(Code.NOT_AUTHORISED, "hop.coordinator", f"names {hop.coordinator}, not who asks")
        quote = next((q for q in given if q.id == hop.quote), None)
        if quote is None:
            raise Rejected(Code.INVALID_FIELD, "hop.quote", f"{hop.quote} is not among the quotes given")
        try:
            check_hop(quote, hop, now_ms)
        except Rejected as error:
            raise Rejected(error.code, f"hop.{error.field}", error.reason) from None
        for signed_hop in [h for h in self._signed if h.decide_by_ms < now_ms]:  # no lock of it can be placed now
            del self._signed[signed_hop]
        if hop not in self._signed:
            self._signed[hop] = sign(hop, (self.party, self._key)).encode()
            log.info("accepted hop of %s: takes %s, gives %s", hop.payment, hop.legs[0], hop.legs[1])
        return self._signed[hop]
