"""The repo desk: a repurchase agreement settled as two linked DvPs (protocols.repo).

It checks the link, journals the repo, settles the start leg through the coordinator's
driver and, only if it settled, the reverse leg, which the driver holds until its
`not_before_ms` (the term). If the start does not settle, the reverse is journaled in
the coordinator's journal as failed without being sent, so the same settlement sent on
its own later gets that record and never runs. A reverse refused at term is rolled back
by the driver (both locks released) and the repo reports the ledger's reason.

The repo's row is written before each step; a restart continues from the state it holds,
and `Coordinator.settle` runs each leg once however often it is asked."""

from __future__ import annotations

import json
import logging

from protocols.authority import terms_of
from protocols.canonical import encode
from protocols.errors import Code, Rejected
from protocols.messages import QueryRepo, Repo, RepoStatus, Settlement, readable_id
from protocols.repo import FINAL, RepoState, check_link, check_transition
from protocols.settlement import Phase
from protocols.signing import Signed, from_wire

from ..coordinator.journal import Record
from .base import Desk, Units

log = logging.getLogger("lockstep.repo")


class RepoDesk(Desk):
    messages = (Repo, QueryRepo)

    def __init__(self, coordinator) -> None:
        super().__init__(coordinator)
        self._repos = Units(self._db, "repos", "repo", RepoState, check_transition, "repo")

    async def _resume(self) -> None:
        for repo_id in self._repos.unfinished(tuple(FINAL)):
            log.info("resuming repo %s", repo_id)
            self._reserve(repo_id)
            self._serve(repo_id)

    # -- intake ---------------------------------------------------------------------------

    async def _reply(self, signed: Signed) -> bytes:
        if isinstance(signed.msg, QueryRepo):
            if self._repos.get(signed.msg.repo_id) is None:
                raise Rejected(Code.INVALID_FIELD, "repo_id", f"no repo {signed.msg.repo_id!r}")
            return self.status(signed.msg.repo_id)
        return self.accept(signed)

    def _refusal(self, payload: bytes, error: Rejected) -> RepoStatus:
        return RepoStatus(
            self.coordinator.id,
            readable_id(payload, ("repo_id", "id")),
            "rejected",
            self.coordinator.clock.now_ms(),
            reason_code=error.code.value,
            reason=f"{error.field}: {error.reason}",
        )

    def accept(self, signed: Signed) -> bytes:
        """Check a repo and journal it; its status at once (the start is being settled)."""
        repo: Repo = signed.msg
        wire = encode(signed.wire()).decode()
        known = self._repos.get(repo.id)
        if known is not None:
            if known[0] != wire:
                raise Rejected(Code.ID_REUSED, "id", f"repo {repo.id} was sent with other content")
            return self.status(repo.id)
        self._check(signed)
        self._repos.add(repo.id, wire, RepoState.PENDING, self.coordinator.clock.now_ms())
        self._reserve(repo.id)
        self._serve(repo.id)
        return self.status(repo.id)

    def _check(self, signed: Signed) -> None:
        repo: Repo = signed.msg
        coordinator = self.coordinator
        if repo.coordinator != coordinator.id:
            raise Rejected(Code.WRONG_LEDGER, "coordinator", f"this is coordinator {coordinator.id!r}")
        legs = {}
        for field in ("start", "reverse"):
            try:
                terms = terms_of(getattr(repo, field), coordinator.registry)
                if terms.kind != "settlement":
                    raise Rejected(Code.INVALID_FIELD, "type", "each leg of a repo is a settlement both parties signed")
                coordinator.validate(terms)
            except Rejected as error:
                raise Rejected(error.code, f"{field}.{error.field.removeprefix('auth.')}", error.reason) from None
            legs[field] = from_wire(getattr(repo, field), allowed=(Settlement,)).msg
        check_link(legs["start"], legs["reverse"], coordinator.id)
        if coordinator.journal.get(legs["reverse"].id) is not None:
            raise Rejected(Code.ID_REUSED, "reverse.id", f"settlement {legs['reverse'].id} was sent on its own already")
        coordinator.registry.verify_all(signed)
        if not set(signed.sigs) & set(legs["start"].parties):
            raise Rejected(Code.MISSING_SIGNATURE, "sigs", "a repo is sent signed by one of its two parties")

    # -- the two legs -------------------------------------------------------------------------

    def _reserve(self, repo_id: str) -> None:
        """The reverse leg runs only from here: at term, and only after the start settled."""
        repo: Repo = from_wire(json.loads(self._repos.known(repo_id)[0]), allowed=(Repo,)).msg
        self.coordinator.reserve(terms_of(repo.reverse, None).id, f"the reverse leg of repo {repo_id}")

    async def _carry_out(self, repo_id: str) -> None:
        wire, state = self._repos.known(repo_id)[:2]
        repo: Repo = from_wire(json.loads(wire), allowed=(Repo,)).msg
        if state is RepoState.PENDING:
            start = await self._settle(repo.start)
            if start.phase is Phase.SETTLED:
                state = self._to(repo_id, state, RepoState.OPEN)
            else:
                await self._cancel(repo.reverse, start)
                state = self._to(
                    repo_id,
                    state,
                    RepoState.START_FAILED,
                    start.reason_code or start.phase.value,
                    f"start {start.settlement_id} {start.phase.value}: {start.reason}",
                )
        if state is RepoState.OPEN:
            reverse = await self._settle(repo.reverse)
            if reverse.phase is Phase.SETTLED:
                state = self._to(repo_id, state, RepoState.CLOSED)
            else:
                state = self._to(
                    repo_id,
                    state,
                    RepoState.REVERSE_FAILED,
                    reverse.reason_code or reverse.phase.value,
                    f"reverse {reverse.settlement_id} {reverse.phase.value}: {reverse.reason}",
                )
        log.info("repo %s %s", repo_id, state.value)

    async def _settle(self, leg: dict) -> Record:
        """A leg's final record; a leg the driver refuses outright (its deadline gone while
        the coordinator was down, say) is a failed record of the same id."""
        try:
            return await self.coordinator.settle(leg)
        except Rejected as error:
            settlement_id = terms_of(leg, None).id
            now_ms = self.coordinator.clock.now_ms()
            return Record(settlement_id, encode(leg), Phase.PENDING, steps=(("pending", now_ms),)).to(
                Phase.FAILED, now_ms, reason_code=error.code.value, reason=f"{error.field}: {error.reason}"
            )

    async def _cancel(self, reverse: dict, start: Record) -> None:
        """Journal the reverse as failed in the coordinator's journal, never sent, unless
        the coordinator already knows it (sent on its own: then it runs as sent)."""
        settlement_id = terms_of(reverse, None).id
        if self.coordinator.journal.get(settlement_id) is not None:
            return
        now_ms = self.coordinator.clock.now_ms()
        record = Record(settlement_id, encode(reverse), Phase.PENDING, steps=(("pending", now_ms),))
        await self.coordinator.journal.save(
            record.to(
                Phase.FAILED,
                now_ms,
                reason_code=start.reason_code or start.phase.value,
                reason=f"cancelled: the repo's start {start.settlement_id} ended {start.phase.value}",
            )
        )

    def _to(self, repo_id: str, current: RepoState, following: RepoState, *reason: str) -> RepoState:
        return self._repos.to(repo_id, current, following, self.coordinator.clock.now_ms(), *reason)

    def status(self, repo_id: str) -> bytes:
        wire, state, reason_code, reason, _ = self._repos.known(repo_id)
        repo: Repo = from_wire(json.loads(wire), allowed=(Repo,)).msg
        phases = []
        for leg in (repo.start, repo.reverse):
            record = self.coordinator.journal.get(terms_of(leg, None).id)
            phases.append("" if record is None else record.phase.value)
        return self.coordinator.sign(
            RepoStatus(
                self.coordinator.id,
                repo_id,
                state.value,
                self.coordinator.clock.now_ms(),
                phases[0],
                phases[1],
                reason_code,
                reason,
            )
        )
