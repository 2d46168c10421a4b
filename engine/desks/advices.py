"""The matching desk's advices: each party's ISO 20022 status advices and confirmations,
numbered, in the coordinator's database, written in the transaction of the step they
tell of; read by the party itself (`query_advices`) or by the supervisor, every party's
of one settlement (`query_settlement_advices`), each answer signed by the coordinator."""

from __future__ import annotations

from typing import Any

from protocols import matching
from protocols.iso20022 import pacs002, sese024, sese025
from protocols.iso20022.model import (
    PACS_002,
    PACS_009,
    SESE_024,
    SESE_025,
    Advice,
    Confirmation,
    OneSided,
    Part,
    Problem,
)
from protocols.messages import Advices, SettlementAdvices, SettlementInstruction

PAGE_MAX = 100
MEMBERS = ("seq", "instruction_id", "settlement_id", "status", "format", "document")  # an advices item's


class AdviceBook:
    def __init__(self, db: Any, coordinator: Any) -> None:
        self._db, self._coordinator = db, coordinator

    def advise(
        self,
        msg: SettlementInstruction,
        one: OneSided | None,
        status: str,
        settlement_id: str | None,
        code: str,
        reason: str,
        now_ms: int,
        problems: tuple[Problem, ...] = (),
    ) -> None:
        """A status advice (sese.024; pacs.002 for a PvP); `one` None where the document
        could not be read."""
        advice = Advice(
            msg.party, one.reference if one else msg.id, settlement_id, status, code, reason, now_ms, one, problems
        )
        self._store(msg, status, settlement_id, *self._document(advice, msg.format, SESE_024, sese024), now_ms)

    def confirm(
        self,
        msg: SettlementInstruction,
        one: OneSided,
        settlement_id: str,
        settled_ms: int,
        now_ms: int,
        part: Part | None = None,
    ) -> None:
        """A settlement confirmation (sese.025, of a part too; pacs.002 ACSC for a PvP)."""
        confirmation = Confirmation(msg.party, one.reference, settlement_id, one, settled_ms, part)
        self._store(msg, "settled", settlement_id, *self._document(confirmation, msg.format, SESE_025, sese025), now_ms)

    def page(self, party: str, from_seq: int, limit: int) -> bytes:
        """`query_advices`' answer: the party's advices from a position on."""
        rows = self._db.execute(
            "SELECT seq, instruction_id, settlement_id, status, format, document FROM advices "
            "WHERE party = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (party, from_seq, min(limit, PAGE_MAX)),
        ).fetchall()
        items = tuple(dict(zip(MEMBERS, row, strict=True)) for row in rows)
        coordinator = self._coordinator
        return coordinator.sign(Advices(coordinator.id, party, coordinator.clock.now_ms(), items))

    def latest(self, party: str, instruction_id: str) -> bytes:
        """The answer holding an instruction's latest advice."""
        seq = self._db.execute(
            "SELECT max(seq) FROM advices WHERE party = ? AND instruction_id = ?", (party, instruction_id)
        ).fetchone()[0]
        return self.page(party, seq, 1)

    def of_settlement(self, settlement_id: str) -> bytes:
        """`query_settlement_advices`' answer: every advice of the settlement's (its
        pair's) instructions, from the first (unmatched) on."""
        rows = self._db.execute(
            "SELECT a.party, a.seq, a.instruction_id, a.settlement_id, a.status, a.format, a.document "
            "FROM instructions AS i JOIN advices AS a ON a.party = i.party AND a.instruction_id = i.id "
            "WHERE i.settlement_id = ? ORDER BY a.seq",
            (matching.pair_of(settlement_id),),
        ).fetchall()
        items = tuple(dict(zip(("party", *MEMBERS), row, strict=True)) for row in rows)
        coordinator = self._coordinator
        return coordinator.sign(SettlementAdvices(coordinator.id, settlement_id, coordinator.clock.now_ms(), items))

    def _document(self, outcome: Advice | Confirmation, instructed_in: str, fmt: str, writer) -> tuple[str, bytes]:
        """A DvP's outcome in its sese message; a PvP's as a pacs.002 payment status."""
        if instructed_in == PACS_009:
            coordinator = self._coordinator
            return PACS_002, pacs002.write(outcome, sender=coordinator.id, now_ms=coordinator.clock.now_ms())
        return fmt, writer.write(outcome)

    def _store(
        self, msg: SettlementInstruction, status: str, settlement_id: str | None, fmt: str, document: bytes, now_ms: int
    ) -> None:
        self._db.execute(
            "INSERT INTO advices (party, instruction_id, settlement_id, status, format, document, time_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (msg.party, msg.id, settlement_id, status, fmt, document.decode(), now_ms),
        )
