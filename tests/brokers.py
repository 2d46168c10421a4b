"""Brokers other than Mosquitto that speak MQTT 3.1.1, each started on free loopback ports
for one test: the bus must hold on them too (docs/DEPLOY.md, "What Lockstep needs of a
broker")."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from engine.world.broker import free_port


class NatsServer:
    """A nats-server with JetStream (its MQTT support keeps sessions and QoS 1 messages
    there) and an MQTT listener."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port, self.mqtt_port = free_port(), free_port()
        self.config = directory / "nats.conf"
        self.config.write_text(
            f'server_name: "lockstep-{self.port}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            "max_payload: 2097152\n"  # above a batch of 1 MiB and its topic
            f'jetstream {{ store_dir: "{directory / "jetstream"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n"
        )
        self.log = directory / "nats.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def start(self) -> NatsServer:
        """Start it (again, after a kill: JetStream keeps its state on disk) and wait
        until it listens for MQTT."""
        program = shutil.which("nats-server") or "/usr/sbin/nats-server"
        assert Path(program).exists(), "nats-server is not installed (.ci/run installs it: apt-get install nats-server)"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([program, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        _listening(self.process, self.mqtt_port, self.log, 15)
        return self

    def stop(self) -> None:
        """Stop it, or reap it if it was killed."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        if self.process is not None:
            self.process.wait(timeout=10)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()


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
            _listening(self.process, self.mqtt_port, self.log, 60)
        except AssertionError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # all gone already
            os.killpg(self.process.pid, signal.SIGTERM)  # the script, Erlang and its helpers
        self.process.wait(timeout=30)


def _listening(process: subprocess.Popen, port: int, log: Path, timeout_s: float) -> None:
    """Wait until the broker listens for MQTT on `port`; an AssertionError with the end of
    its log if it exits or is too slow."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"no MQTT listener on port {port} within {timeout_s:g} s: {log.read_text()[-2000:]}")
