"""Fencing: each instance of a coordinator opens its journal at a new epoch and fences
every ledger at it before sending anything; a ledger then refuses the claims, cancels
and aborts of every earlier instance. Two instances driving from two copies of one
journal (the split brain fencing exists for) cannot both act; a standby process takes
a coordinator over from its journal the moment the process serving it dies."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from engine.coordinator.journal import Journal
from engine.coordinator.shell import FencedOut
from engine.world.local import COORDINATOR, Local, dvp_legs, standard_world
from ledgers.store import Store
from protocols.bus.mqtt import MqttBus
from protocols.htlc import LockState
from protocols.journal import Replay
from protocols.messages import Entry, Fence, QueryLocks, SettlementStatus
from protocols.settlement import Phase, lock_id
from protocols.signing import decode_signed, sign
from tests.processes import ServiceProcess
from tests.test_coordinator import CROSS_DVP, PARTIES, TIMING, start


def test_each_opening_of_a_journal_is_a_new_epoch(tmp_path):
    epochs = []
    for _ in range(3):
        journal = Journal(tmp_path / "coordinator.db")
        epochs.append(journal.epoch)
        journal.close()
    assert epochs == [1, 2, 3]
    with sqlite3.connect(tmp_path / "coordinator.db") as db:
        assert [row[0] for row in db.execute("SELECT epoch FROM epochs ORDER BY epoch")] == [1, 2, 3]


def _entry(seq: int, epoch: int) -> Entry:
    instruction = {"type": "claim", "id": f"c-{seq}", "epoch": epoch, "sigs": {"coordinator": "00"}}
    return Entry("csd", seq, "", 0, "claim", instruction, {})


def test_a_journal_whose_coordinator_epoch_goes_down_does_not_replay():
    replay = Replay()
    replay.apply(_entry(0, 2))
    replay.apply(_entry(1, 2))
    with pytest.raises(ValueError, match="coordinator acts at epoch 1 after epoch 2: its fence went down"):
        replay.apply(_entry(2, 1))


async def test_an_instance_driving_from_a_stale_copy_of_the_journal_is_fenced_out(tmp_path, autojump_clock):
    """Split brain: instance A (epoch 1) keeps running while B opens a copy of its journal
    (epoch 2) and fences both ledgers. A's next settlement locks (a lock carries the
    parties' terms, not an epoch) but its claim is refused `fenced`: A stops, having
    claimed nothing, and its locks wait for their backstop."""
    fenced_out = pytest.RaisesExc(
        FencedOut, match=r"coordinator coordinator at epoch 1: fenced out by (csd|cbdc-eur): "
    )
    with pytest.RaisesGroup(fenced_out, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            w = await start(nursery, tmp_path)
            first, _ = await w.local.start_coordinator(TIMING, watchtower=False)
            assert (await first.submit(w.local.settlement("dvp", CROSS_DVP, PARTIES))).phase is Phase.SETTLED

            copy = tmp_path / "copy.db"
            with sqlite3.connect(tmp_path / f"{COORDINATOR}.db") as source, sqlite3.connect(copy) as target:
                source.backup(target)
            second = Journal(copy)
            assert (first.journal.epoch, second.epoch) == (1, 2)
            key = w.local.world.keys[COORDINATOR]
            for ledger in ("csd", "cbdc-eur"):  # what the second instance sends first
                fence = Fence(f"fence-b-{ledger}", ledger, first.clock.now_ms(), second.epoch)
                assert (await w.local.client(ledger).submit(sign(fence, (COORDINATOR, key)))).applied

            raw = w.local.settlement("dvp", CROSS_DVP, PARTIES)
            await first.submit(raw)
    settlement_id = decode_signed(raw).msg.id
    for index, leg in enumerate(CROSS_DVP):
        store = Store(tmp_path / f"{leg.ledger}.db")
        assert store.lock(lock_id(settlement_id, index)).state is LockState.HELD
        assert store.fence(COORDINATOR) == 2
        store.close()


LEGS = dvp_legs("csd", "a-sec", "b-sec", 10, "cbdc-eur", "EUR", "b-eur", "a-eur", 1_000)


@pytest.mark.slow
async def test_a_standby_process_takes_over_when_the_coordinators_process_is_killed(tmp_path, broker):
    """Two processes for one coordinator: the second stands by (`--standby`) while the
    first holds the journal; SIGKILL the first and the second takes the journal over at
    the next epoch, fences the ledgers and settles what comes next, and what the first
    left unfinished."""
    world = standard_world(tmp_path, broker=broker.url)
    config = str(world.ledger_configs[COORDINATOR])
    ledgers = [ServiceProcess(world, "ledger", ledger, broker.url).start() for ledger in ("csd", "cbdc-eur")]
    serving = ServiceProcess(world, "coordinator", COORDINATOR, broker.url).start()
    standby = ServiceProcess(world, "coordinator", COORDINATOR, broker.url, ("--standby", config))
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in [*ledgers, serving]:
                await process.ready(bus)
            standby.start()
            local = Local(world, bus, nursery)
            await local.fund_standard(ledgers=("csd", "cbdc-eur"))

            async def settle(raw: bytes) -> str:
                while True:
                    reply = await local.send_settlement(raw, timeout_s=2)
                    if reply is not None:
                        return decode_signed(reply, allowed=(SettlementStatus,)).msg.phase

            with trio.fail_after(60):
                assert await settle(local.settlement("dvp", LEGS, ("bank-b", "bank-a"))) == "settled"
                await standby.ready(bus)  # it says it stands by: it has found the journal held
                assert standby.running
                serving.kill()
                phases = [await settle(local.settlement("dvp", LEGS, ("bank-b", "bank-a"))) for _ in range(3)]
            assert phases == ["settled"] * 3
            log = standby.log_path.read_text()
            assert "coordinator coordinator: took over journal" in log and "at epoch 2" in log
            for ledger in ("csd", "cbdc-eur"):
                client = local.client(ledger)
                assert await client.query(QueryLocks(client.next_query_id(), ledger, 2**62, 10)) == []
            nursery.cancel_scope.cancel()
    finally:
        for process in [standby, serving, *ledgers]:
            process.stop()
