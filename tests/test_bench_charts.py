"""The benchmark's charts: plain tick labels on log axes, a colour per scenario and a line
style per path, a panel per bus."""

from __future__ import annotations

import pytest

from benchmarks import charts
from tests.test_bench_report import quick_results, result


def drawn(figure) -> dict:
    figure.canvas.draw()
    return {axes.get_title(): axes for axes in figure.axes}


def tick_texts(axes) -> list[str]:
    return [label.get_text() for label in axes.get_xticklabels() if label.get_visible()]


def test_throughput_ticks_are_the_concurrencies_measured_as_plain_numbers():
    panels = drawn(charts.throughput([result("mqtt", "dvp", "same", c) for c in (4, 8, 16, 32)]))
    assert tick_texts(panels["mqtt bus"]) == ["4", "8", "16", "32"]
    assert not [text for text in (t.get_text() for t in panels["mqtt bus"].get_xticklabels(minor=True)) if text]


@pytest.mark.parametrize(
    "low_ms, high_ms, ticks",
    [
        (41, 97, ["30", "50", "70", "100"]),
        (3.2, 240, ["2", "5", "10", "20", "50", "100", "200", "500"]),
        (1.2, 7000, ["1", "3", "10", "30", "100", "300", "1000", "3000", "10000"]),
        (0.4, 0.9, ["0.3", "0.5", "0.7", "1"]),
    ],
)
def test_latency_ticks_are_plain_milliseconds(low_ms, high_ms, ticks):
    run = result("memory", "pvp", "cross", 8)
    run.latencies_ms = [low_ms, (low_ms + high_ms) / 2, high_ms]
    axes = drawn(charts.latency_cdf([run]))["memory bus"]
    assert tick_texts(axes) == ticks
    assert not [t.get_text() for t in axes.get_xticklabels(minor=True) if t.get_text()]
    assert not any(mark in "".join(ticks) for mark in ("^", "×", "e", "$"))


@pytest.mark.parametrize("chart", [charts.throughput, charts.latency_cdf])
def test_each_scenario_has_one_colour_and_each_path_one_line_style(chart):
    panels = drawn(chart(quick_results()))
    assert set(panels) == {"memory bus", "mqtt bus", "mqtt+postgresql bus"}
    for axes in panels.values():
        looks = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in axes.get_lines()}
        assert len(looks) == 4
        for label, look in looks.items():
            kind, path = label.split()[:2]
            assert look == (
                {"DvP": "tab:blue", "PvP": "tab:orange"}[kind],
                {"cross-ledger": "-", "same-ledger": "--"}[path.rstrip(",")],
            ), label


def test_the_charts_are_written_as_png(tmp_path):
    paths = charts.draw(quick_results(), tmp_path)
    assert [path.name for path in paths] == ["throughput.png", "latency_cdf.png"]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths)
