"""Who may open the console: operators and the supervisor, each with a name and a
password kept in one file readable by its owner alone, as the services' broker
passwords are (protocols/bus/address.py). One line each, `name:password`.

The console has no write path, so a session can only read; a browser keeps it in a
cookie signed with a key drawn when the console starts (Starlette's SessionMiddleware),
so a restart signs everyone out."""

from __future__ import annotations

import hmac
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
