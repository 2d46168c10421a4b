"""`lockstep bench`: cross-ledger HTLC settlement against same-ledger settlement, on the
same workload, in one run. A progress bar while it runs; a table, a JSON file with every
figure and the machine, and PNG charts at the end (benchmarks/README.md says how to read
them)."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from engine.world.broker import mosquitto_path
from protocols.envelope import SETTLEMENTS_MAX
from protocols.failures import ExpectedFailure
from protocols.settlement import Timing

from .netem import check_rtt
from .options import QUICK
from .profile import sampler_path
from .profile import text as profile_text
from .runner import (
    BROKER_KINDS,
    BenchmarkBroken,
    Load,
    Result,
    Run,
    databases,
    measure,
    memory_system,
    mqtt_system,
    places,
    profile_label,
)
from .table import table
from .workload import Shape

# The bus round trips on a settlement's path: its request and its status, then a
# cross-ledger one's locks (both at once) and claims (leg 0's, then leg 1's), a same-ledger
# one's settle.
ROUND_TRIPS = {"cross": 4, "same": 2}


def sweep(concurrency: list[int], rates: list[int], per_request: list[int]) -> list[Load]:
    """Each closed and open load, for each number of settlements to a request; a request
    of more settlements than are in flight is no closed loop of that many, and is left out."""
    return [
        load
        for n in per_request
        for load in [Load(concurrency=c, per_request=n) for c in concurrency if n <= c]
        + [Load(rate_per_s=float(r), per_request=n) for r in rates]
    ]


def main(args: argparse.Namespace) -> int:
    if args.queue:
        from . import queue

        return queue.main(args.queue, args.seed, Path(args.out))
    if args.quick:
        args.bus, args.kinds, args.paths = QUICK["buses"], QUICK["kinds"], QUICK["paths"]
        args.concurrency, args.rate, args.settlements = QUICK["concurrency"], QUICK["rates"], QUICK["settlements"]
        args.participants = QUICK["participants"]
    shape = Shape(args.participants, args.accounts, args.isins, args.ballast, args.coordinators)
    wrong = ",".join(str(n) for n in args.per_request if not 1 <= n <= SETTLEMENTS_MAX)
    if wrong:
        raise ExpectedFailure(f"--per-request {wrong}", f"settlements to a request are 1 to {SETTLEMENTS_MAX}")
    loads = sweep(args.concurrency, args.rate, args.per_request)
    if args.rtt and args.store != ["sqlite"]:
        raise ExpectedFailure("--rtt", "runs with --store sqlite only: no PostgreSQL server is in the places")
    if args.rtt and args.broker_kind != ["mosquitto"]:
        raise ExpectedFailure("--rtt", "runs with --broker-kind mosquitto only: only Mosquitto is started in a place")
    unknown = sorted(set(args.broker_kind) - set(BROKER_KINDS))
    if unknown:
        raise ExpectedFailure(f"--broker-kind {','.join(unknown)}", f"not a broker ({', '.join(BROKER_KINDS)})")
    unknown_qos = ",".join(str(qos) for qos in sorted(set(args.qos) - {0, 1}))
    if unknown_qos:
        raise ExpectedFailure(f"--qos {unknown_qos}", "not a quality of service the bus uses (0, 1)")
    for rtt_ms in args.rtt:  # all of them now, not after the runs before one that cannot be
        check_rtt(rtt_ms)
    if args.profile:
        if "mqtt" not in args.bus:
            raise ExpectedFailure("--profile", "samples the mqtt bus's service processes: add --bus mqtt")
        sampler_path()
    runs = [
        Run(bus, kind, path, load, args.settlements, store, rtt_ms, broker, qos)
        for bus in args.bus
        for broker in (args.broker_kind if bus == "mqtt" else ["mosquitto"])
        for qos in (args.qos if bus == "mqtt" else [1])
        for rtt_ms in (args.rtt if bus == "mqtt" and args.rtt else [None])
        for store in args.store
        for load in loads
        for kind in args.kinds
        for path in args.paths
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "lockstep bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "lockstep bench"
    started = time.time()
    try:
        results = trio.run(_run_all, runs, shape, args.seed, args.postgres, out if args.profile else None)
    except (BenchmarkBroken, BaseExceptionGroup) as error:
        broken = _broken(error)
        if broken is None:
            raise
        print(f"\nBENCHMARK BROKEN: {broken}", file=sys.stderr)
        return 3
    report = _report(results, shape, command, time.time() - started)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(report))
    from .charts import draw

    charts = draw(results, out)
    print(f"\nresults: {out / 'results.json'}; charts: {', '.join(str(c) for c in charts)}")
    if args.profile:
        profiles = {profile_label(r.run): r.profiles for r in results if r.profiles}
        (out / "profile.txt").write_text(profile_text(command, profiles))
        print(f"profiles: {out / 'profile.txt'} (these runs' figures include py-spy's sampling: not for quoting)")
    return 0


def _broken(error: BaseException) -> BenchmarkBroken | None:
    """What broke the benchmark, raised alone or from inside a nursery (in a group of
    nothing else); None for anything else, a bug."""
    if isinstance(error, BenchmarkBroken):
        return error
    if isinstance(error, BaseExceptionGroup):
        broken, rest = error.split(BenchmarkBroken)
        if broken is not None and rest is None:
            return _broken(broken.exceptions[0])
    return None


async def _run_all(runs: list[Run], shape: Shape, seed: int, postgres: str, profile_to: Path | None) -> list[Result]:
    total = sum(run.settlements for run in runs)
    bar = Progress(total)
    results = []
    for name in dict.fromkeys(run.system for run in runs):
        first = next(run for run in runs if run.system == name)
        with (
            tempfile.TemporaryDirectory(prefix=f"lockstep-bench-{first.bus}-") as directory,
            databases(first.store, postgres) as settings,
            places(shape, first.rtt_ms) as where,
        ):
            system_of = (
                memory_system
                if first.bus == "memory"
                else functools.partial(mqtt_system, places=where, broker_kind=first.broker, qos=first.qos)
            )
            ballast = f" and opening {shape.ballast:,} more accounts per ledger" if shape.ballast else ""
            bar.status(f"{name}: starting services and funding {shape.participants} participants{ballast}")
            async with system_of(Path(directory), shape, seed, settings) as system:
                for run in (r for r in runs if r.system == name):
                    bar.status(f"{name} {run.kind} {run.path} {run.load.label}")
                    results.append(await measure(system, run, bar.advance, profile_to))
    bar.done()
    return results


class Progress:
    """One line on stderr: a bar, a count, what is running."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.label = ""
        self._shown = 0.0

    def status(self, label: str) -> None:
        self.label = label
        self._show()

    def advance(self, count: int) -> None:
        self.count += count
        if time.monotonic() - self._shown > 0.2:
            self._show()

    def _show(self) -> None:
        self._shown = time.monotonic()
        width = 30
        filled = int(width * self.count / max(1, self.total))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.count}/{self.total}  {self.label:<60}")
        sys.stderr.flush()

    def done(self) -> None:
        self._show()
        sys.stderr.write("\n")


def _report(results: list[Result], shape: Shape, command: str, elapsed_s: float) -> dict:
    rows = [result.summary() for result in results]
    ratios = []
    for row in rows:
        if row["path"] != "cross":
            continue
        same = next(
            (
                r
                for r in rows
                if r["path"] == "same"
                and (r["system"], r["kind"], r["load"]) == (row["system"], row["kind"], row["load"])
            ),
            None,
        )
        if same:
            ratios.append(
                {
                    "system": row["system"],
                    "kind": row["kind"],
                    "load": row["load"],
                    "throughput_cross_over_same": round(row["throughput_per_s"] / same["throughput_per_s"], 3),
                    "latency_p50_cross_over_same": round(row["latency_ms_p50"] / same["latency_ms_p50"], 3),
                }
            )
    return {
        "command": command,
        "elapsed_s": round(elapsed_s, 1),
        "machine": _machine(),
        "shape": {
            "participants": shape.participants,
            "accounts_per_participant": shape.accounts_per_participant,
            "ballast_accounts_per_ledger": shape.ballast,
            "isins": shape.isins,
            "coordinators": shape.coordinators,
        },
        "results": rows,
        "ratios": ratios,
        "store_ratios": _store_ratios(rows),
        "distance": _distance(rows),
    }


def _distance(rows: list[dict]) -> list[dict]:
    """Each run between places: its latency in round trips, what it takes beyond them, and
    the margin Δ the timing rules need there. Δ is the time leg 1 outlives leg 0
    (protocols/settlement.py): a claim deadline, the longest it takes to get leg 1 claimed
    once leg 0 is, plus the clock skew allowed. The claims measured, leg 0's and then leg
    1's from the decision to SETTLED, bound that from above: their p99 is the deadline."""
    skew_ms = Timing().clock_skew_ms_max  # the coordinator's config sets no [timing]: the default
    found = []
    for row in rows:
        rtt_ms = row["rtt_ms"]
        if rtt_ms is None:
            continue
        trips = ROUND_TRIPS[row["path"]]
        claims_ms = row.get("claims_ms_p99")
        found.append(
            {
                **{key: row[key] for key in ("system", "kind", "path", "load", "rtt_ms", "bus_round_trip_ms_p50")},
                **{key: row[key] for key in ("throughput_per_s", "latency_ms_p50", "latency_ms_p99")},
                "round_trips": trips,
                "latency_p50_in_round_trips": round(row["latency_ms_p50"] / rtt_ms, 2) if rtt_ms else None,
                "beyond_round_trips_ms_p50": round(row["latency_ms_p50"] - trips * rtt_ms, 1),
                "lock_ms_p99": row.get("lock_ms_p99"),
                "claims_ms_p99": claims_ms,
                "margin_ms_needed": None if claims_ms is None else round(claims_ms + skew_ms, 1),
            }
        )
    return found


def _store_ratios(rows: list[dict]) -> list[dict]:
    """Each run on PostgreSQL ledgers against the same run on SQLite ledgers."""
    sqlite = {_run_but_store(r): r for r in rows if r["store"] == "sqlite"}
    ratios = []
    for row in rows:
        base = sqlite.get(_run_but_store(row))
        if row["store"] == "sqlite" or base is None:
            continue
        cpu, base_cpu = (sum(r["cpu_ms_per_settlement"].values()) for r in (row, base))
        ratios.append(
            {
                "system": row["system"],
                "kind": row["kind"],
                "path": row["path"],
                "load": row["load"],
                "throughput_over_sqlite": round(row["throughput_per_s"] / base["throughput_per_s"], 3),
                "cpu_per_settlement_over_sqlite": round(cpu / base_cpu, 3),
            }
        )
    return ratios


def _run_but_store(row: dict) -> tuple:
    """What makes a run the same run on other ledger databases: all but its store."""
    return tuple(row[key] for key in ("bus", "broker", "qos", "kind", "path", "load"))


def _machine() -> dict:
    versions = {name: importlib.metadata.version(name) for name in ("trio", "paho-mqtt", "cryptography", "attrs")}
    try:
        mosquitto = subprocess.run([mosquitto_path(), "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    except (FileNotFoundError, IndexError):
        mosquitto = "not installed"
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": mosquitto,
        "packages": versions,
    }
