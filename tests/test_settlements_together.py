"""Settlements a back office sends its coordinator together, in one request (protocol
section 17, *Settlements sent together*): each judged exactly as if it came alone, their
statuses back in one envelope signed once, each status checkable on its own. On the
in-memory bus with a mock clock; outcomes checked against the ledgers' balances."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from engine.world.local import COORDINATOR
from protocols import canonical
from protocols.bus import service_of_coordinator
from protocols.envelope import SETTLEMENTS_MAX, is_batch, open_batch, open_settlements, settlements
from protocols.errors import Code, Rejected
from protocols.messages import Settlement, SettlementStatus
from protocols.settlement import Phase
from protocols.signing import Signed, decode_signed

from .test_coordinator import CROSS_DVP, PARTIES, SAME_DVP, TIMING, moved, start, unchanged
from .test_verify_without_python import node_verifies


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def send(w, payload: bytes) -> bytes:
    return await w.local.bus.request(service_of_coordinator(COORDINATOR), payload, timeout_s=60)


def statuses(w, reply: bytes) -> list[SettlementStatus]:
    """The statuses of a reply to settlements sent together, each one's share of the
    coordinator's signature checked on its own."""
    value = canonical.decode(reply, bytes_max=len(reply))
    assert is_batch(value)
    signer, items = open_batch(value, allowed=(SettlementStatus,))
    assert signer == COORDINATOR
    key = w.local.world.registry[COORDINATOR].public_key
    assert all(isinstance(item, Signed) and item.signed_by(COORDINATOR, key) for item in items)
    return [item.msg for item in items if isinstance(item, Signed)]


def tampered(raw: bytes) -> bytes:
    """The settlement with one byte of bank-a's signature changed."""
    value = canonical.decode(raw)
    sig = value["sigs"]["bank-a"]
    value["sigs"]["bank-a"] = sig[:-2] + ("00" if sig[-2:] != "00" else "01")
    return canonical.encode(value)


async def test_each_settlement_sent_together_is_judged_alone_and_the_statuses_come_back_signed_once(
    tmp_path, autojump_clock
):
    """A cross-ledger DvP already settled alone, a new same-ledger one, one whose
    signature is broken and the first again: one reply, their four statuses in order,
    each verifiable on its own; the first is not run again and the broken one changes
    nothing."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING)
        cross, same = w.local.settlement("dvp", CROSS_DVP, PARTIES), w.local.settlement("dvp", SAME_DVP, PARTIES)
        alone = await coordinator.submit(cross)
        assert alone.phase is Phase.SETTLED
        before = {**await w.balances(CROSS_DVP), **await w.balances(SAME_DVP)}
        broken = tampered(w.local.settlement("dvp", SAME_DVP, PARTIES))
        reply = await send(w, settlements([cross, same, broken, cross]))
        first, second, third, fourth = statuses(w, reply)
        assert [s.settlement_id for s in (first, second, fourth)] == [
            decode_signed(raw).msg.id for raw in (cross, same, cross)
        ]
        assert (first.phase, first.steps) == ("settled", tuple(list(step) for step in alone.steps))
        assert second.phase == "settled" and fourth == first
        assert (third.settlement_id, third.phase, third.reason_code) == (
            decode_signed(broken).msg.id,
            "rejected",
            Code.BAD_SIGNATURE.value,
        )
        assert third.reason is not None and third.reason.startswith("sigs:")
        assert coordinator.journal.get(third.settlement_id) is None
        after = {**await w.balances(CROSS_DVP), **await w.balances(SAME_DVP)}
        assert moved(
            {k: v for k, v in before.items() if k[0] == "unified"},
            {k: v for k, v in after.items() if k[0] == "unified"},
            SAME_DVP,
        )
        assert unchanged(
            {k: v for k, v in before.items() if k[0] != "unified"},
            {k: v for k, v in after.items() if k[0] != "unified"},
        )
        nursery.cancel_scope.cancel()


async def test_a_coordinator_killed_with_settlements_sent_together_in_flight_settles_each_once_when_sent_again(
    tmp_path, autojump_clock
):
    """Killed as the first of four cross-ledger DvPs sent together is being claimed: no
    reply comes; the same request sent to the restarted coordinator is answered with all
    four settled, and each moved its legs once."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, scope = await w.local.start_coordinator(TIMING, watchtower=False)

        def crash(record):
            if record.phase is Phase.CLAIMING:
                scope.cancel()

        coordinator.on_phase = crash
        raws = [w.local.settlement("dvp", CROSS_DVP, PARTIES) for _ in range(4)]
        before = await w.balances(CROSS_DVP)
        replies: list[bytes] = []

        async def first_try() -> None:
            with trio.move_on_after(30):
                replies.append(await send(w, settlements(raws)))

        nursery.start_soon(first_try)
        while not scope.cancel_called:
            await trio.sleep(0.01)
        await w.local.start_coordinator(TIMING, watchtower=False)
        again = statuses(w, await send(w, settlements(raws)))
        assert replies == []
        assert [s.phase for s in again] == ["settled"] * 4
        assert moved(before, await w.balances(CROSS_DVP), CROSS_DVP, times=4)
        assert await w.held_locks() == []
        nursery.cancel_scope.cancel()


async def test_settlements_together_past_the_intake_bound_are_refused_busy_one_by_one(tmp_path, autojump_clock):
    """An intake of two and three new settlements in one request: the first two are
    taken and settle, the third is refused `busy` and recorded nowhere."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING, watchtower=False, intake_max=2)
        raws = [w.local.settlement("dvp", SAME_DVP, PARTIES) for _ in range(3)]
        reply = statuses(w, await send(w, settlements(raws)))
        assert [(s.phase, s.reason_code) for s in reply] == [
            ("settled", ""),
            ("settled", ""),
            ("rejected", Code.BUSY.value),
        ]
        assert coordinator.journal.get(reply[2].settlement_id) is None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "payload, code, field",
    [
        (b'{"items":[],"type":"settlements","v":2}', Code.MALFORMED, "items"),
        (b'{"items":{},"type":"settlements","v":2}', Code.MALFORMED, "items"),
        (b'{"items":[{}],"type":"settlements","v":3}', Code.UNSUPPORTED_VERSION, "v"),
        (b'{"items":[{}],"sigs":{},"type":"settlements","v":2}', Code.MALFORMED, "$"),
        (
            b'{"items":[' + b",".join([b"{}"] * (SETTLEMENTS_MAX + 1)) + b'],"type":"settlements","v":2}',
            Code.MALFORMED,
            "items",
        ),
    ],
    ids=["no-items", "items-not-a-list", "version", "signed", "too-many"],
)
async def test_a_container_that_is_itself_wrong_is_refused_alone_and_changes_nothing(
    tmp_path, autojump_clock, payload, code, field
):
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        coordinator, _ = await w.local.start_coordinator(TIMING, watchtower=False)
        status = decode_signed(await send(w, payload), allowed=(SettlementStatus,))
        assert status.signed_by(COORDINATOR, w.local.world.registry[COORDINATOR].public_key)
        assert (status.msg.settlement_id, status.msg.phase, status.msg.reason_code) == (
            "unknown",
            "rejected",
            code.value,
        )
        assert status.msg.reason is not None and status.msg.reason.startswith(f"{field}:")
        assert coordinator.in_flight == 0 and coordinator.steps == 0
        nursery.cancel_scope.cancel()


async def test_a_message_alone_past_64_kib_is_too_large_though_settlements_together_may_be_longer(
    tmp_path, autojump_clock
):
    """The limits of section 14: a message alone, 65,536 bytes; settlements sent
    together, 1 MiB. 120 settlements together pass the first and settle; a settlement
    padded past it alone is refused `too_large`, whatever else is wrong with it."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        await w.local.start_coordinator(TIMING, watchtower=False)
        raws = [w.local.settlement("dvp", SAME_DVP, PARTIES) for _ in range(120)]
        payload = settlements(raws)
        assert len(payload) > canonical.MESSAGE_BYTES_MAX
        assert {s.phase for s in statuses(w, await send(w, payload))} == {"settled"}
        padded = raws[0][:-1] + b" " * canonical.MESSAGE_BYTES_MAX + b"}"
        status = decode_signed(await send(w, padded), allowed=(SettlementStatus,)).msg
        assert (status.phase, status.reason_code) == ("rejected", Code.TOO_LARGE.value)
        nursery.cancel_scope.cancel()


async def test_a_client_written_from_the_protocol_alone_verifies_each_status_on_its_own(tmp_path, autojump_clock):
    """docs/verify-signature.mjs (Node.js, no Lockstep code) checks each status of a reply
    with its share of the coordinator's one signature, and refuses one changed."""
    async with trio.open_nursery() as nursery:
        w = await start(nursery, tmp_path)
        await w.local.start_coordinator(TIMING, watchtower=False)
        reply = await send(w, settlements([w.local.settlement("dvp", SAME_DVP, PARTIES) for _ in range(3)]))
        _signer, items = open_batch(canonical.decode(reply, bytes_max=len(reply)), allowed=(SettlementStatus,))
        key = w.local.world.registry[COORDINATOR].public_key
        signed = [item for item in items if isinstance(item, Signed)]
        assert len(signed) == 3
        for item in signed:
            assert await trio.to_thread.run_sync(node_verifies, tmp_path, key, COORDINATOR, item.encode())
        changed = signed[1].encode().replace(b'"phase":"settled"', b'"phase":"failed"')
        assert not await trio.to_thread.run_sync(node_verifies, tmp_path, key, COORDINATOR, changed)
        nursery.cancel_scope.cancel()


def test_settlements_travel_canonical_and_open_to_each_one_or_its_refusal():
    raws = [b'{"sigs":{},"type":"settlement","v":1}', b"[]"]
    payload = settlements(raws)
    value = canonical.decode(payload)
    assert canonical.encode(value) == payload
    opened = open_settlements(value, allowed=(Settlement,))
    assert all(isinstance(item, Rejected) for item in opened) and len(opened) == 2
    assert opened[1].code is Code.MALFORMED
