"""Where the broker is and who we are to it: broker URLs, credentials and TLS.

mqtt://host:port, or mqtts://host:port for TLS (port 8883 by default), with
`user:password@` or, to keep the password out of configs and command lines, a
`password_file` query parameter; `ca_file` names the CA that signed the broker's
TLS certificate (the system's CAs otherwise):

mqtts://ledger-csd@broker.example:8883?password_file=/etc/lockstep/ledger-csd.password&ca_file=/etc/lockstep/ca.pem

`qos=0` makes the bus publish and subscribe at QoS 0 rather than 1: for a broker on which
QoS 1 costs a consensus round per message and per subscription (a NATS cluster: docs/
DEPLOY.md §7). Delivery is at most once per attempt either way; senders retry.

A broker cluster is a list of its nodes' URLs, the same but for host and port (one client
logs in to whichever node it reaches): in a config `broker = ["mqtt://a:1883",
"mqtt://b:1883"]`, and on a command line or in one string the URLs separated by commas,
`--broker mqtt://a:1883,mqtt://b:1883`, which is how such a list travels within Lockstep.
"""

from __future__ import annotations

import re
import ssl
import stat
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs

from ..failures import ExpectedFailure, file_reason

URL_OPTIONS = ("password_file", "ca_file", "qos")
_BETWEEN_URLS = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")  # a comma before a scheme: one in a password stays


@attrs.frozen
class BrokerAddress:
    """A broker URL, parsed: where, whether over TLS, and as whom."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None = attrs.field(repr=False)
    password_file: Path | None
    ca_file: Path | None
    qos: int = 1  # what the bus publishes and subscribes at


class BadURL(ValueError):
    """What is wrong with a broker URL (or a cluster's list): the URL, redacted, and why."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = redacted(url), reason
        super().__init__(f"{self.url!r} {reason}")


def broker_urls(brokers: str) -> list[str]:
    """The URLs in `brokers`: one broker's, or a cluster's separated by commas."""
    return [url.strip() for url in _BETWEEN_URLS.split(brokers)]


def redacted(url: str) -> str:
    """`url` (or each URL of a list) fit to print: any password in it replaced."""
    return ",".join(_redacted(one) for one in broker_urls(url))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def parse_url(url: str) -> BrokerAddress:
    """Parse a broker URL (see the module's doc); ValueError says what is wrong with it
    (the caller names the URL, redacted)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("its port must be a number from 0 to 65535") from None
    if parts.scheme not in ("mqtt", "tcp", "mqtts") or not parts.hostname:
        raise ValueError("must look like mqtt://host:port or mqtts://host:port")
    options = dict(parse_qsl(parts.query))
    for name in options:
        if name not in URL_OPTIONS:
            raise ValueError(f"unknown parameter {name!r} (known: {', '.join(URL_OPTIONS)})")
    tls = parts.scheme == "mqtts"
    if "ca_file" in options and not tls:
        raise ValueError("ca_file needs TLS, the mqtts:// scheme")
    if "password_file" in options and parts.password is not None:
        raise ValueError("give the password or password_file, not both")
    if options.get("qos", "1") not in ("0", "1"):
        raise ValueError("qos must be 0 or 1")
    password_file, ca_file = (Path(options[name]) if name in options else None for name in ("password_file", "ca_file"))
    return BrokerAddress(
        parts.hostname,
        port or (8883 if tls else 1883),
        tls,
        parts.username or None,
        parts.password,
        password_file,
        ca_file,
        int(options.get("qos", "1")),
    )


def parse_urls(brokers: str) -> list[BrokerAddress]:
    """Parse one broker's URL or a cluster's (see the module's doc); BadURL says which
    URL is at fault and why."""
    addresses = []
    for url in broker_urls(brokers):
        try:
            addresses.append(parse_url(url))
        except ValueError as error:
            raise BadURL(url, str(error)) from None
    if len({attrs.evolve(address, host="", port=0) for address in addresses}) > 1:
        raise BadURL(brokers, "names a cluster whose URLs differ in more than host and port")
    return addresses


def with_files(url: str, *, password_file: Path | None = None, ca_file: Path | None = None) -> str:
    """`url` with these files added as its query parameters: how a config's
    broker_password_file and broker_ca_file reach the bus."""
    added = [(name, str(path)) for name, path in (("password_file", password_file), ("ca_file", ca_file)) if path]
    if not added:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    for name, _ in added:
        if any(key == name for key, _ in query):
            raise ValueError(f"has {name} already")
    return urlunsplit(parts._replace(query=urlencode(query + added, quote_via=quote, safe="/")))


def at_qos(url: str, qos: int) -> str:
    """`url` with the bus at `qos`: as it is at 1, the default; with `qos` set otherwise."""
    if qos == 1:
        return url
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "qos"] + [("qos", str(qos))]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote, safe="/")))


def broker_setting(config: dict, base: Path) -> str | None:
    """A ledger's or coordinator's `broker`, a URL or a list of a cluster's, with its
    `broker_password_file` and `broker_ca_file` (relative to `base`, the config's folder)
    folded into each, so that no password sits in a config; a list as one string, its
    URLs separated by commas. ValueError names the setting."""
    broker = config.get("broker")
    if isinstance(broker, list) and broker and all(isinstance(url, str) for url in broker):
        broker = ",".join(broker)
    if broker is not None and not isinstance(broker, str):
        raise ValueError("broker: must be a URL such as mqtt://127.0.0.1:1883, or a list of a cluster's URLs")
    files = {}
    for key in ("broker_password_file", "broker_ca_file"):
        if key in config:
            if not isinstance(config[key], str):
                raise ValueError(f"{key}: must be a path, a string")
            if broker is None:
                raise ValueError(f"{key}: needs broker")
            files[key.removeprefix("broker_")] = base / config[key]
    if broker is None:
        return None
    try:
        urls = ",".join(_with_files(url, files) for url in broker_urls(broker))
        parse_urls(urls)
    except ValueError as error:
        raise ValueError(f"broker: {error}") from None
    return urls


def _with_files(url: str, files: dict[str, Path]) -> str:
    try:
        return with_files(url, **files)
    except ValueError as error:
        raise BadURL(url, str(error)) from None


def read_password_file(path: Path) -> str:
    """The password in `path` (its first line), refusing a file that others may read:
    such a password is as good as published."""
    subject = f"broker password file {path}"
    lines = read_private_lines(subject, path)
    if not lines or not lines[0]:
        raise ExpectedFailure(subject, "empty")
    return lines[0]


def read_private_lines(subject: str, path: Path) -> list[str]:
    """The lines of a file of secrets, refused, as `subject`, if others may read it."""
    try:
        mode = path.stat().st_mode
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ExpectedFailure(subject, file_reason(error) if isinstance(error, OSError) else "not text") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ExpectedFailure(subject, f"readable by others (mode {stat.filemode(mode)}); chmod 600 it")
    return lines


def credentials(address: BrokerAddress, client_id: str | None) -> tuple[str | None, str | None]:
    """The username and password to log in with. A password needs a username: the
    URL's, or else the client id (a service's `ledger-{id}`, say)."""
    password = read_password_file(address.password_file) if address.password_file else address.password
    username = address.username or (client_id if password is not None else None)
    if password is not None and username is None:
        raise ExpectedFailure(
            f"broker {address.host}:{address.port}", "a password needs a username: put it in the URL (mqtt://USER@host)"
        )
    return username, password


def tls_context(address: BrokerAddress) -> ssl.SSLContext:
    """Verify the broker's certificate and host name against `ca_file`, or the system's CAs."""
    try:
        return ssl.create_default_context(cafile=str(address.ca_file) if address.ca_file else None)
    except ssl.SSLError as error:  # an OSError too, said apart: the file is there but no certificate
        raise ExpectedFailure(f"broker CA file {address.ca_file}", f"not a PEM CA certificate: {error}") from None
    except OSError as error:
        raise ExpectedFailure(f"broker CA file {address.ca_file}", file_reason(error)) from None
