"""Places a round trip apart, for `lockstep bench --rtt`: the broker, each ledger and each
coordinator in a network namespace of its own, the load generator in its own (the one it
runs in), all joined through one process, the wire, that holds every packet for the delay
between its two places. The packets and TCP are the kernel's, in each namespace; only the
delay is ours.

Why not `tc qdisc ... netem`: this machine's kernel is built without it
(CONFIG_NET_SCH_NETEM is not set, and it loads no modules). So the wire does in user
space what netem would do on each link: every place has a TUN device, and the wire reads
each packet a place sends from its device and writes it to the destination's device once
the delay between the two has passed. It adds its own cost, some tens of µs a packet,
which a run at RTT 0 shows.

The model is a star with the broker at its centre: every other place's link to the broker
has a one-way delay d. Services meet only on the bus, so a request from one service to
another crosses two links (2 d) and its answer two more: the round trip from service to
service through the broker, the RTT asked for and reported, is 4 d. Every round trip of a
settlement then costs one RTT, whichever ledgers it touches: the simplest model whose
figures read as round trips, and the worst case of any in which some services share a
country."""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import ipaddress
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from protocols.failures import ExpectedFailure

# RFC 2544's range for benchmarking networks, routed nowhere; a /24 of it per harness, so
# that two at once (a test beside a bench) share no address.
NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
SUBNET_PREFIX = 24
NAMESPACE_PREFIX = "lockstep-"  # then the harness's pid: lockstep-4242-csd
NAMESPACES = Path("/run/netns")
HERE = "here"  # the place of the process that opens the places: the load generator's
# The coordinator waits SUBMIT_TIMEOUT_S (0.5 s) for one attempt at a ledger request and
# then sends it again: past half of that, a request would go again before its answer came.
RTT_MS_MAX = 250.0
PACKET_BYTES_MAX = 65_535
PACKETS_QUEUED_MAX = 100_000  # on the wire at once; more are dropped, as netem's limit does
WIRE_READY_S_MAX = 10.0  # from its start to its devices made
WIRE_STOP_S_MAX = 5.0  # from its stdin closed to its end
# select() wakes the wire some 120 µs after the time asked here (a VM's timers): it asks to
# be woken this much early and sends what is due by then, so packets go on time on average.
WAKE_LATE_S = 0.000_1

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def _ip() -> str:
    path = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if Path(p).exists()), None)
    if path is None:
        raise ExpectedFailure("ip", "not installed (Debian: apt-get install iproute2)")
    return path


def ip(*args: str) -> None:
    """`ip ARGS`; its complaint, such as that we are not root, as an expected failure."""
    done = subprocess.run([_ip(), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ExpectedFailure(f"ip {' '.join(args)}", done.stderr.strip() or f"exit status {done.returncode}")


def check_rtt(rtt_ms: float) -> None:
    if not 0 <= rtt_ms <= RTT_MS_MAX:
        raise ExpectedFailure(f"--rtt {rtt_ms:g}", f"must be from 0 to {RTT_MS_MAX:g} ms")


class Loopback:
    """Every process on this machine's loopback, as without --rtt."""

    def host(self, place: str) -> str:
        return "127.0.0.1"

    def prefix(self, place: str) -> tuple[str, ...]:
        return ()


class Places:
    """`names` each in a network namespace of its own, and HERE, this process's own;
    `centre` at the middle of the star (no delay on its link), every other a round trip of
    `rtt_ms` from another through it. A context manager: on leaving, even by an error or
    Ctrl-C, the wire stops (its devices go with it) and the namespaces are deleted."""

    def __init__(self, names: Sequence[str], centre: str, rtt_ms: float) -> None:
        check_rtt(rtt_ms)
        assert centre in names and HERE not in names, (centre, names)
        self.names = list(names)
        pid = os.getpid()
        subnet = list(NETWORK.subnets(new_prefix=SUBNET_PREFIX))[pid % 2 ** (SUBNET_PREFIX - NETWORK.prefixlen)]
        places = [*self.names, HERE]
        self._addresses = dict(zip(places, (str(host) for host in subnet.hosts()), strict=False))
        self._plan = [
            {
                "device": f"ls{pid}-{index}",
                "namespace": self.namespace(name) if name != HERE else None,
                "address": f"{self._addresses[name]}/{SUBNET_PREFIX}",
                "link_ms": 0.0 if name == centre else rtt_ms / 4,
            }
            for index, name in enumerate(places)
        ]
        self._wire: subprocess.Popen | None = None
        self._made: list[str] = []

    def namespace(self, name: str) -> str:
        return f"{NAMESPACE_PREFIX}{os.getpid()}-{name}"

    def host(self, name: str) -> str:
        return self._addresses[name]

    def prefix(self, name: str) -> tuple[str, ...]:
        """What a command runs under to run in the place `name`."""
        return (_ip(), "netns", "exec", self.namespace(name))

    @property
    def wire_pid(self) -> int:
        assert self._wire is not None, "the places are not open"
        return self._wire.pid

    def __enter__(self) -> Places:
        sweep()
        try:
            for name in self.names:
                ip("netns", "add", self.namespace(name))
                self._made.append(self.namespace(name))
                ip("-n", self.namespace(name), "link", "set", "lo", "up")
            self._wire = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.netem", json.dumps(self._plan)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert self._wire.stdout is not None  # piped above
            ready, _, _ = select.select([self._wire.stdout], [], [], WIRE_READY_S_MAX)
            said = self._wire.stdout.readline().decode().strip() if ready else f"not ready in {WIRE_READY_S_MAX:g} s"
            if said != "ready":
                raise ExpectedFailure("the wire between the places", said or "exited before it was ready")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the wire (it ends when its stdin does), then delete the namespaces."""
        if self._wire is not None:
            assert self._wire.stdin is not None  # piped
            self._wire.stdin.close()
            try:
                self._wire.wait(WIRE_STOP_S_MAX)
            except subprocess.TimeoutExpired:
                self._wire.kill()
                self._wire.wait()
            if self._wire.stdout is not None:
                self._wire.stdout.close()
            self._wire = None
        while self._made:
            ip("netns", "del", self._made.pop())


def sweep() -> None:
    """Delete the namespaces a harness left when it was killed (SIGKILL allows no clean-up):
    those whose pid is no longer a process. Their devices went with their wire."""
    for path in NAMESPACES.glob(f"{NAMESPACE_PREFIX}*-*"):
        pid = path.name.removeprefix(NAMESPACE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            ip("netns", "del", path.name)


# -- the wire: a process of its own, so that its cost is not the load generator's -----------------


def wire(plan: list[dict]) -> None:
    """Make each place's TUN device, tell the parent it is ready, then carry packets until
    the parent closes our stdin: each read from its source's device and written to its
    destination's after both places' link delays."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which stops us in order
    devices: dict[int, float] = {}  # fd -> its place's one-way link delay, s
    by_address: dict[bytes, int] = {}  # a place's IPv4 address -> its device's fd
    try:
        for place in plan:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", place["device"].encode(), IFF_TUN | IFF_NO_PI))
            where: tuple[str, ...] = ()
            if place["namespace"]:
                ip("link", "set", place["device"], "netns", place["namespace"])
                where = ("-n", place["namespace"])
            ip(*where, "addr", "add", place["address"], "dev", place["device"])
            ip(*where, "link", "set", place["device"], "up")
            devices[fd] = place["link_ms"] / 1000
            by_address[ipaddress.IPv4Interface(place["address"]).ip.packed] = fd
    except (OSError, ExpectedFailure) as error:
        print(f"cannot make its devices: {error}", flush=True)
        return
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    queued: list[tuple[float, int, int, bytes]] = []  # (due, order, fd, packet): a heap
    order = 0
    while True:
        timeout = max(0.0, queued[0][0] - WAKE_LATE_S - time.monotonic()) if queued else None
        readable, _, _ = select.select([stdin, *devices], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                if not os.read(stdin, 1):
                    return
                continue
            while True:
                try:
                    packet = os.read(fd, PACKET_BYTES_MAX)
                except BlockingIOError:
                    break
                to = by_address.get(packet[16:20]) if packet[0] >> 4 == 4 else None
                if to is None or len(queued) >= PACKETS_QUEUED_MAX:
                    continue  # not IPv4 to a place (IPv6 chatter, say), or the wire is full: dropped
                order += 1
                heapq.heappush(queued, (now + devices[fd] + devices[to], order, to, packet))
        now = time.monotonic()
        while queued and queued[0][0] <= now + WAKE_LATE_S:
            _, _, to, packet = heapq.heappop(queued)
            with contextlib.suppress(OSError):  # its device is going down with its namespace: lost
                os.write(to, packet)


if __name__ == "__main__":
    wire(json.loads(sys.argv[1]))
