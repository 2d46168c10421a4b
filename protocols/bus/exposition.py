"""A service's Prometheus scrape endpoint: `GET /metrics` over HTTP/1.1, answered with
one registry's text, one response per connection.

No web framework: a scraper is the only client, and what it may cost the service is
bounded here: the bytes of a request, how long a connection may stay open, how many
are open at once. The answer to a request head is a pure function (`respond`); the
trio server around it only moves bytes."""

from __future__ import annotations

import logging

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

REQUEST_BYTES_MAX = 8 * 1024  # a scraper's request head is a few hundred bytes
CONNECTION_SECONDS_MAX = 5.0  # a client that has not been answered by then is cut off
CONNECTIONS_MAX = 16  # open at once; more are closed unanswered
PATH = "/metrics"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}

log = logging.getLogger("lockstep.metrics")


class MetricsUnavailable(Exception):
    """The metrics endpoint cannot listen where it was asked to (the port taken, say)."""


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as (host, port); ValueError names the problem."""
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT with a port from 0 to 65535")
    return host, int(port)


def metrics_setting(data: dict) -> tuple[str, int] | None:
    """A service's optional `metrics = "HOST:PORT"` setting, read from its TOML; None: off."""
    value = data.get("metrics")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string, HOST:PORT")
    return parse_address(value)


def respond(head: bytes, registry: CollectorRegistry) -> bytes:
    """The whole response to a request head (request line and headers): the metrics
    for `GET /metrics`, an error status for anything else."""
    if len(head) > REQUEST_BYTES_MAX:
        return _response(431, f"a request may have at most {REQUEST_BYTES_MAX} bytes\n".encode())
    if not head.endswith(b"\r\n\r\n"):
        return _response(400, b"the request ended before its headers did\n")
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400, b"not an HTTP/1.x request line\n")
    method, target, _ = parts
    if target.split(b"?", 1)[0] != PATH.encode():
        return _response(404, f"only {PATH} is served here\n".encode())
    if method != b"GET":
        return _response(405, b"only GET\n", (("Allow", "GET"),))
    try:
        text = generate_latest(registry)
    except Exception as error:  # a failed read of the metrics must not stop the service they describe
        log.exception("metrics could not be read")
        return _response(500, f"metrics could not be read: {error!r}\n".encode())
    return _response(200, text, (("Content-Type", CONTENT_TYPE_PLAIN_0_0_4),))


def _response(status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    headers = headers or (("Content-Type", "text/plain; charset=utf-8"),)
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        *(f"{name}: {value}" for name, value in headers),
        f"Content-Length: {len(body)}",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("latin-1") + body


async def _read_head(stream: trio.abc.Stream) -> bytes:
    """The request up to the blank line after its headers, or the first
    REQUEST_BYTES_MAX + 1 bytes of it (never more: that is already too large)."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) <= REQUEST_BYTES_MAX:
        chunk = await stream.receive_some(REQUEST_BYTES_MAX + 1 - len(head))
        if not chunk:
            break
        head += chunk
    end = head.find(b"\r\n\r\n")
    return head if end < 0 else head[: end + 4]


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listen at host:port (port 0: a free one), before the service starts, so that an
    address in use stops the start with a message rather than a stack of task errors."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as error:
        raise MetricsUnavailable(f"metrics: cannot listen on {host}:{port}: {error.strerror or error}") from None


async def listeners_for(configured: tuple[str, int] | None, flag: str | None) -> list[trio.SocketListener] | None:
    """Listeners where a service's metrics were asked for: at `flag` (HOST:PORT, given on
    the command line) if set, else at the configured address; None: metrics are off."""
    try:
        address = configured if flag is None else parse_address(flag)
    except ValueError as error:
        raise MetricsUnavailable(f"--metrics: {error}") from None
    return None if address is None else await open_listeners(*address)


def url_of(listeners: list[trio.SocketListener]) -> str:
    host, port = listeners[0].socket.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{PATH}"


async def serve_metrics(registry: CollectorRegistry, listeners: list[trio.SocketListener]) -> None:
    """Answer scrapes of `registry` on `listeners` until cancelled."""
    connections = trio.CapacityLimiter(CONNECTIONS_MAX)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                connections.acquire_nowait()
            except trio.WouldBlock:
                return
            try:
                with trio.move_on_after(CONNECTION_SECONDS_MAX):
                    head = await _read_head(stream)
                    if head:
                        await stream.send_all(respond(head, registry))
            except trio.BrokenResourceError:
                pass  # the scraper went away: nobody to answer
            finally:
                connections.release()

    await trio.serve_listeners(answer, listeners)
