"""The bus over an MQTT 3.1.1 broker (Mosquitto), with paho-mqtt driven from trio.

paho does the protocol; trio does the waiting. We never start paho's thread: a reader
task waits for the socket to be readable and calls `loop_read`, a writer task waits
for it to be writable whenever paho has bytes queued, and a ticker calls `loop_misc`
for keep-alives. Every paho call happens in the trio thread, so callbacks hand
messages to trio channels without locks.

Topics (docs/PROTOCOL.md); routing lives in the topic, so any MQTT 3.1.1 client can
take part and no per-message properties need encoding:
    lockstep/v2/svc/{kind}/{id}/{client_id}/{correlation}   a request to a service
    lockstep/v2/reply/{client_id}/{correlation}             its reply, to that client alone
    lockstep/v2/event/{kind}/{id}/{stream}                  events, such as journal entries

All messages go at QoS 1 (or 0, if the URL says so: address.py). After the connection
drops (a broker restart, say) the bus reconnects with backoff and subscribes again;
requests in flight then time out and their callers retry with the same instruction id.
Given a cluster's nodes (address.py), it connects to the first that accepts it, in the
order given, and after losing a node (or a refusal) tries the next, round robin. Its
session is clean: each connection, to whichever node, subscribes afresh, and a connection
on which the broker refuses a subscription is dropped for the next, since a service deaf
to its requests is worse than one reconnecting.

Broker URLs, credentials and TLS: address.py. Under a secured broker (engine/world/broker.py)
the username is the client's MQTT client id and the `{client_id}` of its topics: the
broker's ACL lets it publish only requests under that id and read only the replies to
it. So a bus given a username takes it as its client id; given a password but no
username, it logs in under its client id."""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import paho.mqtt.client as paho
import trio

from ..failures import ExpectedFailure
from . import BusClosed, BusTimeout, Request
from .address import BadURL, credentials, parse_urls, tls_context
from .waiting import Waiting

log = logging.getLogger("lockstep.bus")

TOPIC_ROOT = "lockstep/v2"  # v2: services as two levels, kind/id, where v1 joined them with "."
QUEUE_LENGTH_MAX = 100_000  # messages a slow server may have waiting before we drop
CLIENT_WAITING_MAX = 10_000  # of which from any one client (waiting.py says why)
IN_FLIGHT_MAX = 65_535  # QoS 1 messages unacknowledged at once
KEEPALIVE_S = 30
RECONNECT_DELAY_S_MIN = 0.05
RECONNECT_DELAY_S_MAX = 2.0
CONNACK_S_MAX = 10.0


def request_topic(service: str, client_id: str = "+", correlation: str = "+") -> str:
    return f"{TOPIC_ROOT}/svc/{service}/{client_id}/{correlation}"


def reply_topic(client_id: str, correlation: str = "+") -> str:
    return f"{TOPIC_ROOT}/reply/{client_id}/{correlation}"


def event_topic(topic: str) -> str:
    return f"{TOPIC_ROOT}/event/{topic}"


_SVC_PREFIX = f"{TOPIC_ROOT}/svc/"


class BrokerUnreachable(ExpectedFailure):
    """The first connection to the broker failed: a wrong URL or credentials file, the
    broker not running, TLS failing, or the broker refusing us. `subject` names the
    broker or the file; for a cluster, the reason names each node and why it failed."""


class BrokerRefused(BrokerUnreachable):
    """The broker (a node of the cluster, at least) answered the first connection with a
    refusal: a wrong username or password, or none where one is required."""


class MqttBus:
    """One MQTT connection serving any number of requests, services and subscriptions.
    Use `async with MqttBus.connect(url) as bus:`, `url` a broker's or a cluster's."""

    def __init__(self, url: str, client_id: str | None = None) -> None:
        """A username, when there is one, replaces `client_id`: see the module's doc.
        Raises BrokerUnreachable for a bad URL, password file or CA file."""
        try:
            addresses = parse_urls(url)
        except BadURL as error:
            raise BrokerUnreachable(f"broker URL {error.url!r}", error.reason) from None
        try:
            username, password = credentials(addresses[0], client_id)
            context = tls_context(addresses[0]) if addresses[0].tls else None
        except ExpectedFailure as error:
            raise BrokerUnreachable(error.subject, error.reason) from None
        self._nodes = [f"{address.host}:{address.port}" for address in addresses]
        self._qos = addresses[0].qos
        self._node = 0  # the one connected to, or to try next
        self._where = f"MQTT broker {self._nodes[0]}" if len(self._nodes) == 1 else "MQTT brokers"
        self.client_id = username or client_id or f"lockstep-{secrets.token_hex(6)}"
        self._reply_filter = reply_topic(self.client_id)
        self._reply_prefix = self._reply_filter[:-1]
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311)
        if username:
            self._client.username_pw_set(username, password)
        if context:
            self._client.tls_set_context(context)
        self._client.max_inflight_messages_set(IN_FLIGHT_MAX)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_socket_open = self._on_socket_open
        self._correlations = (f"{n:x}" for n in itertools.count(1))
        self._pending: dict[str, trio.MemorySendChannel] = {}
        self._routes: dict[str, Waiting] = {}  # service -> its waiting requests
        self._subscribers: dict[str, set[trio.MemorySendChannel]] = {}
        self._suback: dict[int, trio.Event] = {}
        self._connected = trio.Event()
        self._connection_scope = trio.CancelScope()  # the current connection's tasks: cancelled, it is dropped
        self._refusal: str | None = None  # why the broker refused our last CONNECT
        self._subscription_refused = False  # on the current connection
        self._write_wanted = trio.Event()
        self._closed = False
        self.messages_sent = 0

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, client_id: str | None = None) -> AsyncIterator[MqttBus]:
        bus = cls(url, client_id)
        async with trio.open_nursery() as nursery:
            failure = await nursery.start(bus._run)
            if failure is None:
                try:
                    yield bus
                finally:
                    bus._closed = True
                    nursery.cancel_scope.cancel()
                    bus._client.disconnect()
        if failure is not None:  # raised here, outside the nursery, so that it comes unwrapped
            raise failure

    # -- the connection ------------------------------------------------------------------

    def _open(self, node: str) -> str | None:
        """Open a connection to `node` (host:port) and queue CONNECT; or say why not."""
        host, port = node.rsplit(":", 1)
        self._refusal = None
        try:
            self._client.connect(host, int(port), keepalive=KEEPALIVE_S)
        except ssl.SSLError as error:  # an OSError too; said apart since the cure differs
            return f"TLS handshake failed: {error}"
        except OSError as error:
            return f"cannot reach it: {error.strerror or error}"
        self._write_wanted.set()  # the CONNECT packet paho just queued
        return None

    async def _run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve the connection until it drops, then the next node; forever.
        Until a first connection is accepted, each node is tried once, at once; if none
        accepts, this reports why as started, and ends. After that, each node that fails
        us doubles the wait before the next (up to a limit); one that served us, not."""
        failures: list[tuple[str, str, bool]] | None = []  # the first connection's: (node, why, refused)
        delay = RECONNECT_DELAY_S_MIN

        def accepted() -> None:
            nonlocal failures
            if failures is not None:
                task_status.started()
                failures = None

        while True:
            node = self._nodes[self._node]
            failure = await self._connection(node, accepted)
            self._node = (self._node + 1) % len(self._nodes)
            if failures is not None:
                failures.append((node, failure or "closed the connection", self._refusal is not None))
                if len(failures) == len(self._nodes):
                    task_status.started(self._first_failure(failures))
                    return
                continue
            if failure is None:
                delay = RECONNECT_DELAY_S_MIN
                log.warning("connection to broker %s lost; reconnecting to %s", node, self._nodes[self._node])
            else:
                log.log(logging.ERROR if self._refusal else logging.WARNING, "broker %s %s", node, failure)
            await trio.sleep(delay)
            if failure is not None:
                delay = min(delay * 2, RECONNECT_DELAY_S_MAX)

    async def _connection(self, node: str, accepted: Callable[[], None]) -> str | None:
        """Connect to `node` and serve the connection until it drops; then None, or why
        the node failed us: unreachable, not accepting us, or refusing a subscription.
        `accepted` is called once it accepts us."""
        failure = self._open(node)
        if failure is not None:
            return failure
        self._subscription_refused = False
        async with trio.open_nursery() as nursery:
            self._connection_scope = nursery.cancel_scope
            nursery.start_soon(self._read, nursery.cancel_scope)
            nursery.start_soon(self._write, nursery.cancel_scope)
            nursery.start_soon(self._tick, nursery.cancel_scope)
            with trio.move_on_after(CONNACK_S_MAX):
                await self._connected.wait()
            if self._connected.is_set():
                accepted()
            else:
                nursery.cancel_scope.cancel()
        if not self._connected.is_set():
            failure = self._unaccepted()
        elif self._subscription_refused:
            failure = "refused a subscription"
        self._client.disconnect()
        self._connected = trio.Event()
        return failure

    def _unaccepted(self) -> str:
        """Why a connection that was opened was not accepted: a refusal (credentials) or
        silence (often plain MQTT sent to a TLS listener)."""
        if self._refusal is not None:
            return f"refused {self.client_id!r}: {self._refusal}"
        return "did not acknowledge the connection (a TLS listener? then use mqtts://)"

    def _first_failure(self, failures: list[tuple[str, str, bool]]) -> BrokerUnreachable:
        """Why no node accepted the first connection, for `connect` to raise: each node's
        reason, a refusal above all."""
        kind = BrokerRefused if any(refused for *_, refused in failures) else BrokerUnreachable
        if len(failures) == 1:
            return kind(self._where, failures[0][1])
        return kind(self._where, "; ".join(f"{node} {why}" for node, why, _ in failures))

    def _on_socket_open(self, client, userdata, sock) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client._sock = _BufferedSocket(sock)  # paho reads and writes its socket through this attribute

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:  # logged by _run, or raised by connect if it is the first connection
            self._refusal = str(reason_code)
            return
        self._refusal = None
        topics = [self._reply_filter, *map(request_topic, self._routes), *self._subscribers]
        for topic in topics:
            self._client.subscribe(topic, qos=self._qos)
        self._connected.set()

    async def _read(self, scope: trio.CancelScope) -> None:
        while True:
            sock = self._client.socket()
            if sock is None:
                scope.cancel()
                return
            assert isinstance(sock, _BufferedSocket)  # _on_socket_open put it there
            await trio.lowlevel.wait_readable(sock)
            while True:  # paho stops after a few packets; read all that one recv brought
                if self._client.loop_read() != paho.MQTT_ERR_SUCCESS:
                    scope.cancel()
                    return
                if not sock.buffered:
                    break
            if sock.unsent or self._client.want_write():  # acknowledgements paho made while reading
                self._write_wanted.set()

    async def _write(self, scope: trio.CancelScope) -> None:
        """Send, once per turn of the event loop, everything queued since the last turn."""
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            sock = self._client.socket()
            if sock is None:
                scope.cancel()
                return
            assert isinstance(sock, _BufferedSocket)
            if self._client.want_write() and self._client.loop_write() != paho.MQTT_ERR_SUCCESS:
                scope.cancel()
                return
            try:
                while not sock.flush():
                    await trio.lowlevel.wait_writable(sock)
            except OSError:
                scope.cancel()
                return

    async def _tick(self, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(1)
            if self._client.loop_misc() != paho.MQTT_ERR_SUCCESS:
                scope.cancel()
                return
            self._write_wanted.set()

    def _publish(self, topic: str, payload: bytes) -> None:
        if self._closed:
            raise BusClosed("the bus is closed")
        self.messages_sent += 1
        self._client.publish(topic, payload, qos=self._qos)
        self._write_wanted.set()

    async def _subscribe(self, topic: str) -> None:
        """Subscribe and wait for the broker's acknowledgement, so that nothing
        published after this returns can be missed."""
        result, mid = self._client.subscribe(topic, qos=self._qos)
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            return  # not connected: _on_connect subscribes again
        done = self._suback[mid] = trio.Event()
        self._write_wanted.set()
        with trio.move_on_after(10):
            await done.wait()
        self._suback.pop(mid, None)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        event = self._suback.get(mid)
        if event is not None:
            event.set()
        if any(code.is_failure for code in reason_codes):  # NATS, say, while its JetStream elects a leader
            self._subscription_refused = True
            self._connection_scope.cancel()

    # -- incoming ------------------------------------------------------------------------

    def _on_message(self, client, userdata, message) -> None:
        topic = message.topic
        if topic.startswith(self._reply_prefix):
            waiting = self._pending.get(topic[len(self._reply_prefix) :])
            if waiting is not None:
                with contextlib.suppress(trio.WouldBlock):  # a duplicate reply
                    waiting.send_nowait(message.payload)
            return
        if topic.startswith(_SVC_PREFIX):
            parts = topic[len(_SVC_PREFIX) :].rsplit("/", 2)  # the service, whatever its levels, then two
            route = self._routes.get(parts[0]) if len(parts) == 3 else None
            if route is None:
                return
            service, client, correlation = parts
            if not route.offer(Request(message.payload, self._replier(reply_topic(client, correlation)), client)):
                dropped = route.dropped[client]
                if dropped & (dropped - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood must not flood the log
                    log.warning(
                        "dropped a request from %s to %s (%d so far): %d of its own waiting (share %d), "
                        "or all %d places taken",
                        client,
                        service,
                        dropped,
                        route.waiting(client),
                        CLIENT_WAITING_MAX,
                        QUEUE_LENGTH_MAX,
                    )
            return
        for subscriber in list(self._subscribers.get(topic, ())):
            try:
                subscriber.send_nowait(message.payload)
            except trio.WouldBlock:
                log.warning("dropped an event on %s: subscriber is %d behind", topic, QUEUE_LENGTH_MAX)

    def _replier(self, topic: str):
        async def reply(payload: bytes) -> None:
            self._publish(topic, payload)

        return reply

    # -- the Bus interface ---------------------------------------------------------------

    async def request(self, service: str, payload: bytes, *, timeout_s: float) -> bytes:
        correlation = next(self._correlations)
        send, receive = trio.open_memory_channel[bytes](1)
        self._pending[correlation] = send
        try:
            with trio.move_on_after(timeout_s):
                self._publish(request_topic(service, self.client_id, correlation), payload)
                return await receive.receive()
            raise BusTimeout(f"no reply from {service} within {timeout_s}s")
        finally:
            del self._pending[correlation]

    @asynccontextmanager
    async def serve(self, service: str) -> AsyncIterator[Waiting]:
        topic = request_topic(service)
        assert service not in self._routes, f"{service} is already served on this connection"
        waiting = self._routes[service] = Waiting(QUEUE_LENGTH_MAX, CLIENT_WAITING_MAX)
        try:
            await self._subscribe(topic)
            yield waiting
        finally:
            del self._routes[service]
            waiting.close()
            if not self._closed:
                self._client.unsubscribe(topic)

    async def publish(self, topic: str, payload: bytes) -> None:
        self._publish(event_topic(topic), payload)

    def subscribe(self, topic: str):
        return self.subscribe_raw(event_topic(topic))

    @asynccontextmanager
    async def subscribe_raw(self, mqtt_topic: str) -> AsyncIterator[trio.MemoryReceiveChannel]:
        """Subscribe to an MQTT topic as it is, such as the broker's own $SYS counters."""
        send, receive = trio.open_memory_channel[bytes](QUEUE_LENGTH_MAX)
        subscribers = self._subscribers.setdefault(mqtt_topic, set())
        subscribers.add(send)
        try:
            if len(subscribers) == 1:
                await self._subscribe(mqtt_topic)
            yield receive
        finally:
            # off the list before the channel closes, with no checkpoint between: an event
            # read meanwhile must find no channel rather than a closed one
            subscribers.discard(send)
            if not subscribers:
                del self._subscribers[mqtt_topic]
                if not self._closed:
                    self._client.unsubscribe(mqtt_topic)
            receive.close()


class _BufferedSocket:
    """The broker connection as paho sees it. paho makes a system call for every
    packet it sends and several for every packet it reads; through this, what paho
    sends in one turn of the event loop leaves in one `send`, and one `recv` brings in
    all that has arrived. Far fewer system calls and TCP segments under load. It reads
    into one buffer of its own: a `recv` of RECV_BYTES would have the allocator map,
    shrink and unmap that much memory at every call, three system calls more."""

    RECV_BYTES = 256 * 1024

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._out = bytearray()
        self._in = bytearray()
        self._landing = memoryview(bytearray(self.RECV_BYTES))

    def send(self, data: bytes) -> int:
        self._out += data
        return len(data)

    def flush(self) -> bool:
        """Send what is buffered; False if the socket took only part of it."""
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            del self._out[:sent]
        return True

    def recv(self, size: int) -> bytes:
        if not self._in:
            count = self._sock.recv_into(self._landing)  # BlockingIOError when nothing is there
            if not count:
                return b""  # the broker closed the connection
            self._in += self._landing[:count]
        data = bytes(self._in[:size])
        del self._in[:size]
        return data

    @property
    def unsent(self) -> bool:
        """Bytes paho has sent that have not left yet (`flush`)."""
        return bool(self._out)

    @property
    def buffered(self) -> bool:
        """Bytes to read that the socket will not signal. (Over TLS, one `recv` takes at
        most one TLS record, whole; the rest waits in the kernel, which does signal it.)"""
        return bool(self._in)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)
