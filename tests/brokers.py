"""Brokers other than Mosquitto that speak MQTT 3.1.1, each started on free loopback ports
for one test: the bus must hold on them too (docs/DEPLOY.md, "What Lockstep needs of a
broker"), and on a cluster of them losing a node. NATS's live in engine/world/nats.py,
since `lockstep chaos --broker-cluster` runs them too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from engine.world.broker import free_port
from engine.world.nats import NatsCluster, NatsServer, listening
from protocols.failures import ExpectedFailure

__all__ = ["NatsCluster", "NatsServer", "RabbitMQNode"]


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

    def __enter__(self) -> RabbitMQNode:
        program = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's /usr/sbin one would run it as user rabbitmq
        assert Path(program).exists(), "rabbitmq-server is not installed (.ci/run installs it)"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [program], stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        try:
            listening(self.process, self.mqtt_port, self.log, 60)
        except ExpectedFailure:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # all gone already
            os.killpg(self.process.pid, signal.SIGTERM)  # the script, Erlang and its helpers
        self.process.wait(timeout=30)
