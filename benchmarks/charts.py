"""The benchmark's two charts, as PNG files: throughput against concurrency, and the
latency distribution of cross-ledger against same-ledger settlement at the highest load.

One panel per bus. One colour per scenario and one line style per path, the same in every
panel, so a line reads without the legend: DvP blue, PvP orange, cross-ledger solid,
same-ledger dashed. Log axes carry plain numbers (the concurrencies measured; latencies in
ms at 1-2-5 steps, finer over a narrow range), never powers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no screen needed

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from .runner import Result

NAMES = {"dvp": "DvP", "pvp": "PvP"}
COLOURS = {"dvp": "tab:blue", "pvp": "tab:orange"}
STYLES = {"cross": "-", "same": "--"}
# Latency ticks in each decade, by the decades the latencies span: a narrow range still
# has a few, a wide one is not crowded.
STEPS_BY_DECADES = ((1.5, (1, 2, 3, 5, 7)), (3.0, (1, 2, 5)), (math.inf, (1, 3)))
X_ROOM = 1.15  # beyond the first and last tick, as a factor on a log axis
PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


def draw(results: list[Result], out: Path) -> list[Path]:
    charts = [(throughput(results), out / "throughput.png"), (latency_cdf(results), out / "latency_cdf.png")]
    for figure, path in charts:
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return [path for _, path in charts]


def throughput(results: list[Result]) -> Figure:
    """Closed-loop runs only: an open-loop run's load is a rate, on another axis."""
    figure, panels = _panels(results, "Throughput: cross-ledger HTLC against same-ledger settlement")
    for (bus, kind, path, per_request), series in _series(results):
        closed = sorted((r for r in series if r.run.load.concurrency), key=lambda r: r.run.load.concurrency)
        panels[bus].plot(
            [r.run.load.concurrency for r in closed],
            [r.throughput_per_s for r in closed],
            marker="o",
            **_look(kind, path, f"b={per_request}" if per_request > 1 else ""),
        )
    loads = sorted({r.run.load.concurrency for r in results if r.run.load.concurrency})
    for bus, axes in panels.items():
        axes.set_xscale("log", base=2)
        _plain_x(axes, loads)
        axes.set_ylim(bottom=0)
        _label(axes, bus, "settlements in flight (closed loop)", "settlements per second")
    figure.tight_layout()
    return figure


def latency_cdf(results: list[Result]) -> Figure:
    figure, panels = _panels(results, "Latency, submit to signed final status, at the highest load")
    busiest = {
        key: max(series, key=lambda r: (r.run.load.concurrency or 0, r.run.load.rate_per_s or 0))
        for key, series in _series(results)
    }
    for (bus, kind, path, _per_request), result in busiest.items():
        ordered = sorted(result.latencies_ms)
        panels[bus].plot(
            ordered,
            [(index + 1) / len(ordered) for index in range(len(ordered))],
            **_look(kind, path, result.run.load.label),
        )
    ticks = _latency_ticks(
        min(min(r.latencies_ms) for r in busiest.values()), max(max(r.latencies_ms) for r in busiest.values())
    )
    for bus, axes in panels.items():
        axes.set_xscale("log")
        _plain_x(axes, ticks)
        axes.set_ylim(0, 1)
        _label(axes, bus, "latency (ms)", "fraction of settlements")
    figure.tight_layout()
    return figure


def _latency_ticks(low_ms: float, high_ms: float) -> list[float]:
    """Plain values at 1-2-5 steps (finer over a narrow range, coarser over a wide one)
    from just below low to just above high."""
    steps = next(steps for decades, steps in STEPS_BY_DECADES if math.log10(high_ms / low_ms) < decades)
    ticks = [
        step * 10.0**decade
        for decade in range(math.floor(math.log10(low_ms)), math.ceil(math.log10(high_ms)) + 1)
        for step in steps
    ]
    below = max((t for t in ticks if t <= low_ms), default=ticks[0])
    above = min((t for t in ticks if t >= high_ms), default=ticks[-1])
    return [t for t in ticks if below <= t <= above]


def _plain_x(axes, ticks: Sequence[float]) -> None:
    """Ticks at these values only, labelled as plain numbers, and a little room beyond."""
    axes.xaxis.set_major_locator(FixedLocator(ticks))
    axes.xaxis.set_major_formatter(PLAIN)
    axes.xaxis.set_minor_locator(NullLocator())
    axes.xaxis.set_minor_formatter(NullFormatter())
    if ticks:
        axes.set_xlim(ticks[0] / X_ROOM, ticks[-1] * X_ROOM)


def _look(kind: str, path: str, load: str = "") -> dict:
    label = f"{NAMES[kind]} {path}-ledger" + (f", {load}" if load else "")
    return {"color": COLOURS[kind], "linestyle": STYLES[path], "label": label}


def _series(results: list[Result]):
    """The runs of each (bus, kind, path, settlements to a request), in the order they ran."""

    def key(r: Result) -> tuple[str, str, str, int]:
        return r.run.system, r.run.kind, r.run.path, r.run.load.per_request

    for one in dict.fromkeys(key(r) for r in results):
        yield one, [r for r in results if key(r) == one]


def _panels(results: list[Result], title: str) -> tuple[Figure, dict]:
    """A figure and its panels by bus, side by side, on one y scale."""
    buses = list(dict.fromkeys(r.run.system for r in results))
    figure, axes = plt.subplots(1, len(buses), figsize=(6 * len(buses), 4.8), squeeze=False, sharey=True)
    figure.suptitle(title)
    return figure, dict(zip(buses, axes[0], strict=True))


def _label(axes, bus: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(f"{bus} bus", fontsize=10)
    axes.set_xlabel(xlabel)
    if axes.get_subplotspec().is_first_col():
        axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
