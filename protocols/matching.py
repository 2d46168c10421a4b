"""Matching two one-sided instructions into one settlement, as a CSD matches them.

Each counterparty instructs its own side (protocols.iso20022.model.OneSided). Two sides
match when every matching field agrees, as T2S matches them: opposite sides of one kind,
each naming the other as counterparty, the same dates, and what one gives is what the
other takes (security, quantity, amount and currency); and the optional fields that must
agree where both sides give them: the common reference and each side's place of settlement.
The coordinator matches to find pairs; each ledger matches the pair again before a leg
moves, so no coordinator can pair a trade with a price the parties did not both state."""

from __future__ import annotations

import datetime
import hashlib

import attrs

from .errors import Code, Rejected
from .iso20022.model import OneSided, cash_through
from .messages import ATTEMPTS_MAX
from .money import format_amount

DAY_MS = 86_400_000


@attrs.frozen
class Difference:
    """Why two sides do not match, with the ISO 20022 unmatched reason code."""

    code: str  # DSEC security, DQUA quantity, DMON amount or currency, DDAT settlement date,
    # DTRD trade date, DEPT counterparty, DTRA direction, DCMX common reference, PLCE place of
    # settlement, OTHR kind
    field: str
    reason: str


def differences(a: OneSided, b: OneSided) -> list[Difference]:
    """Every matching field on which `a` and `b` disagree; none if they match."""
    found = []
    if a.kind != b.kind or a.format != b.format:
        found.append(Difference("OTHR", "kind", f"{a.kind} ({a.format}) against {b.kind} ({b.format})"))
        return found
    if a.kind == "dvp" and {a.side, b.side} != {"deliver", "receive"}:
        found.append(Difference("DTRA", "side", f"both sides {a.side}: one delivers, the other receives"))
    if (a.counterparty, b.counterparty) != (b.party, a.party):
        found.append(
            Difference("DEPT", "counterparty", f"{a.party} names {a.counterparty}, {b.party} names {b.counterparty}")
        )
    for name, code in (("settlement_date", "DDAT"), ("trade_date", "DTRD")):
        if getattr(a, name) != getattr(b, name):
            found.append(Difference(code, name, f"{getattr(a, name)} against {getattr(b, name)}"))
    if a.common_id and b.common_id and a.common_id != b.common_id:
        found.append(Difference("DCMX", "common_id", f"{a.common_id} against {b.common_id}"))
    for index, side in enumerate(("deliverer", "receiver")):
        place_a, place_b = a.depositories[index], b.depositories[index]
        if place_a and place_b and place_a != place_b:
            found.append(Difference("PLCE", f"depositories.{side}", f"{place_a} against {place_b}"))
    if a.payment != b.payment:
        found.append(Difference("DMON", "payment", f"{a.payment} against {b.payment}"))
        return found
    if "leg" in (a.side, b.side):
        return found + _legs(a, b)
    for mine, theirs in ((a, b), (b, a)):
        if mine.gives_asset != theirs.takes_asset:
            code = "DSEC" if len(mine.gives_asset or "") == 12 or len(theirs.takes_asset or "") == 12 else "DMON"
            found.append(
                Difference(
                    code,
                    f"{mine.party}.gives_asset",
                    f"{mine.party} gives {mine.gives_asset}, {theirs.party} takes {theirs.takes_asset}",
                )
            )
        elif mine.gives_asset is not None and mine.gives_amount != theirs.takes_amount:
            code = "DQUA" if len(mine.gives_asset) == 12 else "DMON"
            found.append(
                Difference(
                    code,
                    f"{mine.party}.gives_amount",
                    f"{mine.party} gives {format_amount(mine.gives_asset, mine.gives_amount)}, "
                    f"{theirs.party} takes {format_amount(mine.gives_asset, theirs.takes_amount)}",
                )
            )
    return found


def _legs(a: OneSided, b: OneSided) -> list[Difference]:
    """Two PvP legs, each its party's own payment alone: they pair by their shared
    reference and exchange two currencies; neither states what it takes."""
    if a.side != b.side:
        return [Difference("OTHR", "side", f"a leg alone against a pair ({a.side} against {b.side})")]
    found = []  # their EndToEndIds, both given, differ: the common reference's check (DCMX) says so
    if a.gives_asset == b.gives_asset:
        found.append(
            Difference("DMON", "gives_asset", f"both legs pay {a.gives_asset}: a PvP exchanges two currencies")
        )
    return found


def leg_order(a: OneSided, b: OneSided) -> tuple[OneSided, OneSided]:
    """Who pays leg 0: the deliverer of a DvP (the instrument leg is claimed first), the
    party first by id in a PvP."""
    if a.kind == "dvp":
        return (a, b) if a.side == "deliver" else (b, a)
    return (a, b) if a.party < b.party else (b, a)


MATCHED_PREFIX = "m-"  # every matched pair's settlement id begins so


def part_of(one: OneSided, part_from: int, part_to: int) -> int:
    """What one side of a DvP gives in the part from unit `part_from` to `part_to`: the
    deliverer those units, the receiver the cash they come to."""
    if one.side == "deliver":
        return part_to - part_from
    units = one.takes_amount
    return cash_through(one.gives_amount, units, part_to) - cash_through(one.gives_amount, units, part_from)


def check_part(a: OneSided, b: OneSided, part_from: int, part_to: int | None, field: str) -> None:
    """A partial try is of a DvP both of whose instructions allow it, within the trade,
    and pays some cash where the trade pays any."""
    if part_to is None:
        if part_from:
            raise Rejected(Code.INVALID_FIELD, field, "part_from without part_to")
        return
    if a.kind != "dvp":
        raise Rejected(Code.INVALID_FIELD, field, "only a DvP settles in parts")
    for one in (a, b):
        if not one.partial:
            raise Rejected(
                Code.NOT_AUTHORISED,
                field,
                f"{one.party}'s instruction does not allow partial settlement (PrtlSttlmInd)",
            )
    deliverer = a if a.side == "deliver" else b
    if not 0 <= part_from < part_to <= deliverer.gives_amount:
        raise Rejected(
            Code.INVALID_FIELD, field, f"units {part_from} to {part_to} are not a part of the {deliverer.gives_amount}"
        )
    receiver = b if deliverer is a else a
    if receiver.gives_asset is not None and part_of(receiver, part_from, part_to) == 0:
        raise Rejected(Code.INVALID_FIELD, field, f"units {part_from} to {part_to} come to no cash")


def matched_id(first_digest: bytes, second_digest: bytes) -> str:
    """The settlement id of a matched pair: the same whoever computes it, from the two
    signed instructions in leg order."""
    return MATCHED_PREFIX + hashlib.sha256(first_digest + second_digest).hexdigest()[:40]


def attempt_id(pair_id: str, attempt: int) -> str:
    """The settlement id of a matched pair's `attempt`: the pair's own id for the first
    (0), then `{pair_id}.{attempt}` for each try of a pair the queue recycled."""
    assert 0 <= attempt <= ATTEMPTS_MAX, attempt
    return pair_id if attempt == 0 else f"{pair_id}.{attempt}"


def pair_of(settlement_id: str) -> str:
    """The matched pair an attempt's settlement id tries to settle."""
    return settlement_id.split(".", 1)[0]


LATE_DAYS_MAX = 60  # a recycled pair may settle this many calendar days after its intended date, no later


def settlement_day(intended: str, settle_on: str | None, field: str) -> str:
    """The day a matched pair's try settles on: its intended settlement date, or a later
    one the queue recycled it to, within LATE_DAYS_MAX."""
    if settle_on is None:
        return intended
    late = (datetime.date.fromisoformat(settle_on) - datetime.date.fromisoformat(intended)).days
    if not 0 <= late <= LATE_DAYS_MAX:
        raise Rejected(
            Code.INVALID_FIELD,
            field,
            f"{settle_on} is not within {LATE_DAYS_MAX} days on from the intended settlement date {intended}",
        )
    return settle_on


def day_window(date: str) -> tuple[int, int]:
    """The first and last millisecond (UTC) of a date: a matched trade settles within
    its intended settlement date."""
    start = datetime.datetime.combine(datetime.date.fromisoformat(date), datetime.time(), tzinfo=datetime.UTC)
    first_ms = int(start.timestamp()) * 1000
    return first_ms, first_ms + DAY_MS - 1


def require_match(a: OneSided, b: OneSided, field: str) -> None:
    found = differences(a, b)
    if found:
        raise Rejected(
            Code.NOT_AUTHORISED,
            field,
            "instructions do not match: " + "; ".join(f"{d.code} {d.field}: {d.reason}" for d in found),
        )
