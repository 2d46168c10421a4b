"""`lockstep bench --profile`: where each service process spends its CPU during a run,
sampled from outside by py-spy while the run is measured, and only then: neither the
set-up nor the checks after the run are in it, and nothing in the services changes.

A profile is each process's functions by the share of its samples taken in them (self):
what a change must make cheaper to lower that process's CPU. py-spy counts a sample
only when the kernel shows the process running or ready to run, so a process asleep (its
event loop waiting for a message, a commit waiting for the disk) is left out, while one
woken and waiting for a core counts where it woke, mostly in the event loop's poll. Time
in a C call (OpenSSL verifying, SQLite writing a commit) counts in the Python function
that made the call."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import attrs
import trio

from protocols.failures import ExpectedFailure

RATE_PER_S = 250
TOP = 15  # functions kept per process
STARTED_S_MAX = 20.0  # py-spy attaches in well under a second
STOPPED_S_MAX = 30.0
OURS = ("protocols/", "ledgers/", "engine/", "benchmarks/")


@attrs.frozen
class Profile:
    """One process's samples in one run, and its functions that took the most of them."""

    samples: int
    top: tuple[tuple[str, float], ...]  # (function, share of the samples in %), most first

    def summary(self) -> dict:
        return {"samples": self.samples, "self_pct": [[function, pct] for function, pct in self.top]}


def sampler_path() -> str:
    """py-spy's executable, or a failure that says how to get it."""
    path = shutil.which("py-spy")
    if path is None:
        raise ExpectedFailure("--profile", "needs py-spy: pip install -e '.[profile]'")
    return path


class Sampling:
    """py-spy on each of `pids` (service name -> pid), from `start` to `stop`."""

    def __init__(self, folder: Path, label: str, pids: dict[str, int]) -> None:
        self.folder, self.label, self.pids = folder, label, pids
        self._spies: dict[str, subprocess.Popen] = {}

    def raw_path(self, name: str) -> Path:
        return self.folder / f"profile-{self.label}-{name}.txt"

    async def start(self) -> None:
        """Once every process is being sampled: the run may begin."""
        executable = sampler_path()
        for name, pid in self.pids.items():
            self._spies[name] = subprocess.Popen(
                [executable, "record", "--pid", str(pid), "--rate", str(RATE_PER_S), "--nonblocking"]
                + ["--format", "raw", "--output", str(self.raw_path(name))],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        with trio.move_on_after(STARTED_S_MAX):
            for name, spy in self._spies.items():
                await trio.to_thread.run_sync(_started, spy, name)
            return
        await self.stop()
        raise ExpectedFailure("--profile", f"py-spy did not start sampling within {STARTED_S_MAX:g} s")

    async def stop(self) -> dict[str, Profile]:
        for spy in self._spies.values():
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
        profiles = {}
        for name, spy in self._spies.items():
            await trio.to_thread.run_sync(spy.wait, STOPPED_S_MAX)
            if self.raw_path(name).exists():
                profiles[name] = read(self.raw_path(name))
        self._spies.clear()
        return profiles


def _started(spy: subprocess.Popen, name: str) -> None:
    """Wait for py-spy's word that it samples; its last words if it stopped instead."""
    assert spy.stdout is not None
    said = []
    for line in spy.stdout:
        if "Sampling process" in line:
            return
        said.append(line.strip())
    reason = next((line for line in said if line.startswith("Error")), said[-1] if said else "no output")
    raise ExpectedFailure("--profile", f"py-spy could not sample {name}: {reason}")


def read(raw: Path) -> Profile:
    """py-spy's raw output (one `frame;frame;... count` line per stack, the innermost
    frame last) as the functions the samples were taken in."""
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            leaves[_function(stack.rsplit(";", 1)[-1])] += int(count)
    samples = sum(leaves.values())
    top = tuple((function, round(100 * n / samples, 1)) for function, n in leaves.most_common(TOP))
    return Profile(samples, top)


def _function(frame: str) -> str:
    """`name (path:line)` as `name (file)`: the function, not the line the sample hit,
    its file from the package on (`trio/_core/_run.py`, `ledgers/ledger.py`)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for root in ("site-packages/", "/lib/python3"):
        if root in path:
            path = path.split(root, 1)[1]
            path = path.split("/", 1)[1] if root == "/lib/python3" else path
            break
    else:
        for ours in OURS:
            if ours in path:
                path = ours + path.split(ours, 1)[1]
                break
    return f"{name} ({path})"


def text(command: str, profiles: dict[str, dict[str, Profile]]) -> str:
    """The profiles as a person reads them: per run, per process, its top functions."""
    lines = [f"# {command}", "# each process's functions by the share of its on-core samples taken in them (self)"]
    for label, by_process in profiles.items():
        for name, profile in by_process.items():
            if not profile.samples:  # a ledger the run's settlements do not use
                continue
            lines += ["", f"{label}  {name}  ({profile.samples} samples)"]
            lines += [f"  {pct:5.1f}%  {function}" for function, pct in profile.top]
    return "\n".join(lines) + "\n"
