"""Where the broker is and who we are to it: broker URLs, credentials and TLS.

mqtt://host:port, or mqtts://host:port for TLS (port 8883 by default), with
`user:password@` or, to keep the password out of configs and command lines, a
`password_file` query parameter; `ca_file` names the CA that signed the broker's
TLS certificate (the system's CAs otherwise):

mqtts://ledger-csd@broker.example:8883?password_file=/etc/lockstep/ledger-csd.password&ca_file=/etc/lockstep/ca.pem
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs

from ..failures import ExpectedFailure, file_reason

URL_OPTIONS = ("password_file", "ca_file")


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


def redacted(url: str) -> str:
    """`url` fit to print: any password in it replaced."""
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
    return BrokerAddress(
        parts.hostname,
        port or (8883 if tls else 1883),
        tls,
        parts.username or None,
        parts.password,
        *(Path(options[name]) if name in options else None for name in URL_OPTIONS),
    )


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


def broker_setting(config: dict, base: Path) -> str | None:
    """A ledger's or coordinator's `broker` URL with its `broker_password_file` and
    `broker_ca_file` (relative to `base`, the config's folder) folded in, so that no
    password sits in a config. ValueError names the setting."""
    broker = config.get("broker")
    if broker is not None and not isinstance(broker, str):
        raise ValueError("broker: must be a URL such as mqtt://127.0.0.1:1883")
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
        url = with_files(broker, **files)
        parse_url(url)
    except ValueError as error:
        raise ValueError(f"broker: {redacted(broker)!r} {error}") from None
    return url


def read_password_file(path: Path) -> str:
    """The password in `path` (its first line), refusing a file that others may read:
    such a password is as good as published."""
    subject = f"broker password file {path}"
    try:
        mode = path.stat().st_mode
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ExpectedFailure(subject, file_reason(error) if isinstance(error, OSError) else "not text") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ExpectedFailure(subject, f"readable by others (mode {stat.filemode(mode)}); chmod 600 it")
    if not lines or not lines[0]:
        raise ExpectedFailure(subject, "empty")
    return lines[0]


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
