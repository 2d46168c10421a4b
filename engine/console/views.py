"""What the console's pages show, as plain data: pure functions of what the observer has
replayed from every ledger's journal (engine/audit/observer.py) and of the time, so that
each view is tested without a browser, a bus or a clock.

Everything here is read from the journals the observer verified, entry by entry, not
from what a ledger or a coordinator says of itself: a supervisor sees what the signed
record shows. A ledger's own answer to `query_info` adds only what no entry carries
(its role, operator and last checkpoint)."""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from collections.abc import Iterable, Mapping

import attrs
from cryptography.hazmat.primitives.asymmetric import ec

from protocols.authority import terms_of
from protocols.htlc import LockState
from protocols.iso20022 import reasons
from protocols.messages import Entry
from protocols.money import format_amount
from protocols.signing import Signed
from protocols.tokens import Piece, Tokens

from ..audit.journals import LedgerJournal, Violation

RATE_WINDOW_S = 300  # the overview's charts: the last five minutes, a point a second


@attrs.define
class Rates:
    """Each ledger's journal height once a second, for the last RATE_WINDOW_S seconds:
    entries per second now, and the chart of it."""

    samples: dict[str, deque[tuple[int, int]]] = attrs.field(factory=dict)  # ledger -> (ms, height)

    def sample(self, heights: Mapping[str, int], now_ms: int) -> None:
        for ledger, height in heights.items():
            self.samples.setdefault(ledger, deque(maxlen=RATE_WINDOW_S + 1)).append((now_ms, height))

    def series(self, ledger: str) -> list[float]:
        """Entries per second over each second of the window, oldest first."""
        points = list(self.samples.get(ledger, ()))
        return [round((h1 - h0) * 1000 / (t1 - t0), 1) for (t0, h0), (t1, h1) in itertools.pairwise(points) if t1 > t0]

    def now(self, ledger: str) -> float:
        series = self.series(ledger)
        return series[-1] if series else 0.0


@attrs.define
class Flow:
    """Settlements ended each second, and the median time the ones that ended took, over
    the last RATE_WINDOW_S seconds."""

    ended: list[int] = attrs.field(factory=list)  # since the last sample: each one's time, ms
    per_s: deque[float] = attrs.field(factory=lambda: deque(maxlen=RATE_WINDOW_S))
    p50_ms: deque[float] = attrs.field(factory=lambda: deque(maxlen=RATE_WINDOW_S))  # seconds with some ended

    def end(self, took_ms: int) -> None:
        self.ended.append(took_ms)

    def sample(self, interval_s: float) -> None:
        self.per_s.append(round(len(self.ended) / interval_s, 1))
        if self.ended:
            self.p50_ms.append(statistics.median(self.ended))
        self.ended.clear()

    def view(self) -> dict:
        return {
            "ended_per_s": self.per_s[-1] if self.per_s else 0.0,
            "ended_chart": sparkline(list(self.per_s)),
            "p50_ms": self.p50_ms[-1] if self.p50_ms else None,
            "p50_chart": sparkline(list(self.p50_ms)),
        }


@attrs.define
class Conservation:
    """Each asset's outstanding total (issued less redeemed) and held total, summed over
    every ledger that has it, once a second for the last RATE_WINDOW_S seconds: the two
    must be equal at every point."""

    samples: dict[str, deque[tuple[int, int, int]]] = attrs.field(factory=dict)  # asset -> (ms, outstanding, held)

    def sample(self, journals: Mapping[str, LedgerJournal], now_ms: int) -> None:
        """One pass over each ledger's balances, every asset at once."""
        totals: dict[str, list[int]] = {}
        for journal in journals.values():
            replay = journal.replay
            for asset in replay.assets:
                issued, redeemed = replay.supply.get(asset, (0, 0))
                totals.setdefault(asset, [0, 0])[0] += issued - redeemed
            for (_, asset), (available, locked) in replay.balances.items():
                if asset in replay.assets:
                    totals[asset][1] += available + locked
        for asset, (outstanding, held) in totals.items():
            self.samples.setdefault(asset, deque(maxlen=RATE_WINDOW_S)).append((now_ms, outstanding, held))


def conservation(history: Conservation) -> list[dict]:
    """Each asset now, with how many of the window's points had outstanding and held
    apart, and both over the window as one chart's lines on one scale."""
    rows = []
    for asset, points in sorted(history.samples.items()):
        _, outstanding, held = points[-1]
        peak = max(max(p[1], p[2]) for p in points) or 1
        rows.append(
            {
                "asset": asset,
                "outstanding": outstanding,
                "held": held,
                "points": len(points),
                "apart": sum(1 for _, o, h in points if o != h),
                "outstanding_line": sparkline([p[1] for p in points], peak=peak),
                "held_line": sparkline([p[2] for p in points], peak=peak),
            }
        )
    return rows


def overview(
    journals: Mapping[str, LedgerJournal],
    infos: Mapping[str, dict],
    alerts: Iterable[Violation],
    judged: Mapping[str, int],
    open_settlements: int,
    rates: Rates,
    now_ms: int,
    phases: Mapping[str, int],
    flow: Flow,
) -> dict:
    """The overview page: every ledger's state, the settlements (judged by the observer
    since it started; the latest by phase; ended per second and how long they took), and
    the alerts, newest first."""
    return {
        "time_ms": now_ms,
        "phases": dict(sorted(phases.items())),
        "flow": flow.view(),
        "ledgers": [_ledger_row(journal, infos.get(ledger, {}), rates, now_ms) for ledger, journal in journals.items()],
        "settlements": {
            "open": open_settlements,
            "same_ledger": sum(journal.settles for journal in journals.values()),
            **{outcome: count for outcome, count in sorted(judged.items())},
        },
        "alerts": [alert(violation) for violation in reversed(list(alerts))],
    }


def _ledger_row(journal: LedgerJournal, info: dict, rates: Rates, now_ms: int) -> dict:
    held = [lock for lock in journal.replay.locks.values() if lock.state is LockState.HELD]
    soonest = min((lock.expiry_ms for lock in held), default=None)
    return {
        "ledger": journal.ledger,
        "role": info.get("role", ""),
        "operator": info.get("operator", ""),
        "height": journal.entries,
        "last_entry_ms": journal.now_ms,
        "checkpoint": info.get("checkpoint_seq"),
        "entries_per_s": rates.now(journal.ledger),
        "chart": sparkline(rates.series(journal.ledger)),
        "locks_held": len(held),
        "soonest_expiry_in_ms": None if soonest is None else soonest - now_ms,
        "intact": journal.intact,
    }


def sparkline(series: list[float], width: int = 150, height: int = 24, peak: float | None = None) -> str:
    """An SVG polyline's points for `series`, the window's full width, `peak` (by default
    the series' own) at the top."""
    if not series:
        return ""
    peak = peak or max(max(series), 1.0)
    step = width / RATE_WINDOW_S
    left = width - step * (len(series) - 1)
    return " ".join(f"{left + i * step:.1f},{height - value * height / peak:.1f}" for i, value in enumerate(series))


def alert(violation: Violation) -> dict:
    return {
        "kind": violation.kind.value,
        "settlement": violation.settlement,
        "ledgers": list(violation.ledgers),
        "text": violation.text(),
    }


def holders(journals: Mapping[str, LedgerJournal], asset: str) -> dict:
    """An asset (a security's ISIN, a currency) on every ledger that has it: each holding,
    and each ledger's issued total against the total held there, which must be equal, and
    both summed over every ledger."""
    ledgers = []
    outstanding_everywhere = held_everywhere = 0
    for ledger, journal in journals.items():
        replay = journal.replay
        if asset not in replay.assets:
            continue
        issued, redeemed = replay.supply.get(asset, (0, 0))
        holdings = [
            (account, balance)
            for (account, code), balance in sorted(replay.balances.items())
            if code == asset and (balance[0] or balance[1])
        ]
        rows = [
            {"account": account, "owner": replay.accounts.get(account, ""), "available": available, "locked": locked}
            for account, (available, locked) in holdings
        ]
        held = sum(available + locked for _, (available, locked) in holdings)
        ledgers.append({"ledger": ledger, "outstanding": issued - redeemed, "held": held, "holdings": rows})
        outstanding_everywhere += issued - redeemed
        held_everywhere += held
    return {"asset": asset, "ledgers": ledgers, "outstanding": outstanding_everywhere, "held": held_everywhere}


def positions(journals: Mapping[str, LedgerJournal], party: str) -> dict:
    """A participant's accounts on every ledger, each with its balances by asset."""
    ledgers = []
    for ledger, journal in journals.items():
        replay = journal.replay
        accounts = sorted(account for account, owner in replay.accounts.items() if owner == party)
        rows = [
            {"account": account, "asset": code, "available": held[0], "locked": held[1]}
            for (account, code), held in sorted(replay.balances.items())
            if account in accounts and (held[0] or held[1])
        ]
        if accounts:
            ledgers.append({"ledger": ledger, "accounts": accounts, "balances": rows})
    return {"party": party, "ledgers": ledgers}


def assets(journals: Mapping[str, LedgerJournal]) -> list[str]:
    """Every asset some ledger has, for the holders view's index."""
    return sorted({code for journal in journals.values() for code in journal.replay.assets})


def parties(journals: Mapping[str, LedgerJournal]) -> list[str]:
    return sorted({owner for journal in journals.values() for owner in journal.replay.accounts.values()})


def settlement(
    settlement_id: str,
    entries: Iterable[tuple[str, Signed, str]],
    keys: Mapping[str, ec.EllipticCurvePublicKey],
    journals: Mapping[str, LedgerJournal],
) -> dict:
    """A settlement drilled down from its journal entries on every ledger: each leg's lock
    (terms, placed, ended, expiry, backstop), each entry with its ledger's signature
    verified here and now, and two waterfalls drawn to scale: the settlement's life, and
    its time-locks with the margin Δ between the legs' backstops."""
    rows = []
    legs: dict[int, dict] = {}
    for ledger, signed, hash_ in entries:
        entry: Entry = signed.msg
        sig = signed.sigs.get(ledger)
        verified = sig is not None and ledger in keys and signed.signed_by(ledger, keys[ledger])
        rows.append(
            {
                "ledger": ledger,
                "seq": entry.seq,
                "kind": entry.kind,
                "time_ms": entry.time_ms,
                "hash": hash_,
                "signature": sig.hex() if isinstance(sig, bytes) else "(in a signed batch)",
                "verified": verified,
                "instruction": (entry.instruction or {}).get("id", "(the ledger's own)"),
            }
        )
        for lock, state in _locks_of(entry, settlement_id):
            leg = legs.setdefault(int(lock.rpartition(":")[2]), {"lock": lock, "ledger": ledger, "ended": None})
            if entry.kind == "lock" and entry.instruction is not None:
                terms = entry.instruction
                leg.update(
                    placed_ms=entry.time_ms,
                    asset=terms["asset"],
                    amount=terms["amount"],
                    payer=terms["owner_account"],
                    payee=terms["beneficiary_account"],
                    expiry_ms=terms["expiry_ms"],
                    backstop_ms=terms.get("backstop_ms"),
                )
            if state in ENDED:
                leg["ended"] = {"how": state, "time_ms": entry.time_ms}
    for leg in legs.values():
        held = journals[leg["ledger"]].replay.locks.get(leg["lock"]) if leg["ledger"] in journals else None
        leg["state"] = held.state.value if held is not None else (leg["ended"] or {}).get("how", "unknown")
    ordered = [legs[index] for index in sorted(legs)]
    return {
        "settlement": settlement_id,
        "legs": ordered,
        "entries": sorted(rows, key=lambda row: (row["time_ms"], row["ledger"], row["seq"])),
        "life": _life(ordered, rows),
        "locks": _time_locks(ordered),
    }


ENDED = ("claimed", "cancelled", "refunded", "aborted")
FINAL_PHASES = ("settled", "one-legged", "rolled back")
LEGS = 2  # a DvP's or a PvP's legs (a repo is two linked DvPs); a linked settlement has its netted legs


def advices(items: Iterable[dict]) -> list[dict]:
    """A settlement's ISO 20022 advices as the page lists them, oldest first: whose, what
    status, which document, and why (its reason codes and narrative)."""
    rows = []
    for item in sorted(items, key=lambda item: item["seq"]):
        codes, narrative = reasons(item["document"])
        rows.append({**item, "codes": "/".join(codes), "narrative": narrative})
    return rows


def phase(settlement_id: str, entries: Iterable[tuple[str, Signed, str]], decision: str | None) -> str:
    """Where a settlement is, as its ledgers' journals (and its coordinator's published
    decision, when heard) show it."""
    locks: dict[str, str] = {}
    told: int | None = None  # its legs, as its first lock tells them
    for _, signed, _ in entries:
        for lock, state in _locks_of(signed.msg, settlement_id):
            if locks.get(lock) not in ENDED:
                locks[lock] = state
        if told is None:
            told = _legs(signed.msg)
    legs = told or LEGS
    states = list(locks.values())
    claimed = states.count("claimed")
    ended = bool(states) and all(state in ENDED for state in states)
    if ended and len(states) == legs:
        return "settled" if claimed == legs else "one-legged" if claimed else "rolled back"
    if ended and not claimed and decision == "abort":  # the other leg never locked, and never will be
        return "rolled back"
    if claimed:
        return "claiming"
    if decision == "abort" or any(state in ENDED for state in states):
        return "rolling back"
    if decision == "commit":
        return "decided"
    return "locked" if len(states) == legs else "locking"


def _legs(entry: Entry) -> int | None:
    """A settlement's legs, as a coordinator's lock tells them (its documents read only
    for a linked settlement's); None for any other entry."""
    auth = entry.instruction.get("auth") if entry.kind == "lock" and entry.instruction is not None else None
    if not isinstance(auth, dict):
        return None
    return len(terms_of(auth, None).legs) if auth.get("type") == "linked" else LEGS


def settled_in(entries: Iterable[tuple[str, Signed, str]]) -> int:
    """From a settlement's first entry to its last, in ms of the ledgers' clocks."""
    times = [signed.msg.time_ms for _, signed, _ in entries]
    return max(times) - min(times)


WATERFALL_WIDTH = 720


def _locks_of(entry: Entry, settlement_id: str) -> list[tuple[str, str]]:
    """The settlement's locks this entry placed or ended, each with the state it left."""
    found = [(lock, state) for lock, state in entry.effects.get("locks", ())]
    if entry.kind == "lock" and entry.instruction is not None:
        found.append((entry.instruction["id"], "held"))
    return [(lock, state) for lock, state in dict.fromkeys(found) if lock.rpartition(":")[0] == settlement_id]


def _scale(start_ms: int, end_ms: int):
    span = max(end_ms - start_ms, 1)
    return lambda ms: round((ms - start_ms) * WATERFALL_WIDTH / span, 1)


def _life(legs: list[dict], rows: list[dict]) -> dict:
    """Each leg's lock from placed to ended, on one scale from the first entry to the last."""
    times = [row["time_ms"] for row in rows]
    if not times:
        return {"bars": [], "span_ms": 0}
    start, end = min(times), max(times)
    x = _scale(start, end)
    bars = []
    for index, leg in enumerate(legs):
        if "placed_ms" not in leg:
            continue
        ended = leg["ended"]["time_ms"] if leg["ended"] else end
        bars.append(
            {
                "y": index * 28,
                "x": x(leg["placed_ms"]),
                "width": max(x(ended) - x(leg["placed_ms"]), 2),
                "label": f"leg {index} on {leg['ledger']}: {leg['ended']['how'] if leg['ended'] else 'held'}",
                "at_ms": [leg["placed_ms"] - start, ended - start],
            }
        )
    return {"bars": bars, "span_ms": end - start, "height": 28 * max(len(legs), 1)}


def _time_locks(legs: list[dict]) -> dict:
    """Each leg's expiry and backstop on one scale from the first lock placed, and Δ,
    the time leg 1's backstop (or expiry, for time-locks) outlives leg 0's."""
    placed = [leg for leg in legs if "placed_ms" in leg]
    if not placed:
        return {"marks": [], "margin_ms": None}
    start = min(leg["placed_ms"] for leg in placed)
    refunds = [leg["backstop_ms"] or leg["expiry_ms"] for leg in placed]
    x = _scale(start, max(refunds + [leg["expiry_ms"] for leg in placed]))
    marks = []
    for index, leg in enumerate(placed):
        marks.append({"y": index * 28, "x": x(leg["expiry_ms"]), "what": "expiry", "at_ms": leg["expiry_ms"] - start})
        if leg["backstop_ms"]:
            marks.append(
                {"y": index * 28, "x": x(leg["backstop_ms"]), "what": "backstop", "at_ms": leg["backstop_ms"] - start}
            )
    margin = refunds[1] - refunds[0] if len(refunds) == 2 else None
    bracket = {"x0": x(refunds[0]), "x1": x(refunds[1])} if margin is not None else None
    return {"marks": marks, "margin_ms": margin, "bracket": bracket, "height": 28 * len(placed)}


def provenance(journal: LedgerJournal, account: str, asset: str) -> dict:
    """Where an account's units of an asset came from, lot by lot: each lot's issue and
    every entry that moved it (the token view), beside its balance."""
    tokens = journal.tokens
    pieces = tokens.holding(account, asset) if tokens is not None else []
    available = journal.replay.balances.get((account, asset), [0, 0])[0]
    lots = sum(piece.amount for piece in pieces)
    return {
        "ledger": journal.ledger,
        "account": account,
        "asset": asset,
        "available": format_amount(asset, available),
        "lots": [_lot(tokens, asset, piece) for piece in pieces] if tokens is not None else [],
        "agrees": tokens is not None and lots == available,
        "problems": [str(problem) for problem in journal.problems],
    }


def issuance(journal: LedgerJournal, seq: int) -> dict | None:
    """Where an issue's units are now, lot by lot; None if entry `seq` is no issue."""
    tokens = journal.tokens
    if tokens is None or tokens.kinds.get(seq) != "issue":
        return None
    found = list(tokens.issuance(f"{journal.ledger}:{seq}"))
    asset = next(asset for _, asset, _ in found if asset)
    return {
        "ledger": journal.ledger,
        "seq": seq,
        "asset": asset,
        "issued": format_amount(asset, sum(piece.amount for _, _, piece in found)),
        "places": [{"pocket": pocket, **_lot(tokens, asset, piece)} for pocket, _, piece in found],
    }


def _lot(tokens: Tokens, asset: str, piece: Piece) -> dict:
    origin_seq = int(piece.origin.rpartition(":")[2])
    return {
        "origin": piece.origin,
        "origin_seq": origin_seq,
        "amount": format_amount(asset, piece.amount),
        "path": [{"seq": seq, "kind": tokens.kinds.get(seq, "")} for seq in piece.path],
    }
