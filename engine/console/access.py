"""Who may open the console: operators and the supervisor, each with a name and a
password kept in one file readable by its owner alone, as the services' broker
passwords are (protocols/bus/address.py). One line each, `name:password`.

The console has no write path, so a session can only read; a browser keeps it in a
cookie signed with a key drawn when the console starts (Starlette's SessionMiddleware),
so a restart signs everyone out. Guessing is slowed per client address: past
FAILURES_MAX failed sign-ins within FAILURES_WINDOW_S, that address is refused, right
password or not, until the oldest of them leaves the window."""

from __future__ import annotations

import hmac
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from protocols.bus.address import read_private_lines
from protocols.failures import ExpectedFailure
from protocols.identifiers import IDENT_PATTERN


def read_users(path: Path) -> dict[str, str]:
    """Each name's password, refusing a file that others may read or a line that is not
    `name:password`, naming the line."""
    subject = f"console users file {path}"
    users: dict[str, str] = {}
    for number, line in enumerate(read_private_lines(subject, path), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, colon, password = line.partition(":")
        if not colon or not IDENT_PATTERN.fullmatch(name) or not password:
            raise ExpectedFailure(
                subject, f"line {number}: not name:password (a name of letters, digits, '-', '_', '.')"
            )
        if name in users:
            raise ExpectedFailure(subject, f"line {number}: {name} again")
        users[name] = password
    if not users:
        raise ExpectedFailure(subject, "no users")
    return users


def signed_in(users: dict[str, str], name: str, password: str) -> bool:
    """Whether `password` is `name`'s, compared in constant time."""
    expected = users.get(name)
    return hmac.compare_digest((expected or "\0").encode(), password.encode()) and expected is not None


FAILURES_MAX = 10
FAILURES_WINDOW_S = 60.0
ADDRESSES_MAX = 10_000  # addresses remembered; past it, those whose failures are all old go


class Throttle:
    """Failed sign-ins per client address, over a sliding window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def wait_s(self, address: str) -> float:
        """How long `address` must wait before it may try again: 0 if it may now."""
        failures = self._failures.get(address)
        if failures is None:
            return 0.0
        now = self._clock()
        while failures and failures[0] <= now - FAILURES_WINDOW_S:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return 0.0
        return failures[0] + FAILURES_WINDOW_S - now if len(failures) >= FAILURES_MAX else 0.0

    def failed(self, address: str) -> None:
        now = self._clock()
        if address not in self._failures and len(self._failures) >= ADDRESSES_MAX:
            for stale in [a for a, failures in self._failures.items() if failures[-1] <= now - FAILURES_WINDOW_S]:
                del self._failures[stale]
        self._failures.setdefault(address, deque(maxlen=FAILURES_MAX)).append(now)
