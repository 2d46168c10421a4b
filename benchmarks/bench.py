"""`lockstep bench`: cross-ledger HTLC settlement against same-ledger settlement, on the
same workload, in one run. A progress bar while it runs; a table, a JSON file with every
figure and the machine, and PNG charts at the end (benchmarks/README.md says how to read
them)."""

from __future__ import annotations

import argparse
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

from engine.broker import mosquitto_path

from .runner import BenchmarkBroken, Load, Result, Run, measure, memory_system, mqtt_system
from .workload import Shape

QUICK = dict(buses=["memory", "mqtt"], kinds=["dvp", "pvp"], paths=["cross", "same"], concurrency=[4, 32],
             rates=[], settlements=120, participants=10)


def arguments(parser: argparse.ArgumentParser) -> None:
    def words(text: str) -> list[str]:
        return [word for word in text.split(",") if word]

    def numbers(text: str) -> list[int]:
        return [int(word) for word in text.split(",") if word]

    parser.add_argument("--quick", action="store_true", help="a reduced sweep that runs in about a minute")
    parser.add_argument("--bus", type=words, default=["memory", "mqtt"], help="memory,mqtt")
    parser.add_argument("--kinds", type=words, default=["dvp", "pvp"], help="dvp,pvp")
    parser.add_argument("--paths", type=words, default=["cross", "same"], help="cross,same")
    parser.add_argument("--concurrency", type=numbers, default=[1, 8, 64, 256],
                        help="closed-loop settlements in flight, a sweep: 1,8,64,256")
    parser.add_argument("--rate", type=numbers, default=[], help="open-loop offered rates per second, a sweep")
    parser.add_argument("--settlements", type=int, default=2000, help="settlements per run")
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--accounts", type=int, default=1, help="accounts per participant on each ledger")
    parser.add_argument("--isins", type=int, default=4)
    parser.add_argument("--ballast", type=int, default=0,
                        help="more accounts on each ledger, never used (flat cost: try 1000000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="bench-results", help="folder for results.json and the charts")


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.bus, args.kinds, args.paths = QUICK["buses"], QUICK["kinds"], QUICK["paths"]
        args.concurrency, args.rate, args.settlements = QUICK["concurrency"], QUICK["rates"], QUICK["settlements"]
        args.participants = QUICK["participants"]
    shape = Shape(args.participants, args.accounts, args.isins, args.ballast)
    loads = [Load(concurrency=c) for c in args.concurrency] + [Load(rate_per_s=float(r)) for r in args.rate]
    runs = [Run(bus, kind, path, load, args.settlements)
            for bus in args.bus for load in loads for kind in args.kinds for path in args.paths]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "lockstep bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "lockstep bench"
    started = time.time()
    try:
        results = trio.run(_run_all, runs, shape, args.seed)
    except BenchmarkBroken as error:
        print(f"\nBENCHMARK BROKEN: {error}", file=sys.stderr)
        return 3
    report = _report(results, shape, command, time.time() - started)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report)
    from .charts import draw
    charts = draw(results, out)
    print(f"\nresults: {out / 'results.json'}; charts: {', '.join(str(c) for c in charts)}")
    return 0


async def _run_all(runs: list[Run], shape: Shape, seed: int) -> list[Result]:
    total = sum(run.settlements for run in runs)
    bar = Progress(total)
    results = []
    for bus in dict.fromkeys(run.bus for run in runs):
        system_of = memory_system if bus == "memory" else mqtt_system
        with tempfile.TemporaryDirectory(prefix=f"lockstep-bench-{bus}-") as directory:
            ballast = f" and opening {shape.ballast:,} more accounts per ledger" if shape.ballast else ""
            bar.status(f"{bus}: starting services and funding {shape.participants} participants{ballast}")
            async with system_of(Path(directory), shape, seed) as system:
                for run in (r for r in runs if r.bus == bus):
                    bar.status(f"{bus} {run.kind} {run.path} {run.load.label}")
                    results.append(await measure(system, run, bar.advance))
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
        same = next((r for r in rows if r["path"] == "same" and (r["bus"], r["kind"], r["load"]) ==
                     (row["bus"], row["kind"], row["load"])), None)
        if same:
            ratios.append({"bus": row["bus"], "kind": row["kind"], "load": row["load"],
                           "throughput_cross_over_same": round(row["throughput_per_s"] / same["throughput_per_s"], 3),
                           "latency_p50_cross_over_same": round(row["latency_ms_p50"] / same["latency_ms_p50"], 3)})
    return {"command": command, "elapsed_s": round(elapsed_s, 1), "machine": _machine(),
            "shape": {"participants": shape.participants, "accounts_per_participant": shape.accounts_per_participant,
                      "ballast_accounts_per_ledger": shape.ballast,
                      "isins": shape.isins},
            "results": rows, "ratios": ratios}


def _machine() -> dict:
    versions = {name: importlib.metadata.version(name) for name in ("trio", "paho-mqtt", "cryptography", "attrs")}
    try:
        mosquitto = subprocess.run([mosquitto_path(), "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    except (FileNotFoundError, IndexError):
        mosquitto = "not installed"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "mosquitto": mosquitto, "packages": versions}


def _print_table(report: dict) -> None:
    header = f"{'bus':<7}{'kind':<5}{'path':<6}{'load':<10}{'n':>6}{'per s':>9}{'p50 ms':>9}{'p90 ms':>9}" \
             f"{'p99 ms':>9}{'max ms':>9}{'msgs':>7}  cpu ms/settlement by process; outcomes"
    print()
    print(header)
    for row in report["results"]:
        cpu = ", ".join(f"{name} {ms}" for name, ms in row["cpu_ms_per_settlement"].items())
        phases = ", ".join(f"{phase} {count}" for phase, count in row["phases"].items())
        print(f"{row['bus']:<7}{row['kind']:<5}{row['path']:<6}{row['load']:<10}{row['settlements']:>6}"
              f"{row['throughput_per_s']:>9.1f}{row['latency_ms_p50']:>9.2f}{row['latency_ms_p90']:>9.2f}"
              f"{row['latency_ms_p99']:>9.2f}{row['latency_ms_max']:>9.2f}{row['bus_messages_per_settlement']:>7.1f}"
              f"  {cpu}; {phases}")
    if report["ratios"]:
        print("\ncross-ledger / same-ledger, same run:")
        for ratio in report["ratios"]:
            print(f"  {ratio['bus']:<7}{ratio['kind']:<5}{ratio['load']:<10} throughput x{ratio['throughput_cross_over_same']:.2f}"
                  f"   p50 latency x{ratio['latency_p50_cross_over_same']:.2f}")
