"""A local Mosquitto broker with the settings Lockstep needs, for tests, the demo and
the benchmark: `lockstep broker` runs one in the foreground.

Why these settings (docs/PROTOCOL.md §16 says more):
- `set_tcp_nodelay true`: without it Nagle's algorithm meets delayed ACKs and a QoS 1
  request/response takes about 88 ms instead of 0.15 ms.
- `max_queued_messages` raised from 1000: Mosquitto drops QoS 1 messages to a
  subscriber whose queue is full; a ledger under load is such a subscriber. The
  protocol survives drops anyway (deadlines, retries, idempotency), but should not
  need to in normal operation.
- `max_inflight_messages 0`: no cap on unacknowledged QoS 1 messages per client, so
  pipelined requests are not held back one window at a time."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

CONFIG = """\
listener {port} {host}
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 1000000
max_inflight_messages 0
max_packet_size 1048576
persistence false
sys_interval {sys_interval_s}
log_dest stderr
log_type error
log_type warning
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def mosquitto_path() -> str:
    path = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
    if path is None:
        raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return path


class Broker:
    """A Mosquitto process on a loopback port, with our config; stop() ends it."""

    def __init__(self, directory: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 sys_interval_s: int = 0) -> None:
        """`sys_interval_s` > 0 makes the broker publish its counters under $SYS that often
        (the benchmark reads messages received from there)."""
        self.host = host
        self.port = port or free_port(host)
        self.config_path = Path(directory) / f"mosquitto-{self.port}.conf"
        self.config_path.write_text(CONFIG.format(port=self.port, host=host, sys_interval_s=sys_interval_s))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Broker:
        self.process = subprocess.Popen([mosquitto_path(), "-c", str(self.config_path)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.process.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
