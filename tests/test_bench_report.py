"""What `lockstep bench` prints: the table (one precision per column, within 120 columns)
and the options' help (each with its default)."""

from __future__ import annotations

import argparse
import random
import re

import pytest

from benchmarks.bench import _broken, _report, main
from benchmarks.options import arguments
from benchmarks.runner import BenchmarkBroken, Load, Result, Run
from benchmarks.table import WIDTH_MAX, table
from benchmarks.workload import Shape
from protocols.failures import ExpectedFailure

MQTT_PROCESSES = ("csd", "cbdc-eur", "cbdc-usd", "unified", "coordinator", "broker", "load generator")


def result(
    bus: str,
    kind: str,
    path: str,
    concurrency: int,
    *,
    phases: dict | None = None,
    store: str = "sqlite",
    qos: int = 1,
) -> Result:
    """A run's figures, spread as a real run's are: from a few ms to a few hundred."""
    draw = random.Random(f"{bus}{kind}{path}{concurrency}{store}{qos}")
    base_ms = concurrency * (6.0 if path == "cross" else 2.5)
    latencies = [base_ms * draw.uniform(0.5, 1.6) for _ in range(120)]
    processes = ("all (one process)",) if bus == "memory" else MQTT_PROCESSES
    if store == "postgresql":
        processes += tuple(f"postgres {ledger.replace('-', '_')}" for ledger in MQTT_PROCESSES[:4])
    return Result(
        Run(bus, kind, path, Load(concurrency=concurrency), 120, store, qos=qos),
        elapsed_s=draw.uniform(0.2, 1.5),
        latencies_ms=latencies,
        phases=phases or {"settled": 120},
        cpu_s={name: draw.choice([0.0, 0.01, 0.3, 1.234]) for name in processes},
        rss_peak_bytes={name: 2**26 for name in processes},
        bus_messages=draw.choice([600, 1692, 0]),
    )


def quick_results(**extra) -> list[Result]:
    return [
        result(bus, kind, path, concurrency, store=store, **extra)
        for bus, store in (("memory", "sqlite"), ("mqtt", "sqlite"), ("mqtt", "postgresql"))
        for concurrency in (4, 32)
        for kind in ("dvp", "pvp")
        for path in ("cross", "same")
    ]


def lines_of(results: list[Result]) -> list[str]:
    return table(_report(results, Shape(), "lockstep bench --quick", 1.0)).splitlines()


def blocks(lines: list[str]) -> list[list[str]]:
    """The table's blocks, each a header line and its rows."""
    found, block = [], []
    for line in lines + [""]:
        if line and not line.endswith(":"):
            block.append(line)
        elif block:
            found.append(block)
            block = []
    return found


def decimals(cell: str) -> int | None:
    """Digits after the point of a number; None for text."""
    if not re.fullmatch(r"-?\d+(\.\d+)?", cell):
        return None
    return len(cell.partition(".")[2])


def test_every_line_of_the_table_fits_120_columns():
    lines = lines_of(quick_results(phases={"settled": 117, "rolled_back": 2, "failed": 1}))
    assert max(len(line) for line in lines) <= WIDTH_MAX == 120, "\n".join(lines)


def test_each_column_of_the_table_holds_one_precision():
    """No figure holds a space, so a row's cells are its words."""
    for block in blocks(lines_of(quick_results())):
        rows = [row.split() for row in block[1:]]
        assert len({len(row) for row in rows}) == 1, "\n".join(block)
        for column in zip(*rows, strict=True):
            assert len({decimals(cell) for cell in column}) == 1, f"{column}\n" + "\n".join(block)


def test_the_table_shows_throughput_and_latency_with_one_decimal_and_cpu_with_two():
    lines = lines_of(quick_results())
    first = lines[1].split()
    assert [decimals(cell) for cell in first[4:]] == [0, 1, 1, 1, 1, 1, 1, 0]
    cpu = next(line for line in lines[lines.index("cpu ms per settlement by process, mqtt:") + 2 :])
    assert {decimals(cell) for cell in cpu.split()[3:]} == {2}


def test_outcomes_other_than_settled_are_listed_by_run():
    lines = lines_of([result("mqtt", "dvp", "cross", 32, phases={"settled": 118, "rolled_back": 2})])
    assert lines[lines.index("outcomes other than settled:") + 1].split() == [
        "mqtt",
        "dvp",
        "cross",
        "c=32",
        "rolled_back",
        "2",
    ]


def test_each_run_on_postgresql_ledgers_is_set_against_the_same_run_on_sqlite_with_the_servers_cpu_counted():
    results = quick_results()
    report = _report(results, Shape(), "lockstep bench --store sqlite,postgresql", 1.0)
    by_run = {(r.run.system, r.run.kind, r.run.path, r.run.load.label): r for r in results}
    assert len(report["store_ratios"]) == 8
    for ratio in report["store_ratios"]:
        postgres = by_run[("mqtt+postgresql", ratio["kind"], ratio["path"], ratio["load"])]
        sqlite = by_run[("mqtt", ratio["kind"], ratio["path"], ratio["load"])]
        assert ratio["throughput_over_sqlite"] == pytest.approx(
            postgres.throughput_per_s / sqlite.throughput_per_s, abs=0.01
        )
    lines = lines_of(results)
    (header,) = [line for line in lines if line.startswith("kind") and "postgres " in line]
    # the server's processes in one column, counted among the services
    assert header.split()[-6:] == ["broker", "postgres", "services", "load", "generator", "total"]
    run = by_run[("mqtt+postgresql", "dvp", "cross", "c=4")]
    server_ms = sum(cpu for name, cpu in run.cpu_s.items() if name.startswith("postgres ")) * 1000 / 120
    row = lines[lines.index("cpu ms per settlement by process, mqtt+postgresql:") + 2]
    assert row.split()[-4] == f"{server_ms:.2f}"


def test_runs_at_qos_0_are_a_system_of_their_own_each_set_against_its_own_runs_on_sqlite():
    results = [
        result("mqtt", kind, path, 4, store=store, qos=qos)
        for qos in (1, 0)
        for store in ("sqlite", "postgresql")
        for kind in ("dvp", "pvp")
        for path in ("cross", "same")
    ]
    report = _report(results, Shape(), "lockstep bench --qos 1,0 --store sqlite,postgresql", 1.0)
    assert {(row["system"], row["qos"]) for row in report["results"]} == {
        ("mqtt", 1),
        ("mqtt+postgresql", 1),
        ("mqtt+qos0", 0),
        ("mqtt+qos0+postgresql", 0),
    }
    by_run = {(r.run.system, r.run.kind, r.run.path): r for r in results}
    assert len(report["store_ratios"]) == 8
    for ratio in report["store_ratios"]:
        run = by_run[(ratio["system"], ratio["kind"], ratio["path"])]
        base = by_run[(ratio["system"].removesuffix("+postgresql"), ratio["kind"], ratio["path"])]
        assert run.run.qos == base.run.qos
        assert ratio["throughput_over_sqlite"] == pytest.approx(run.throughput_per_s / base.throughput_per_s, abs=0.01)
    assert "cpu ms per settlement by process, mqtt+qos0:" in lines_of(results)


def test_a_qos_the_bus_does_not_use_is_refused_naming_it_before_any_run(tmp_path):
    parser = argparse.ArgumentParser()
    arguments(parser)
    with pytest.raises(ExpectedFailure) as refused:
        main(parser.parse_args(["--bus", "mqtt", "--qos", "1,2", "--out", str(tmp_path / "out")]))
    assert str(refused.value) == "--qos 2: not a quality of service the bus uses (0, 1)"
    assert not (tmp_path / "out").exists()


def test_the_services_cpu_is_every_process_but_the_load_generator_and_the_wire():
    """The figure the CPU targets are set on: the ledgers, the coordinators, the broker and
    the database serving the ledgers, without the bench's own load generator, nor the
    process that carries --rtt's delay; none where all run in one process."""
    results = quick_results()
    for found in results:
        if found.run.bus == "mqtt":
            found.cpu_s["wire"] = 5.0
    report = _report(results, Shape(), "lockstep bench --quick", 1.0)
    for found, row in zip(results, report["results"], strict=True):
        if found.run.bus == "memory":
            assert row["cpu_ms_per_settlement_services"] is None
            continue
        services = sum(cpu for name, cpu in found.cpu_s.items() if name not in ("load generator", "wire"))
        assert row["cpu_ms_per_settlement_services"] == pytest.approx(1000 * services / 120, abs=0.001)
        assert row["cpu_ms_per_settlement_services"] < sum(row["cpu_ms_per_settlement"].values())
    lines = table(report).splitlines()
    header, row = lines[lines.index("cpu ms per settlement by process, mqtt:") + 1 :][:2]
    assert header.split()[-6:] == ["broker", "services", "load", "generator", "wire", "total"]
    first = next(row for row in report["results"] if row["system"] == "mqtt")
    assert row.split()[-4] == f"{first['cpu_ms_per_settlement_services']:.2f}"


def test_every_option_has_a_help_text_that_shows_its_default():
    parser = argparse.ArgumentParser(prog="lockstep bench")
    arguments(parser)
    options = [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]
    assert options
    for action in options:
        assert action.help and "(default: " in action.help, action.option_strings
        default = action.default
        shown = ",".join(map(str, default)) or "none" if isinstance(default, list) else default
        if not isinstance(action, argparse._StoreTrueAction):
            assert f"(default: {shown})" in action.help, action.option_strings


def test_a_broken_benchmark_is_reported_whether_or_not_a_nursery_wrapped_it():
    broken = BenchmarkBroken("settlement s-1 is settled but its legs settled as ['held', 'claimed']")
    assert _broken(broken) is broken
    assert _broken(ExceptionGroup("nursery", [ExceptionGroup("inner", [broken])])) is broken
    assert _broken(ExceptionGroup("nursery", [broken, ValueError("a bug")])) is None  # a bug keeps its traceback
    assert _broken(ValueError("a bug")) is None
