"""The table `lockstep bench` prints, from the report's rows: one line per run, then CPU
per settlement by process, one block per bus (their processes differ), the outcomes other
than settled, the cross/same ratios and, with --rtt, the latency against distance. Every
column holds one precision, so figures line up and compare; every line fits WIDTH_MAX."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .runner import NOT_SERVICES, POSTGRES_PREFIX

WIDTH_MAX = 120
CPU_WIDTH_MIN = 6


@attrs.frozen
class Column:
    header: str
    width: int
    figure: Callable[[dict], object]
    precision: str = ""  # a format spec for numbers, such as ".1f"; text is left-aligned

    def cell(self, row: dict) -> str:
        value = self.figure(row)
        if value is None:  # a figure the run has not: a same-ledger run's locks, say
            return f"{'-':>{self.width}}"
        return f"{value:>{self.width}{self.precision}}" if self.precision else f"{value:<{self.width}}"

    def head(self) -> str:
        return f"{self.header:>{self.width}}" if self.precision else f"{self.header:<{self.width}}"


def _key(name: str) -> Callable[[dict], object]:
    return lambda row: row[name]


RUN = (
    Column("system", 21, _key("system")),  # mqtt+qos0+postgresql, say
    Column("kind", 5, _key("kind")),
    Column("path", 6, _key("path")),
    Column("load", 11, _key("load")),  # c=256,b=16, say
)
RUNS = RUN + (
    Column("n", 6, _key("settlements"), "d"),
    Column("per s", 9, _key("throughput_per_s"), ".1f"),
    *(Column(f"{name} ms", 9, _key(f"latency_ms_{name}"), ".1f") for name in ("p50", "p90", "p99", "max")),
    Column("msgs", 7, _key("bus_messages_per_settlement"), ".1f"),
    Column("settled", 9, lambda row: row["phases"].get("settled", 0), "d"),
)
DISTANCE = (
    *RUN[1:],
    Column("rtt", 6, _key("rtt_ms"), ".1f"),
    Column("bus rt", 7, _key("bus_round_trip_ms_p50"), ".1f"),
    Column("p50 ms", 9, _key("latency_ms_p50"), ".1f"),
    Column("p99 ms", 9, _key("latency_ms_p99"), ".1f"),
    Column("per s", 8, _key("throughput_per_s"), ".1f"),
    Column("trips", 6, _key("round_trips"), "d"),
    Column("p50/rtt", 8, _key("latency_p50_in_round_trips"), ".2f"),
    Column("beyond", 8, _key("beyond_round_trips_ms_p50"), ".1f"),
    Column("lock p99", 9, _key("lock_ms_p99"), ".1f"),
    Column("claims p99", 11, _key("claims_ms_p99"), ".1f"),
    Column("Δ ms", 8, _key("margin_ms_needed"), ".1f"),
)
DISTANCE_LEGEND = (
    "  bus rt: p50 of a request to the coordinator alone and its answer; trips: bus round trips on a\n"
    "  settlement's path; beyond: p50 - trips x rtt; lock, claims: p99 from the coordinator's steps;\n"
    "  Δ: claims p99 + the clock skew allowed, the margin the timing rules need (docs/SCALING.md)"
)


def table(report: dict) -> str:
    rows = report["results"]
    lines = [_line(RUNS, None)] + [_line(RUNS, row) for row in rows]
    for system in dict.fromkeys(row["system"] for row in rows):
        lines += ["", f"cpu ms per settlement by process, {system}:"]
        lines += _cpu(RUN[1:], [r for r in rows if r["system"] == system])
    others = [(row, {p: n for p, n in row["phases"].items() if p != "settled"}) for row in rows]
    others = [(row, phases) for row, phases in others if phases]
    if others:
        lines += ["", "outcomes other than settled:"]
        lines += [f"  {_line(RUN, row)}  " + ", ".join(f"{p} {n}" for p, n in phases.items()) for row, phases in others]
    if report["ratios"]:
        lines += ["", "cross-ledger / same-ledger, same run:"]
        lines += [
            f"  {_line(RUN[:2] + RUN[3:], ratio)}  throughput x{ratio['throughput_cross_over_same']:.2f}"
            f"   p50 latency x{ratio['latency_p50_cross_over_same']:.2f}"
            for ratio in report["ratios"]
        ]
    if report.get("distance"):
        lines += ["", "latency against distance (ms):", _line(DISTANCE, None)]
        lines += [_line(DISTANCE, row) for row in report["distance"]] + DISTANCE_LEGEND.splitlines()
    if report.get("store_ratios"):
        lines += ["", "ledgers on PostgreSQL / on SQLite, same run:"]
        lines += [
            f"  {_line(RUN, ratio)}  throughput x{ratio['throughput_over_sqlite']:.2f}"
            f"   cpu per settlement x{ratio['cpu_per_settlement_over_sqlite']:.2f}"
            for ratio in report["store_ratios"]
        ]
    return "\n".join(line.rstrip() for line in lines)


def _cpu(prefix: tuple[Column, ...], rows: list[dict]) -> list[str]:
    """The services' processes, their sum (`services`, where they run apart from the load
    generator), the load generator and the wire, and the sum of all (`total`)."""
    names = list(dict.fromkeys(_column(name) for row in rows for name in row["cpu_ms_per_settlement"]))
    services = [name for name in names if name not in NOT_SERVICES]

    def process(name: str) -> Column:
        return Column(name, max(CPU_WIDTH_MIN + 2, len(name) + 1), _cpu_of(name), ".2f")

    columns = prefix + tuple(process(name) for name in services)
    if any(row["cpu_ms_per_settlement_services"] is not None for row in rows):
        columns += (Column("services", len("services") + 1, _key("cpu_ms_per_settlement_services"), ".2f"),)
    columns += tuple(process(name) for name in names if name in NOT_SERVICES)
    if len(names) > 1:
        columns += (Column("total", CPU_WIDTH_MIN + 1, lambda row: sum(row["cpu_ms_per_settlement"].values()), ".2f"),)
    return [_line(columns, None)] + [_line(columns, row) for row in rows]


def _column(process: str) -> str:
    """The PostgreSQL server's processes that serve the ledgers (results.json has each) in one column."""
    return "postgres" if process.startswith(POSTGRES_PREFIX) else process


def _cpu_of(column: str) -> Callable[[dict], float]:
    return lambda row: sum(cpu for name, cpu in row["cpu_ms_per_settlement"].items() if _column(name) == column)


def _line(columns: tuple[Column, ...], row: dict | None) -> str:
    """The header when row is None."""
    return "".join(column.head() if row is None else column.cell(row) for column in columns)
