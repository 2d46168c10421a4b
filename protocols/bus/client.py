"""Talking to a ledger over any bus: send a signed instruction until it is answered,
check the ledger's signature on every answer, read queries.

A lost request or reply costs a retry of the *same bytes*: the ledger answers a repeated
instruction id with its first receipt, so a retry never applies anything twice."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric import ec

from ..canonical import decode
from ..errors import Code, Rejected
from ..messages import Instruction, Query, Receipt, Result
from ..signing import Signed, from_wire, unsigned
from . import Bus, BusTimeout, service_of_ledger

REPLY_BYTES_MAX = 4 * 1024 * 1024


class BadReply(Exception):
    """A reply that does not decode or whose ledger signature does not verify."""


class LedgerClient:
    def __init__(
        self,
        bus: Bus,
        ledger_id: str,
        ledger_key: ec.EllipticCurvePublicKey,
        *,
        timeout_s: float = 2.0,
        attempts: int = 5,
    ) -> None:
        self.bus = bus
        self.ledger_id = ledger_id
        self.ledger_key = ledger_key
        self._service = service_of_ledger(ledger_id)
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._query_ids = (f"q{secrets.token_hex(4)}-{n}" for n in itertools.count())
        # each attempt's (seconds from request to reply or timeout, answered): for metrics
        self.on_round_trip: Callable[[float, bool], None] = lambda seconds, answered: None

    async def submit(self, signed: Signed[Instruction]) -> Receipt:
        """The ledger's receipt for an instruction: applied or rejected with a code."""
        receipt = self._verified(await self.request(signed.encode()))
        if not isinstance(receipt, Receipt) or receipt.instruction_id != signed.msg.id:
            raise BadReply(f"{self.ledger_id} answered {signed.msg.id} with {receipt!r}")
        return receipt

    async def submit_raw(self, payload: bytes) -> Receipt | Result:
        """Send bytes as they are (for conformance and hostile-input tests)."""
        return self._verified(await self.request(payload))

    async def query(self, msg: Query) -> Any:
        """A query's value, or Rejected with the ledger's code."""
        reply = self._verified(await self.request(unsigned(msg).encode()))
        if isinstance(reply, Receipt):
            if reply.instruction_id == msg.id and not reply.applied:
                raise reply.error()  # the query itself was refused
            return reply  # query_receipt answers with the instruction's own receipt
        return reply.value

    def next_query_id(self) -> str:
        return next(self._query_ids)

    async def request(self, payload: bytes) -> bytes:
        """The reply's bytes, unchecked, retried on silence up to `attempts` times."""
        for attempt in range(self.attempts):
            started = time.perf_counter()
            try:
                reply = await self.bus.request(self._service, payload, timeout_s=self.timeout_s)
            except BusTimeout:
                self.on_round_trip(time.perf_counter() - started, False)
                await trio.sleep(min(0.05 * 2**attempt, 1.0))
            else:
                self.on_round_trip(time.perf_counter() - started, True)
                return reply
        raise BusTimeout(f"{self.ledger_id} did not answer after {self.attempts} attempts")

    def _verified(self, raw: bytes) -> Receipt | Result:
        try:
            signed = from_wire(decode(raw, bytes_max=REPLY_BYTES_MAX), allowed=(Receipt, Result))
        except Rejected as error:
            raise BadReply(f"{self.ledger_id} sent an undecodable reply: {error}") from None
        if not signed.signed_by(self.ledger_id, self.ledger_key):
            raise BadReply(f"reply not signed by {self.ledger_id}")
        assert isinstance(signed.msg, (Receipt, Result))  # what `allowed` let through
        return signed.msg


def raise_for(receipt: Receipt) -> Receipt:
    """The receipt if applied; its error otherwise."""
    if not receipt.applied:
        raise receipt.error()
    return receipt


__all__ = ["BadReply", "Code", "LedgerClient", "raise_for"]
