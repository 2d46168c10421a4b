"""Fixtures every test module may use: a world on disk, a ledger harness, and a real
Mosquitto on a free loopback port (started here, stopped at the end)."""

import pytest

from engine.broker import Broker
from tests.harness import harness, world  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with Broker(tmp_path_factory.mktemp("broker")) as running:
        yield running
