"""Lockstep services as real OS processes, for service and fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from engine.world import World
from protocols.bus import BusTimeout, service_of_coordinator
from protocols.bus.client import LedgerClient
from protocols.messages import QueryInfo, QuerySettlement
from protocols.signing import unsigned


class ServiceProcess:
    """`lockstep COMMAND --config FILE --broker URL` as a child process, logging to a file."""

    def __init__(self, world: World, command: str, party: str, broker_url: str) -> None:
        self.world = world
        self.command = command
        self.party = party
        self.broker_url = broker_url
        self.process: subprocess.Popen | None = None
        self.log_path = Path(world.directory) / f"{command}-{party}.log"

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", self.command, "--config",
                 str(self.world.ledger_configs[self.party]), "--broker", self.broker_url],
                stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    async def ready(self, bus, timeout_s: float = 20.0) -> None:
        """Wait until the service answers over the bus."""
        with trio.fail_after(timeout_s):
            while True:
                assert self.process.poll() is None, f"{self.party} exited: {self.log_path.read_text()[-2000:]}"
                try:
                    await self._ping(bus)
                    return
                except BusTimeout:
                    await trio.sleep(0.05)

    async def _ping(self, bus) -> None:
        if self.command == "ledger":
            client = LedgerClient(bus, self.party, self.world.registry.get(self.party).public_key,
                                  timeout_s=0.5, attempts=1)
            await client.query(QueryInfo(client.next_query_id(), self.party))
        else:
            query = unsigned(QuerySettlement("ping", self.party, "ping")).encode()
            await bus.request(service_of_coordinator(self.party), query, timeout_s=0.5)

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

