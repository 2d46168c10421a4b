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
  pipelined requests are not held back one window at a time.

Secured mode (docs/DEPLOY.md): a password per user, an ACL, optionally TLS. Each user's
MQTT client id is its username (`use_username_as_clientid`), so nobody can take another's
client id, and the ACL, keyed by username, lets every user publish requests only under
its own id, read only the replies to it, and read the public events; a service may also
read its own requests, answer anyone and publish its own events."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from protocols.bus import decisions_topic, entries_topic, service_of_coordinator, service_of_ledger
from protocols.bus.mqtt import event_topic, reply_topic, request_topic
from protocols.failures import ExpectedFailure, file_reason, read_bytes

LISTENER = "listener {port} {host}\n"
TLS = "certfile {certfile}\nkeyfile {keyfile}\n"
OPEN = "allow_anonymous true\n"
# `user`: started as root, Mosquitto switches to this user (by default `mosquitto`) before
# it reads the password and ACL files; naming whoever started it lets them stay mode 600.
SECURED = """\
allow_anonymous false
use_username_as_clientid true
password_file {password_file}
acl_file {acl_file}
user {user}
"""
SETTINGS = """\
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


MQTT_PORT = 1883  # free in a network namespace of its own (Broker prefix)
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_TIMESTAMP = re.compile(r"^\d+: ")  # how Mosquitto starts each line it logs


def _copy_lines(source, sink) -> None:
    for line in source:
        sink.write(line.decode(errors="replace"))
        sink.flush()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class NotInstalled(ExpectedFailure, FileNotFoundError):
    """A program we run is missing (a FileNotFoundError too, for callers that probe for it)."""


def _program(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None
    )
    if path is None:
        raise NotInstalled(name, "not installed (Debian: apt-get install mosquitto)")
    return path


def mosquitto_path() -> str:
    return _program("mosquitto")


# -- secured mode: who may connect, and what each may do --------------------------------

# A username is one topic level, and ':' separates it from the hash in the password file.
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_username(username: str) -> None:
    if not USERNAME.fullmatch(username):
        raise ValueError(f"broker username {username!r}: must be 1-64 of A-Z a-z 0-9 . _ - (no ':', '/', '+', '#')")


ACL_EVERYONE = f"""\
# Lockstep broker ACL (engine/world/broker.py). A client's id is its username, the {{client_id}}
# level of its topics. Every user: publish its own requests, read its own replies, read
# the events. (Mosquitto warns that the last pattern has no %u: it is meant for all.)
pattern write {request_topic("+/+", "%u")}
pattern read {reply_topic("%u")}
pattern read {event_topic("#")}
"""


@attrs.frozen
class Account:
    """A broker user and what it may do beyond every user's rights: the services whose
    requests it reads and answers, the event topics it publishes."""

    username: str = attrs.field(validator=lambda _, __, username: check_username(username))
    serves: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()


def ledger_account(ledger_id: str) -> Account:
    """The ledger service, whose MQTT client id is `ledger-{id}` (docs/PROTOCOL.md §2)."""
    return Account(f"ledger-{ledger_id}", (service_of_ledger(ledger_id),), (entries_topic(ledger_id),))


def coordinator_accounts(coordinator_id: str) -> tuple[Account, Account]:
    """The coordinator service, which also publishes its decisions, and its stand-alone
    watchtower (which only asks)."""
    return (
        Account(
            f"coordinator-{coordinator_id}",
            (service_of_coordinator(coordinator_id),),
            (decisions_topic(coordinator_id),),
        ),
        Account(f"watchtower-{coordinator_id}"),
    )


def acl_text(accounts: Iterable[Account]) -> str:
    """Mosquitto's ACL file: the rights of every user, then each account's own."""
    blocks = [ACL_EVERYONE]
    for account in accounts:
        lines = [f"topic read {request_topic(service)}" for service in account.serves]
        if account.serves:
            lines.append(f"topic write {reply_topic('+')}")
        lines += [f"topic write {event_topic(topic)}" for topic in account.publishes]
        if lines:
            blocks.append("\n".join([f"user {account.username}", *lines]) + "\n")
    return "\n".join(blocks)


def write_password_file(path: str | Path, passwords: Mapping[str, str]) -> None:
    """Mosquitto's password file, mode 600: written in clear, then hashed in place by
    `mosquitto_passwd -U` (PBKDF2-SHA512), the format Mosquitto itself defines."""
    for username, password in passwords.items():
        check_username(username)
        if not password or "\n" in password:
            raise ValueError(f"broker password of {username!r}: must be one non-empty line")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write("".join(f"{username}:{password}\n" for username, password in passwords.items()))
    done = subprocess.run([_program("mosquitto_passwd"), "-U", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        Path(path).unlink()
        raise RuntimeError(f"mosquitto_passwd -U {path} failed: {done.stderr.strip() or done.stdout.strip()}")


def _config(
    port: int,
    host: str,
    sys_interval_s: int,
    password_file: str | Path | None,
    acl_file: str | Path | None,
    certfile: str | Path | None,
    keyfile: str | Path | None,
) -> str:
    where = f"broker {host}:{port}"
    if (password_file is None) != (acl_file is None):
        raise ExpectedFailure(where, "secured mode needs both a password file and an ACL file")
    if (certfile is None) != (keyfile is None):
        raise ExpectedFailure(where, "TLS needs both a certificate file and its key file")
    for what, path in (
        ("password file", password_file),
        ("ACL file", acl_file),
        ("certificate file", certfile),
        ("key file", keyfile),
    ):
        if path is not None:  # said here, naming the file: Mosquitto would say only that it exited
            read_bytes(f"broker {what}", path)
    text = LISTENER.format(port=port, host=host)
    if certfile and keyfile:
        text += TLS.format(certfile=Path(certfile).resolve(), keyfile=Path(keyfile).resolve())
    if password_file and acl_file:
        text += SECURED.format(
            password_file=Path(password_file).resolve(),
            acl_file=Path(acl_file).resolve(),
            user=pwd.getpwuid(os.geteuid()).pw_name,
        )
    else:
        text += OPEN
    return text + SETTINGS.format(sys_interval_s=sys_interval_s)


class Broker:
    """A Mosquitto process on a loopback port, with our config; stop() ends it."""

    def __init__(
        self,
        directory: str | Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        sys_interval_s: int = 0,
        *,
        password_file: str | Path | None = None,
        acl_file: str | Path | None = None,
        certfile: str | Path | None = None,
        keyfile: str | Path | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """`sys_interval_s` > 0 makes the broker publish its counters under $SYS that often
        (the benchmark reads messages received from there). A password file (hashed, see
        write_password_file) and an ACL file make it secured; a certificate and key file
        make its listener TLS. `prefix` is a command Mosquitto runs under, such as `ip netns
        exec NS` (benchmarks/netem.py): it then listens in a network namespace of its own,
        where MQTT's port is free and where no probe from here can check that it is."""
        self.host = host
        self.prefix = tuple(prefix)
        self.port = port or (MQTT_PORT if prefix else free_port(host))
        self.tls = certfile is not None
        self.config_path = Path(directory) / f"mosquitto-{self.port}.conf"
        text = _config(self.port, host, sys_interval_s, password_file, acl_file, certfile, keyfile)
        try:
            self.config_path.write_text(text)
        except OSError as error:
            raise ExpectedFailure(
                f"broker folder {directory}", f"cannot write its config there: {file_reason(error)}"
            ) from None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Broker:
        """Start Mosquitto and wait until it listens; an ExpectedFailure with its own
        error line if it exits first."""
        where = f"mosquitto on {self.host}:{self.port}"
        if not self.prefix:
            with socket.socket() as probe:  # taken, it would still be connected to below, as if Mosquitto were up
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, self.port))
                except OSError as error:
                    raise ExpectedFailure(where, f"cannot listen there: {error.strerror or error}") from None
        self.process = subprocess.Popen(
            [*self.prefix, mosquitto_path(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                assert self.process.stderr is not None  # piped above
                said = self.process.stderr.read().decode(errors="replace").strip().splitlines() or ["(nothing)"]
                raise ExpectedFailure(
                    where, f"exited with status {self.process.returncode}, saying: {_TIMESTAMP.sub('', said[-1])}"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ExpectedFailure(where, f"did not listen within {timeout_s:g} s")

    def serve(self, started: Callable[[], None] = lambda: None) -> int:
        """Run Mosquitto in the foreground until it ends, its log on our stderr and the
        signals it acts on (SIGTERM, SIGINT; SIGHUP reloads, SIGUSR1/2 dump) passed on;
        its exit status. `started` is called once it listens."""
        early = []  # signals that came before Mosquitto did, passed on once it runs

        def forward(signum, _) -> None:
            if self.process is None:
                early.append(signum)
            else:
                self.process.send_signal(signum)

        previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
        try:
            process = self.start().process
            assert process is not None
            started()
            for signum in early:
                process.send_signal(signum)
            copying = threading.Thread(target=_copy_lines, args=(process.stderr, sys.stderr), daemon=True)
            copying.start()
            status = process.wait()
            copying.join()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop()  # closes its stderr; ends it too, should anything above have failed
        return status if status >= 0 else 128 - status  # ended by a signal: the status a shell gives

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
