"""Brokers other than Mosquitto that speak MQTT 3.1.1, each started on free loopback ports
for one test: the bus must hold on them too (docs/DEPLOY.md, "What Lockstep needs of a
broker")."""

from __future__ import annotations

import shutil
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

    def __enter__(self) -> NatsServer:
        program = shutil.which("nats-server") or "/usr/sbin/nats-server"
        assert Path(program).exists(), "nats-server is not installed (.ci/run installs it: apt-get install nats-server)"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([program, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nats-server did not listen for MQTT within 15 s: {self.log.read_text()[-2000:]}")

    def __exit__(self, *_) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)
