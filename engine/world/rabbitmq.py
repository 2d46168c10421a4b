"""A RabbitMQ node with its MQTT plugin, as the tests and `lockstep chaos --broker-kind
rabbitmq` run it: a node of its own (name, ports, database, Erlang cookie) beside any the
machine runs, anonymous MQTT logins allowed on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from protocols.failures import ExpectedFailure

from .broker import free_port
from .nats import listening

PROGRAM = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's /usr/sbin one would run it as user rabbitmq
START_TIMEOUT_S = 60


class RabbitMQNode:
    """A RabbitMQ node of its own (name, ports, database, cookie: beside the machine's own
    node) with the MQTT plugin enabled and anonymous MQTT logins allowed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port, self.mqtt_port, self.dist_port = free_port(), free_port(), free_port()
        (directory / "home").mkdir()
        (directory / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
        )
        self.env = {
            **os.environ,
            "HOME": str(directory / "home"),  # its own Erlang cookie
            "RABBITMQ_NODENAME": f"lockstep-{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(directory / "pid"),
            # no scheduler spinning while idle: the other tests share these cores
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        }
        self.log = directory / "rabbitmq.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def start(self) -> RabbitMQNode:
        """Start it and wait until it listens for MQTT: about 10 s here."""
        if not Path(PROGRAM).exists():
            raise ExpectedFailure(f"RabbitMQ {PROGRAM}", "not installed (apt-get install rabbitmq-server)")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [PROGRAM], stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        try:
            listening(self.process, self.mqtt_port, self.log, START_TIMEOUT_S)
        except ExpectedFailure:
            self.stop()
            raise
        return self

    @property
    def server_pid(self) -> int:
        """The Erlang VM's process, which does the work: the script's child."""
        assert self.process is not None, "not started"
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0]) if children else pid

    def stop(self) -> None:
        """Stop the script, Erlang and its helpers (its process group)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):  # all gone already
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)

    def __enter__(self) -> RabbitMQNode:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
