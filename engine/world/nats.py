"""nats-server as Lockstep's tests and `lockstep chaos --broker-cluster nats:N` run it: one
server, or a cluster of them that survives the loss of a node (docs/DEPLOY.md §7).

NATS's MQTT support keeps its state in JetStream streams: sessions, QoS 1 messages and
retained messages; each QoS 1 subscription is a JetStream consumer. In a cluster each
stream and each consumer is a Raft group, replicated on three nodes, so that with one
node lost the others still hold a quorum; a group whose leader was lost elects another
(nats-server 2.9 waits 4 to 9 s for that). So a cluster's clients take `qos=0` in their
URLs: at QoS 0 no message and no subscription goes through JetStream, only a connection
(its session record), and a node's loss stalls them only if it led the sessions' stream.
At QoS 1, on nats-server 2.9, every QoS 1 message waits on the messages' stream leader
and every subscription on a new consumer group, which with a node down often takes
longer than the 4 s NATS allows it: subscriptions are refused again and again, and a
client with many of them (the chaos supervisor, say) did not get through in a minute.
Each node has its own JetStream store, its own `server_name` and routes to every node."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from protocols.bus.address import at_qos
from protocols.failures import ExpectedFailure

from .broker import NotInstalled

MAX_PAYLOAD_BYTES = 2 * 1024 * 1024  # above a batch of 1 MiB and its topic
REPLICAS_MAX = 3  # of each MQTT stream: a quorum survives one node lost
CLUSTER_QOS = 0  # what a cluster's clients publish and subscribe at: see the module's doc
START_TIMEOUT_S = 15.0  # for a server to listen for MQTT
SERVING_TIMEOUT_S = 60.0  # for a cluster's node to serve: its JetStream current, MQTT clients accepted


def _program() -> str:
    path = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(path).exists():
        raise NotInstalled("nats-server", "not installed (Debian: apt-get install nats-server)")
    return path


class NatsServer:
    """A nats-server with JetStream and an MQTT listener, on free loopback ports, its
    config, store and log in `directory`; in a cluster, a node routed to the others
    (`cluster`: its own route port and every node's)."""

    def __init__(self, directory: Path, cluster: tuple[int, list[int]] | None = None) -> None:
        self.directory = directory
        self.port, self.mqtt_port, self.http_port = _free_port(), _free_port(), _free_port()
        self.config = directory / "nats.conf"
        mqtt = f"listen: 127.0.0.1:{self.mqtt_port}"
        text = (
            f'server_name: "lockstep-{self.port}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"  # /healthz
            f"max_payload: {MAX_PAYLOAD_BYTES}\n"
            f'jetstream {{ store_dir: "{directory / "jetstream"}" }}\n'
        )
        if cluster is None:
            text += f"mqtt {{ {mqtt} }}\n"
        else:
            route_port, route_ports = cluster
            routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in route_ports)
            text += (
                f"mqtt {{ {mqtt}, stream_replicas: {min(len(route_ports), REPLICAS_MAX)} }}\n"
                f'cluster {{ name: "lockstep", listen: 127.0.0.1:{route_port}, routes: [{routes}] }}\n'
            )
        self.config.write_text(text)
        self.log = directory / "nats.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> NatsServer:
        """Start it (again, after a kill: JetStream keeps its state on disk) and wait
        until it listens for MQTT."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([_program(), "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        listening(self.process, self.mqtt_port, self.log, START_TIMEOUT_S)
        return self

    def kill(self) -> None:
        """SIGKILL it, and reap it."""
        assert self.process is not None and self.running, f"nats-server {self.url} is not running"
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """Stop it, or reap it if it was killed."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        if self.process is not None:
            self.process.wait(timeout=10)

    def current(self) -> bool:
        """Whether its JetStream is current: in a cluster, a member of its metadata group,
        which has a leader. (Not every stream and consumer caught up, as a plain /healthz
        asks: on nats-server 2.9 an idle consumer's replica on a restarted node may stay
        behind for minutes.)"""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/healthz?js-server-only=true", timeout=1
            ) as answer:
                return answer.status == 200
        except OSError:
            return False

    def accepts(self) -> bool:
        """Whether it accepts an MQTT client. The first one sets up its MQTT state (in a
        cluster, a durable consumer of its own), which, done now, a client moving here
        after another node's loss need not wait for."""
        return _mqtt_accepts(self.mqtt_port)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()


class NatsCluster:
    """`size` nats-servers routed into one cluster, each with JetStream (its own store) and
    an MQTT listener, the MQTT streams replicated on three nodes, so that it serves on
    while any one node is down. `url` lists every node's MQTT URL, for clients at QoS 0;
    `kill(i)` SIGKILLs node i, `start(i)` starts it again and waits until it serves."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        assert size >= 3, "a cluster that survives a node's loss needs three nodes"
        route_ports = [_free_port() for _ in range(size)]
        self.nodes = []
        for i, route_port in enumerate(route_ports):
            (directory / f"nats-{i}").mkdir(parents=True, exist_ok=True)
            self.nodes.append(NatsServer(directory / f"nats-{i}", (route_port, route_ports)))

    @property
    def url(self) -> str:
        return self.url_from(0)

    def url_from(self, first: int) -> str:
        """Every node's URL, node `first`'s first, round robin: where a client tries first.
        Clients given different firsts spread over the nodes."""
        urls = [at_qos(node.url, CLUSTER_QOS) for node in self.nodes]
        first %= len(urls)
        return ",".join(urls[first:] + urls[:first])

    def start(self, i: int | None = None) -> NatsCluster:
        """Start node i (every node if None) and wait until the cluster serves: each node
        started current, and every node accepting MQTT clients."""
        started = self.nodes if i is None else [self.nodes[i]]
        for node in started:
            node.start()
        deadline = time.monotonic() + SERVING_TIMEOUT_S
        while not (all(node.current() for node in started) and all(node.accepts() for node in self.nodes)):
            if time.monotonic() > deadline:
                raise ExpectedFailure(f"NATS cluster {self.url}", f"not serving within {SERVING_TIMEOUT_S:g} s")
            time.sleep(0.1)
        return self

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def down(self) -> list[int]:
        """The nodes not running."""
        return [i for i, node in enumerate(self.nodes) if not node.running]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()


def _free_port() -> int:
    """A free loopback port below the ephemeral range, so that no connection going out
    (a node's routes, tried every second while another is down) takes it between our
    choosing it and a node (re)starting on it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(low // 2, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _mqtt_accepts(port: int) -> bool:
    """Whether the MQTT 3.1.1 broker on `port` accepts a clean session's CONNECT. A client
    id of each port's own: on NATS one id connecting to node after node is a session taken
    over, which it delays."""
    client_id = f"lockstep-probe-{port}".encode()
    connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(bytes([0x10, len(connect)]) + connect)
            accepted = sock.makefile("rb").read(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
            sock.sendall(b"\xe0\x00")  # DISCONNECT
            return accepted
    except OSError:
        return False


def listening(process: subprocess.Popen, port: int, log: Path, timeout_s: float) -> None:
    """Wait until a broker listens for MQTT on `port`; an ExpectedFailure with the end of
    its log if it exits or is too slow."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ExpectedFailure(f"broker on port {port}", f"exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    said = log.read_text()[-2000:]
    raise ExpectedFailure(f"broker on port {port}", f"no MQTT listener within {timeout_s:g} s: {said}")
