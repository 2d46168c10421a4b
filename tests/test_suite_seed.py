"""The suite's own promise: one printed seed replays a whole CI run, on however many
workers it ran (each xdist worker is its own process, with its own Hypothesis)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import os
from pathlib import Path

from hypothesis import core


def test_{n}():
    Path(os.environ["SEEDS"], "{n}").write_text(f"{{os.environ['PYTEST_XDIST_WORKER']}} {{core.global_force_seed}}")
"""


@pytest.mark.slow  # a pytest of its own, with two workers
def test_every_worker_of_a_ci_run_draws_from_the_one_seed_it_prints(tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    probe = tmp_path / "test_probe.py"
    probe.write_text("".join(PROBE.format(n=n) for n in range(8)))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-n", "2", str(probe)],
        cwd=ROOT,
        env={**os.environ, "CI": "true", "SEEDS": str(seeds)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (printed,) = re.findall(r"--hypothesis-seed=(\d+)", result.stdout)
    drawn = [path.read_text().split() for path in seeds.iterdir()]
    assert len(drawn) == 8 and {worker for worker, _ in drawn} == {"gw0", "gw1"}
    assert {seed for _, seed in drawn} == {printed}
