"""Fixtures every test module may use: a world on disk, a ledger harness, and a real
Mosquitto on a free loopback port (started here, stopped at the end). And the Hypothesis
profiles, chosen here before any test module is imported (a module's own `settings(...)`
inherits what it does not set from the profile loaded at that moment).

Two profiles, the same draws in both; neither has a time limit:

- `ci`, when CI=true (`bash .ci/run`): no example database (a CI machine starts clean, and a
  failure must be reproducible from its log alone). Every run draws anew (not derandomized:
  a fixed draw finds nothing new), from one seed chosen per run and printed at the end, so
  that `CI=true python3 -m pytest --hypothesis-seed=N` replays the whole run, including
  the fuzzers that send many examples to one ledger (which a single example's blob cannot
  replay: the ledger's state comes from the examples before it).
- `dev`, otherwise: the local database in .hypothesis/, so that a failure found by chance
  comes back first on the next run until it is fixed. Such a replay is a real failure,
  not a stale one (an example that passes again is dropped from the database); the fix
  is to keep it as an explicit `@example` and fix its cause, never to delete the
  database. To tell a replayed failure from one this run drew, run once with
  `--hypothesis-profile=ci`, which reads no database.

No deadline (Hypothesis' default: 200 ms per example) and no `too_slow` health check: both
measure wall-clock time, which on a busy 2-core machine says how busy it is, not whether
the code is right. `print_blob` shows how to replay a single failing example."""

import os
import secrets

import pytest
from hypothesis import HealthCheck, settings

from engine.world.broker import Broker
from tests.harness import harness, postgres, world  # noqa: F401  (fixtures)

_UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "print_blob": True}
settings.register_profile("dev", **_UNTIMED)
settings.register_profile("ci", database=None, **_UNTIMED)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """In CI, a seed for the whole run when none was given (Hypothesis' own plugin reads
    the option after this): drawn once, by the process that runs the session, and handed
    to each of its xdist workers, so that the one seed printed replays every test."""
    profile = config.getoption("hypothesis_profile") or settings.get_current_profile_name()
    if profile == "ci" and config.getoption("hypothesis_seed") is None:
        handed = getattr(config, "workerinput", {}).get("hypothesis_seed")
        config.option.hypothesis_seed = handed or str(secrets.randbelow(2**32))


def pytest_collection_modifyitems(items):
    """The slow tests first (each file's in their order), the quick ones after: the
    workers then finish together, the quick tests filling in behind the long waits,
    rather than one worker left with a chaos run at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`-n logical`: one worker more than the cores. A third of the suite's time is tests
    waiting on the real clock (faults struck against it, processes starting, commands
    waiting out their deadlines), each leaving its worker's core idle meanwhile."""
    return len(os.sched_getaffinity(0)) + 1


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["hypothesis_seed"] = node.config.getoption("hypothesis_seed")


def pytest_terminal_summary(terminalreporter, config):
    seed = config.getoption("hypothesis_seed")
    profile = settings.get_current_profile_name()
    replay = f"CI=true python3 -m pytest --hypothesis-seed={seed}" if profile == "ci" else None
    terminalreporter.write_line(
        f"hypothesis profile {profile!r}, seed {seed or 'random per test'}"
        + (f"; replay this run: {replay}" if replay else "")
    )


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with Broker(tmp_path_factory.mktemp("broker")) as running:
        yield running
