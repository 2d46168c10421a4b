"""`lockstep bench --queue N`: the settlement queue's benchmark. N trades go through the
matching desk while the sellers' bonds and the buyers' cash are put aside
(engine/world/trades.py), so that every one of them waits in the queue; then what they
need is handed back in WAVES equal parts, and each wave is a run of the queue: the trades
it settled, the value it released (whole trades and parts: the cash the seller received,
the bonds the buyer did) and how long from the hand-back to the last of it. Then a
gridlock: N/10 trades each way between the two banks, neither holding any cash, so that
none settles alone; liquidity saving (engine/desks/offsetting.py) releases them, netted,
as linked settlements: the trades and value it released, the cash that moved, and how
long from the last trade sent to the last settled. In one process on the in-memory bus,
every ledger and the coordinator with its own database.

Afterwards, as after every benchmark run, the audit of every ledger: each asset
conserved, each settlement settled on both legs or on neither, no trade's units
settled twice; a run that breaks any raises BenchmarkBroken."""

from __future__ import annotations

import json
import math
import random
import tempfile
from pathlib import Path

import trio

from engine.audit.journals import audit, read_over_bus
from engine.desks.matching import MatchingDesk
from engine.world import trades
from engine.world.local import BOND, LEDGERS, PLACES, Local, standard_world
from protocols.bus.memory import MemoryBus
from protocols.messages import Transfer
from protocols.money import format_amount

from .runner import BENCH_TIMING, REPLY_TIMEOUT_S, BenchmarkBroken

WAVES = 4
SENDERS = 16  # trades sent at once
QUIET_S = 1.0  # a wave is over once nothing more settled for this long
FIRST_S = 10.0  # or, if nothing settled at all, after this long
WAVE_S_MAX = 120.0
GRIDLOCK_SHARE = 10  # the gridlock's trades each way: N / this


async def run(directory: Path, count: int, seed: int) -> dict:
    """The runs' figures, after the audit."""
    async with trio.open_nursery() as nursery:
        local = Local(standard_world(directory), MemoryBus(), nursery, offload=True)
        for spec in LEDGERS:
            await local.start_ledger(spec.ledger_id)
        await local.fund_standard()
        await local.start_coordinator(BENCH_TIMING, desks=(lambda c: MatchingDesk(c, PLACES),))
        await trades.put_aside(local, kept=0)  # nothing settles, not even a part, before the first wave
        sent = await _send(local, count, random.Random(seed))
        with trio.fail_after(WAVE_S_MAX):
            while list(trades.states(local).values()).count("queued") < count:
                await trio.sleep(trades.POLL_S)
        need = {("csd", "a-sec"): sum(t.units for t in sent), ("cbdc-eur", "b-eur"): sum(t.cash_minor for t in sent)}
        share = {place: math.ceil(amount / WAVES) for place, amount in need.items()}
        waves = [await _wave(local, share) for _ in range(WAVES)]
        await trades.hand_back(local)  # what rounding kept back, if any trade still waits
        with trio.fail_after(WAVE_S_MAX):
            while list(trades.states(local).values()).count("settled") < count:
                await trio.sleep(trades.POLL_S)
        gridlock = await _gridlock(local, max(count // GRIDLOCK_SHARE, 1), random.Random(f"{seed}:gridlock"))
        report = audit(await read_over_bus(local.bus, local.world.registry, [spec.ledger_id for spec in LEDGERS]))
        nursery.cancel_scope.cancel()
    if not report.clean:
        raise BenchmarkBroken("\n".join(str(violation) for violation in report.violations))
    return {
        "trades": count,
        "seed": seed,
        "value_minor": need[("cbdc-eur", "b-eur")],
        "units": need[("csd", "a-sec")],
        "waves": waves,
        "gridlock": gridlock,
        "audit": report.text().splitlines()[-1],
    }


async def _send(local: Local, count: int, chance: random.Random) -> list[trades.Trade]:
    sent: list[trades.Trade] = []
    numbers = iter(range(count))

    async def sender(draws: random.Random) -> None:
        for number in numbers:
            sent.append(await trades.send(local, draws, f"t{number}", REPLY_TIMEOUT_S))

    async with trio.open_nursery() as senders:
        for index in range(SENDERS):
            senders.start_soon(sender, random.Random(f"{chance.random()}:{index}"))
    return sent


async def _wave(local: Local, share: dict[tuple[str, str], int]) -> dict:
    """Hand back one share; what the queue released until it went quiet."""
    settled = list(trades.states(local).values()).count("settled")
    cash, bonds = (await local.balances("cbdc-eur", "a-eur")).get("EUR", 0), await _bonds(local)
    started = trio.current_time()
    await trades.hand_back(local, share)
    last, seen = started, (cash, bonds)
    while True:
        await trio.sleep(trades.POLL_S)
        now = ((await local.balances("cbdc-eur", "a-eur")).get("EUR", 0), await _bonds(local))
        if now != seen:
            last, seen = trio.current_time(), now
        quiet_s = trio.current_time() - last
        if quiet_s >= (QUIET_S if seen != (cash, bonds) else FIRST_S) or trio.current_time() - started > WAVE_S_MAX:
            break
    return {
        "handed_back": {f"{ledger}/{account}": amount for (ledger, account), amount in share.items()},
        "trades_settled": list(trades.states(local).values()).count("settled") - settled,
        "value_released_minor": seen[0] - cash,
        "units_released": seen[1] - bonds,
        "released_in_ms": round((last - started) * 1000),
    }


async def _gridlock(local: Local, each_way: int, chance: random.Random) -> dict:
    """Trades each way between the banks, every bank's cash put away: what liquidity
    saving released, and how soon."""
    await local.open_accounts("cbdc-eur", "ecb", {"reserve": "ecb"})
    for account, owner in (("a-eur", "bank-a"), ("b-eur", "bank-b")):
        held = (await local.balances("cbdc-eur", account)).get("EUR", 0)
        if held:
            await _move_cash(local, owner, account, held)
    settled = list(trades.states(local).values()).count("settled")
    sent = []
    for number in range(each_way):  # each pair of trades pays the same cash each way: it nets to none
        cash = chance.randint(10_000, 1_000_000)
        units = chance.randint(2, 100)
        sent.append(await trades.send(local, chance, f"g{number}", REPLY_TIMEOUT_S, units=units, cash=cash))
        sent.append(
            await trades.send(local, chance, f"h{number}", REPLY_TIMEOUT_S, units=units // 2, cash=cash, back=True)
        )
    started = trio.current_time()
    with trio.fail_after(WAVE_S_MAX):
        while list(trades.states(local).values()).count("settled") < settled + len(sent):
            await trio.sleep(trades.POLL_S)
    cash_held = sum([(await local.balances("cbdc-eur", account)).get("EUR", 0) for account in ("a-eur", "b-eur")])
    return {
        "trades": len(sent),
        "trades_settled": list(trades.states(local).values()).count("settled") - settled,
        "value_released_minor": sum(t.cash_minor for t in sent),
        "cash_moved_minor": cash_held,
        "released_in_ms": round((trio.current_time() - started) * 1000),
    }


async def _move_cash(local: Local, owner: str, account: str, amount: int) -> None:
    await local.instruct(
        Transfer, "cbdc-eur", owner, from_account=account, to_account="reserve", asset="EUR", amount=amount
    )


async def _bonds(local: Local) -> int:
    return (await local.balances("csd", "b-sec")).get(BOND, 0)


def table(result: dict) -> str:
    rows = [("wave", "handed back", "trades settled", "value released", "bonds released", "in")]
    for number, wave in enumerate(result["waves"], 1):
        handed = wave["handed_back"]
        rows.append(
            (
                str(number),
                f"{format_amount(BOND, handed['csd/a-sec'])}, {format_amount('EUR', handed['cbdc-eur/b-eur'])}",
                str(wave["trades_settled"]),
                format_amount("EUR", wave["value_released_minor"]),
                f"{wave['units_released']:,} units",
                f"{wave['released_in_ms']:,} ms",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    gridlock = result["gridlock"]
    lines.append(
        f"gridlock: {gridlock['trades_settled']} of {gridlock['trades']} trades, neither bank holding cash, "
        f"released by liquidity saving: {format_amount('EUR', gridlock['value_released_minor'])} settled with "
        f"{format_amount('EUR', gridlock['cash_moved_minor'])} of cash moving, in {gridlock['released_in_ms']:,} ms"
    )
    return "\n".join([*lines, result["audit"]])


def main(count: int, seed: int, out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="lockstep-bench-queue-") as directory:
        result = trio.run(run, Path(directory), count, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "queue.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nresults: {out / 'queue.json'}")
    return 0
