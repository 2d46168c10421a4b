"""Instructions to one ledger from many tasks, sent as batches: one message signed once
(protocols/envelope.py), one reply of receipts signed once.

A task hands in its instruction and waits for its own receipt (`submit`), or a caller
that runs no task per instruction hands it in with a function to call with the outcome
(`post`: the coordinator's shell). Whatever is waiting when
a batch can leave goes in it, so batches grow with load and a lone instruction leaves at
once, as a message of its own: at most `in_flight_max` batches are on their way to the ledger, and instructions
that arrive meanwhile form the next. A lost batch or reply fails every instruction in it
with BusTimeout, and each task retries as it would a message of its own: the ledger
answers an instruction id it has seen with its first receipt."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs
import trio

from ..batch import BATCH_SIZE_MAX
from ..canonical import decode
from ..envelope import BATCH_BYTES_MAX, is_batch, open_batch, seal
from ..errors import Rejected
from ..messages import Instruction, Receipt
from ..signing import PrivateKey, Signed, from_wire
from . import BusTimeout
from .client import REPLY_BYTES_MAX, BadReply, LedgerClient

BATCH_BYTES_SENT_MAX = BATCH_BYTES_MAX // 2  # with room for the envelope and every item's signatures


Outcome = Receipt | BusTimeout | BadReply


@attrs.define(eq=False)
class _Waiting:
    instruction: Signed[Instruction]
    size: int
    deliver: Callable[[Outcome], None]
    abandoned: bool = False  # its task stopped waiting before it was sent


class Batcher:
    def __init__(
        self,
        client: LedgerClient,
        party: str,
        key: PrivateKey,
        *,
        batch_size_max: int = 256,
        in_flight_max: int = 2,
    ) -> None:
        assert 0 < batch_size_max <= BATCH_SIZE_MAX
        self.client = client
        self.party = party
        self._key = key
        self.batch_size_max = batch_size_max
        self.in_flight_max = in_flight_max
        self._waiting: deque[_Waiting] = deque()
        self._arrived = trio.lowlevel.ParkingLot()
        self.batches_sent = 0

    async def submit(self, instruction: Signed[Instruction]) -> Receipt:
        """The ledger's receipt for an instruction (its other signatures kept, `party`'s
        given by the batch), or BusTimeout / BadReply as for a message sent alone."""
        done = trio.Event()
        outcomes: list[Outcome] = []

        def deliver(outcome: Outcome) -> None:
            outcomes.append(outcome)
            done.set()

        waiting = self.post(instruction, deliver)
        try:
            await done.wait()
        finally:
            waiting.abandoned = not done.is_set()
        if isinstance(outcomes[0], Exception):
            raise outcomes[0]
        return outcomes[0]

    def post(self, instruction: Signed[Instruction], deliver: Callable[[Outcome], None]) -> _Waiting:
        """Send an instruction in the next batch; `deliver` is called with its outcome,
        once, from the task that sent the batch."""
        if self.party in instruction.sigs:  # a journal older than batches kept it signed alone
            instruction = Signed(
                instruction.msg, {p: s for p, s in instruction.sigs.items() if p != self.party}, instruction.body
            )
        waiting = _Waiting(instruction, len(instruction.data), deliver)
        self._waiting.append(waiting)
        self._arrived.unpark()
        return waiting

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        in_flight = trio.Semaphore(self.in_flight_max)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                while not self._waiting:
                    await self._arrived.park()
                await in_flight.acquire()
                batch = self._take()
                if batch:
                    nursery.start_soon(self._send, batch, in_flight)
                else:
                    in_flight.release()

    def _take(self) -> list[_Waiting]:
        """The next batch: what is waiting, oldest first, up to the limits."""
        batch: list[_Waiting] = []
        size = 0
        while self._waiting and len(batch) < self.batch_size_max:
            waiting = self._waiting[0]
            if batch and size + waiting.size > BATCH_BYTES_SENT_MAX:
                break
            self._waiting.popleft()
            if not waiting.abandoned:
                batch.append(waiting)
                size += waiting.size
        return batch

    async def _send(self, batch: list[_Waiting], in_flight: trio.Semaphore) -> None:
        """A batch of one leaves as a message alone (version 1), which costs the ledger
        and us less than an envelope around it."""
        try:
            self.batches_sent += 1
            try:
                receipts: list[Outcome]
                if len(batch) == 1:
                    instruction = batch[0].instruction
                    receipts = [
                        await self.client.submit(instruction.with_sig(self.party, self._key.sign(instruction.data)))
                    ]
                else:
                    raw = seal([w.instruction for w in batch], self.party, self._key)
                    receipts = list(self._receipts(await self.client.request(raw), batch))
            except (BusTimeout, BadReply) as error:
                receipts = [error] * len(batch)
        finally:
            in_flight.release()
        for waiting, outcome in zip(batch, receipts, strict=True):
            waiting.deliver(outcome)

    def _receipts(self, raw: bytes, batch: list[_Waiting]) -> list[Receipt]:
        """The reply's receipts, one per instruction in order, each signed by the ledger."""
        ledger = self.client.ledger_id
        try:
            value = decode(raw, bytes_max=REPLY_BYTES_MAX)
            if not is_batch(value):  # the batch as a whole was refused
                refusal = from_wire(value, allowed=(Receipt,))
                raise BadReply(f"{ledger} refused a batch: {refusal.msg.field}: {refusal.msg.reason}")
            _signer, replies = open_batch(value, allowed=(Receipt,))
        except Rejected as error:
            raise BadReply(f"{ledger} sent an undecodable reply: {error}") from None
        if len(replies) != len(batch):
            raise BadReply(f"{ledger} answered {len(batch)} instructions with {len(replies)} replies")
        receipts = []
        for reply, waiting in zip(replies, batch, strict=True):
            if not isinstance(reply, Signed) or not reply.signed_by(ledger, self.client.ledger_key):
                raise BadReply(f"a reply not signed by {ledger}")
            receipt = reply.msg
            assert isinstance(receipt, Receipt)
            if receipt.instruction_id != waiting.instruction.msg.id:
                raise BadReply(f"{ledger} answered {waiting.instruction.msg.id} with {receipt!r}")
            receipts.append(receipt)
        return receipts
