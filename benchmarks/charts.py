"""The benchmark's two charts, as PNG files: throughput against concurrency, and the
latency distribution of cross-ledger against same-ledger settlement."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no screen needed

import matplotlib.pyplot as plt  # noqa: E402

from .runner import Result  # noqa: E402


def draw(results: list[Result], out: Path) -> list[Path]:
    return [_throughput(results, out / "throughput.png"), _latency_cdf(results, out / "latency_cdf.png")]


def _series(results: list[Result]):
    keys = dict.fromkeys((r.run.bus, r.run.kind, r.run.path) for r in results)
    for key in keys:
        yield key, [r for r in results if (r.run.bus, r.run.kind, r.run.path) == key]


def _throughput(results: list[Result], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(8, 5))
    for (bus, kind, settle_path), series in _series(results):
        closed = sorted((r for r in series if r.run.load.concurrency), key=lambda r: r.run.load.concurrency)
        if closed:
            axes.plot([r.run.load.concurrency for r in closed], [r.throughput_per_s for r in closed],
                      marker="o", linestyle="-" if settle_path == "cross" else "--",
                      label=f"{kind.upper()} {settle_path}-ledger, {bus}")
    axes.set_xscale("log", base=2)
    return _save(figure, axes, path, "Throughput: cross-ledger HTLC against same-ledger settlement",
                 "settlements in flight (closed loop)", "settlements per second")


def _latency_cdf(results: list[Result], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(8, 5))
    for (bus, kind, settle_path), series in _series(results):
        busiest = max(series, key=lambda r: r.run.load.concurrency or 0)
        ordered = sorted(busiest.latencies_ms)
        fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]
        axes.plot(ordered, fractions, linestyle="-" if settle_path == "cross" else "--",
                  label=f"{kind.upper()} {settle_path}-ledger, {bus}, {busiest.run.load.label}")
    axes.set_xscale("log")
    return _save(figure, axes, path, "Latency distribution: cross-ledger against same-ledger",
                 "latency, submit to signed final status (ms)", "fraction of settlements")


def _save(figure, axes, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
