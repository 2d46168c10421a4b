"""Lockstep services as real OS processes: for the service and fault tests and for
`lockstep chaos --bus mqtt`, which kill them with SIGKILL and start them again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from protocols.bus import BusTimeout, service_of_coordinator, service_of_intermediary
from protocols.bus.client import LedgerClient
from protocols.messages import QueryInfo, QuerySettlement
from protocols.signing import unsigned

from .layout import World

PING_EVERY_S = 0.05  # while waiting for a service to answer: a new ping this often,
PING_TIMEOUT_S = 0.5  # each waiting this long, so a late answer is not missed


class ServiceExited(AssertionError):
    """The service's process ended while it was awaited (a start-up refused, say)."""


class ServiceProcess:
    """`lockstep COMMAND --config FILE --broker URL [ARGS]` as a child process, logging to a
    file; `party` names the config, ARGS are `args`."""

    def __init__(self, world: World, command: str, party: str, broker_url: str, args: tuple[str, ...] = ()) -> None:
        self.world = world
        self.command = command
        self.party = party
        self.broker_url = broker_url
        self.args = args
        self.process: subprocess.Popen | None = None
        self._log_from = 0  # where this start's lines begin in the log
        self.log_path = Path(world.directory) / f"{command}-{party}.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ServiceProcess:
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engine.cli",
                    self.command,
                    "--config",
                    str(self.world.ledger_configs[self.party]),
                    "--broker",
                    self.broker_url,
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    async def ready(self, bus, timeout_s: float = 20.0) -> Any:
        """Wait until the service answers over the bus; return its first answer. Pings
        overlap (one every PING_EVERY_S), so the wait ends within a ping of the
        service's first answer, not a timeout later: start-up times measured with this
        are the service's own."""
        answers: list[object] = []
        with trio.fail_after(timeout_s):
            async with trio.open_nursery() as pings:

                async def ping() -> None:
                    try:
                        answers.append(await self._ping(bus))
                    except BusTimeout:
                        return
                    pings.cancel_scope.cancel()

                while self.running:
                    pings.start_soon(ping)
                    await trio.sleep(PING_EVERY_S)
                pings.cancel_scope.cancel()
        if not answers:
            raise ServiceExited(f"{self.party} exited: {self.log_path.read_text(errors='replace')[-2000:]}")
        if "--standby" in self.args:
            await self._connected(timeout_s)
        return answers[0]

    async def _connected(self, timeout_s: float) -> None:
        """A coordinator process standing by: its coordinator may answer from another
        process that took it over, so wait for this one's own word that it is on the
        bus (it stands by, or serves), which it logs once connected."""
        with trio.fail_after(timeout_s):
            while self.running:
                with self.log_path.open("rb") as log:
                    log.seek(self._log_from)
                    since = log.read().decode(errors="replace")
                if "standing by" in since or " up on " in since:
                    return
                await trio.sleep(PING_EVERY_S)
        raise ServiceExited(f"{self.party} exited: {self.log_path.read_text(errors='replace')[-2000:]}")

    async def _ping(self, bus) -> object:
        """A ledger's info (its journal height among it); a coordinator's refusal of an
        unknown settlement, an intermediary's of a message not for it: each shows it serves."""
        if self.command == "ledger":
            client = LedgerClient(
                bus, self.party, self.world.registry[self.party].public_key, timeout_s=PING_TIMEOUT_S, attempts=1
            )
            return await client.query(QueryInfo(client.next_query_id(), self.party))
        query = unsigned(QuerySettlement("ping", self.party, "ping")).encode()
        if self.command == "intermediary":  # it answers with a signed refusal
            return await bus.request(service_of_intermediary(self.party), query, timeout_s=PING_TIMEOUT_S)
        return await bus.request(service_of_coordinator(self.party), query, timeout_s=PING_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything."""
        assert self.process is not None, "killed before it was started"
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
