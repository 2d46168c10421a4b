"""Expected failures: what a command cannot do because something outside the program is
not as it needs, a file, a key, a config, the broker or a service that does not answer.

They are not bugs, so `lockstep` prints one line naming the file or address and why
(exit status 2), with a traceback only at --log-level debug. A bug (AssertionError,
TypeError, ...) is never one of these and keeps its traceback. Each part raises its own
member of the family (a config's ConfigError, the bus's BrokerUnreachable, a daemon's
DaemonError) or this class itself, and one handler, in engine/cli.py, prints them all."""

from __future__ import annotations

import errno
import os
import tomllib
from pathlib import Path

_FILE_REASONS = {
    errno.ENOENT: "no such file",
    errno.EACCES: "permission denied",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of its path is not a folder",
}


class ExpectedFailure(Exception):
    """`subject`: the file (with what it is for), the address or the setting concerned;
    `reason`: what is wrong with it, for people."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"{subject}: {reason}")
        self.subject = subject
        self.reason = reason


def file_reason(error: OSError) -> str:
    """An OSError said briefly and without its path, which the subject names."""
    return (_FILE_REASONS.get(error.errno) if error.errno is not None else None) or error.strerror or str(error)


def read_bytes(what: str, path: str | os.PathLike) -> bytes:
    """The file's bytes; `what` says what the file is for, such as "registry"."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ExpectedFailure(f"{what} {path}", file_reason(error)) from None


def read_toml(what: str, path: str | os.PathLike) -> dict:
    """A TOML file's table, or the one-line reason it cannot be read."""
    data = read_bytes(what, path)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ExpectedFailure(f"{what} {path}", "not UTF-8 text, so not TOML") from None
    except tomllib.TOMLDecodeError as error:
        raise ExpectedFailure(f"{what} {path}", f"not valid TOML: {error}") from None
