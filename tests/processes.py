"""Ledger services as real OS processes for service and fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from engine.world import World
from protocols.bus import BusTimeout
from protocols.bus.client import LedgerClient
from protocols.messages import QueryInfo


class LedgerProcess:
    def __init__(self, world: World, ledger_id: str, broker_url: str) -> None:
        self.world = world
        self.ledger_id = ledger_id
        self.broker_url = broker_url
        self.process: subprocess.Popen | None = None
        self.log_path = Path(world.directory) / f"{ledger_id}.log"

    def start(self) -> LedgerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "ledger", "--config", str(self.world.ledger_configs[self.ledger_id]),
             "--broker", self.broker_url], stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        return self

    async def ready(self, bus, timeout_s: float = 20.0) -> None:
        """Wait until the service answers a query over the bus."""
        client = LedgerClient(bus, self.ledger_id, self.world.registry.get(self.ledger_id).public_key,
                              timeout_s=0.5, attempts=1)
        with trio.fail_after(timeout_s):
            while True:
                assert self.process.poll() is None, f"{self.ledger_id} exited: {self.log_path.read_text()[-2000:]}"
                try:
                    await client.query(QueryInfo(client.next_query_id(), self.ledger_id))
                    return
                except BusTimeout:
                    await trio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.terminate()
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
