"""A service's Prometheus scrape endpoint: `GET /metrics`, answered with one
registry's text by a Starlette application served by Hypercorn on trio, the stack the
console runs on (engine/console/).

What a scraper may cost the service is bounded by Hypercorn: the bytes of a request
head (h11's incomplete-event limit), how long a connection may stay silent or idle.
The address is taken before the service starts (`listen`), so that a port in use
stops the start with a message rather than a stack of task errors."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, cast

import attrs
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

if TYPE_CHECKING:
    from starlette.applications import Starlette

REQUEST_BYTES_MAX = 8 * 1024  # a scraper's request head is a few hundred bytes
CONNECTION_SECONDS_MAX = 5  # a connection silent or idle this long is closed
PATH = "/metrics"

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


def metrics_app(registry: CollectorRegistry) -> Starlette:
    """`GET /metrics`: the registry's text; 404 for any other path, 405 for another method.
    (The web stack is imported here, not with the module: every service reads its metrics
    setting, and most serve none.)"""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def metrics(request: Request) -> Response:
        try:
            text = generate_latest(registry)
        except Exception as error:  # a failed read of the metrics must not stop the service they describe
            log.exception("metrics could not be read")
            return PlainTextResponse(f"metrics could not be read: {error!r}\n", status_code=500)
        return Response(text, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return Starlette(routes=[Route(PATH, metrics, methods=["GET"])])


@attrs.frozen
class Listener:
    """A listening socket taken for the endpoint, handed to the server by its descriptor."""

    fd: int
    url: str


def listen(host: str, port: int) -> Listener:
    """Listen at host:port (port 0: a free one), before the service starts."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as error:
        raise MetricsUnavailable(f"metrics: cannot listen on {host}:{port}: {error.strerror or error}") from None
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}{PATH}"
    return Listener(sock.detach(), url)


def listener_for(configured: tuple[str, int] | None, flag: str | None) -> Listener | None:
    """Where a service's metrics were asked for: at `flag` (HOST:PORT, given on the command
    line) if set, else at the configured address; None: metrics are off."""
    try:
        address = configured if flag is None else parse_address(flag)
    except ValueError as error:
        raise MetricsUnavailable(f"--metrics: {error}") from None
    return None if address is None else listen(*address)


async def serve_metrics(
    registry: CollectorRegistry, listener: Listener, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Answer scrapes of `registry` on `listener` until cancelled."""
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from hypercorn.typing import ASGIFramework

    config = Config()
    config.bind = [f"fd://{listener.fd}"]
    config.accesslog = None
    config.errorlog = None
    config.h11_max_incomplete_size = REQUEST_BYTES_MAX
    config.read_timeout = CONNECTION_SECONDS_MAX
    config.keep_alive_timeout = CONNECTION_SECONDS_MAX
    app = cast(ASGIFramework, metrics_app(registry))  # an ASGI application, which Hypercorn types its own way
    await serve(app, config, task_status=task_status)
