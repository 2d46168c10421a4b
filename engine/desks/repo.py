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
from contextlib import closing

import trio

from protocols.authority import terms_of
from protocols.bus import Request
from protocols.canonical import encode
from protocols.errors import Code, Rejected
from protocols.messages import QueryRepo, Repo, RepoStatus, Settlement, readable_id
from protocols.repo import FINAL, RepoState, check_link, check_transition
from protocols.settlement import Phase
from protocols.signing import Signed, from_wire

from ..coordinator import schema
from ..coordinator.journal import Record

log = logging.getLogger("lockstep.repo")


class RepoDesk:
    messages = (Repo, QueryRepo)

    def __init__(self, coordinator) -> None:
        self.coordinator = coordinator
        self._db = schema.connect(coordinator.journal.path)
        self._nursery: trio.Nursery | None = None
        self._serving: set[str] = set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with closing(self._db):
            await self._work(task_status)

    async def _work(self, task_status) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            final = tuple(state.value for state in FINAL)
            rows = self._db.execute(
                f"SELECT id FROM repos WHERE state NOT IN ({', '.join('?' * len(final))}) ORDER BY id", final
            ).fetchall()
            for (repo_id,) in rows:
                log.info("resuming repo %s", repo_id)
                self._reserve(repo_id)
                self._serve(repo_id)
            task_status.started()
            await trio.sleep_forever()

    # -- intake ---------------------------------------------------------------------------

    async def answer(self, signed: Signed, request: Request) -> bytes:
        try:
            if isinstance(signed.msg, QueryRepo):
                if self._row(signed.msg.repo_id) is None:
                    raise Rejected(Code.INVALID_FIELD, "repo_id", f"no repo {signed.msg.repo_id!r}")
                return self.status(signed.msg.repo_id)
            return self.accept(signed)
        except Rejected as error:
            return self.coordinator.sign(
                RepoStatus(
                    self.coordinator.id,
                    readable_id(request.payload, ("repo_id", "id")),
                    "rejected",
                    self.coordinator.clock.now_ms(),
                    reason_code=error.code.value,
                    reason=f"{error.field}: {error.reason}",
                )
            )

    def accept(self, signed: Signed) -> bytes:
        """Check a repo and journal it; its status at once (the start is being settled)."""
        repo: Repo = signed.msg
        wire = encode(signed.wire()).decode()
        known = self._row(repo.id)
        if known is not None:
            if known[0] != wire:
                raise Rejected(Code.ID_REUSED, "id", f"repo {repo.id} was sent with other content")
            return self.status(repo.id)
        self._check(signed)
        now_ms = self.coordinator.clock.now_ms()
        self._db.execute(
            "INSERT INTO repos VALUES (?, ?, ?, '', '', ?)",
            (repo.id, wire, RepoState.PENDING.value, json.dumps([[RepoState.PENDING.value, now_ms]])),
        )
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
        repo: Repo = from_wire(json.loads(self._known(repo_id)[0]), allowed=(Repo,)).msg
        self.coordinator.reserve(terms_of(repo.reverse, None).id, f"the reverse leg of repo {repo_id}")

    def _serve(self, repo_id: str) -> None:
        assert self._nursery is not None, "the desk is not running"
        if repo_id not in self._serving:
            self._serving.add(repo_id)
            self._nursery.start_soon(self._carry_out, repo_id)

    async def _carry_out(self, repo_id: str) -> None:
        wire, state = self._known(repo_id)[:2]
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

    # -- the table -------------------------------------------------------------------------------

    def _known(self, repo_id: str) -> tuple[str, RepoState, str, str, list]:
        """A repo this desk has journaled."""
        found = self._row(repo_id)
        assert found is not None, f"repo {repo_id} is not journaled"
        return found

    def _row(self, repo_id: str) -> tuple[str, RepoState, str, str, list] | None:
        row = self._db.execute(
            "SELECT repo, state, reason_code, reason, steps FROM repos WHERE id = ?", (repo_id,)
        ).fetchone()
        if row is None:
            return None
        wire, state, reason_code, reason, steps = row
        return wire, RepoState(state), reason_code, reason, json.loads(steps)

    def _to(
        self, repo_id: str, current: RepoState, following: RepoState, reason_code: str = "", reason: str = ""
    ) -> RepoState:
        check_transition(current, following)
        steps = self._known(repo_id)[4] + [[following.value, self.coordinator.clock.now_ms()]]
        changed = self._db.execute(
            "UPDATE repos SET state = ?, reason_code = ?, reason = ?, steps = ? WHERE id = ? AND state = ?",
            (following.value, reason_code, reason, json.dumps(steps), repo_id, current.value),
        )
        assert changed.rowcount == 1, f"repo {repo_id} was not {current.value}"
        return following

    def status(self, repo_id: str) -> bytes:
        wire, state, reason_code, reason, _ = self._known(repo_id)
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
