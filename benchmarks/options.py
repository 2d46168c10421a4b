"""`lockstep bench`'s options, apart from the runner: the command line is built on every
`lockstep` command, and this is all of the benchmark it needs."""

from __future__ import annotations

import argparse
from typing import Any

from protocols.databases import LOCAL_POSTGRES

QUICK: dict[str, Any] = dict(
    buses=["memory", "mqtt"],
    kinds=["dvp", "pvp"],
    paths=["cross", "same"],
    concurrency=[4, 32],
    rates=[],
    settlements=120,
    participants=10,
)


def arguments(parser: argparse.ArgumentParser) -> None:
    def words(text: str) -> list[str]:
        return [word for word in text.split(",") if word]

    def numbers(text: str) -> list[int]:
        return [int(word) for word in text.split(",") if word]

    def milliseconds(text: str) -> list[float]:
        return [float(word) for word in text.split(",") if word]

    def option(name: str, default, text: str, **kwargs) -> None:
        shown = (",".join(str(item) for item in default) or "none") if isinstance(default, list) else default
        parser.add_argument(name, default=default, help=f"{text} (default: {shown})", **kwargs)

    quick = (
        f"buses {','.join(QUICK['buses'])}, kinds {','.join(QUICK['kinds'])}, paths {','.join(QUICK['paths'])}, "
        f"{','.join(str(c) for c in QUICK['concurrency'])} in flight, {QUICK['settlements']} settlements a run, "
        f"{QUICK['participants']} participants"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a reduced sweep that runs in about a minute: {quick} (default: off, the options below)",
    )
    option("--bus", ["memory", "mqtt"], "the buses to run on, comma-separated", type=words, metavar="LIST")
    option(
        "--broker-kind",
        ["mosquitto"],
        "the mqtt bus's broker, comma-separated: mosquitto, nats (nats-server's MQTT), rabbitmq (its MQTT plugin)",
        type=words,
        metavar="LIST",
    )
    option(
        "--qos",
        [1],
        "the mqtt bus's quality of service, comma-separated: 1, or 0 (no acknowledgement of each message: "
        "docs/SCALING.md, What one message costs)",
        type=numbers,
        metavar="LIST",
    )
    option(
        "--store",
        ["sqlite"],
        "the ledgers' databases, comma-separated: sqlite, postgresql (a new database on --postgres)",
        type=words,
        metavar="LIST",
    )
    option("--postgres", LOCAL_POSTGRES, "the PostgreSQL server for --store postgresql", metavar="URL")
    option("--kinds", ["dvp", "pvp"], "the scenarios, comma-separated", type=words, metavar="LIST")
    option(
        "--paths",
        ["cross", "same"],
        "cross-ledger (HTLC) and same-ledger (one settle), comma-separated",
        type=words,
        metavar="LIST",
    )
    option(
        "--concurrency",
        [1, 8, 64, 256],
        "closed-loop sweep: settlements in flight, comma-separated; empty for none",
        type=numbers,
        metavar="LIST",
    )
    option(
        "--rate", [], "open-loop sweep: settlements started per second, comma-separated", type=numbers, metavar="LIST"
    )
    option(
        "--per-request",
        [1],
        "settlements a back office sends its coordinator together in one request, comma-separated: 1 (each "
        "alone), or more (one request and one reply for them all; --concurrency still counts settlements, and "
        "a concurrency below N is not run with N)",
        type=numbers,
        metavar="LIST",
    )
    option("--settlements", 2000, "settlements per run", type=int, metavar="N")
    option("--participants", 100, "banks that trade, each with accounts on every ledger", type=int, metavar="N")
    option("--accounts", 1, "accounts per participant on each ledger", type=int, metavar="N")
    option("--isins", 4, "bonds traded, on the CSD and on the unified ledger", type=int, metavar="N")
    option(
        "--ballast",
        0,
        "more accounts on each ledger, never used: the flat-cost sweep, such as 1000000",
        type=int,
        metavar="N",
    )
    option(
        "--coordinators",
        1,
        "coordinator processes (mqtt bus), each owning the settlements whose id hashes to it",
        type=int,
        metavar="N",
    )
    option(
        "--rtt",
        [],
        "the mqtt bus's runs at each of these round trips between services, in ms, comma-separated: "
        "each process in a network namespace of its own (benchmarks/netem.py; needs root)",
        type=milliseconds,
        metavar="LIST",
    )
    option(
        "--queue",
        0,
        "instead of the sweep: the settlement queue's benchmark, this many trades through the matching desk, "
        "all waiting at first, what they need handed back in four waves (benchmarks/queue.py); 0 for none",
        type=int,
        metavar="N",
    )
    option("--seed", 1, "seed of the workload's random choices", type=int)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample each service process of the mqtt bus with py-spy while each run is measured, and write "
        "its functions by share of CPU to profile.txt and results.json (benchmarks/profile.py) (default: off)",
    )
    option("--out", "bench-results", "folder for results.json and the charts", metavar="DIR")
