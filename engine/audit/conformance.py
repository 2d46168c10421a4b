"""`lockstep conformance`: check any ledger service over the bus against docs/PROTOCOL.md.

It needs only a broker, the ledger's id and a folder holding the consortium registry
(`registry.toml`) and the private keys (`keys/<party>.pem`) of the parties it acts as:
the ledger's operator, the issuer of one of its currencies (for a CBDC or unified
ledger), and two participants. It creates its own accounts (and, on a securities
ledger, its own instrument) with fresh ids, so it can run against a live ledger, more
than once. One line per check, a summary, exit status 1 on any failure."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from protocols import canonical
from protocols.bus import BusTimeout, entries_topic
from protocols.bus.client import REPLY_BYTES_MAX, BadReply, LedgerClient
from protocols.bus.follow import event_entries
from protocols.bus.mqtt import MqttBus
from protocols.envelope import is_batch, open_batch, seal
from protocols.errors import Code, Rejected
from protocols.failures import ExpectedFailure
from protocols.htlc import hashlock_of
from protocols.identifiers import make_isin
from protocols.journal import Link, verify_chain
from protocols.messages import (
    Abort,
    Cancel,
    Claim,
    CreateInstrument,
    Instruction,
    Issue,
    Leg,
    Lock,
    OpenAccount,
    QueryBalances,
    QueryInfo,
    QueryJournal,
    QueryLock,
    QueryLocks,
    QueryReceipt,
    Receipt,
    Refund,
    Result,
    Settle,
    Transfer,
    to_body,
)
from protocols.registry import Registry, Role
from protocols.signing import PrivateKey, Signed, sign, signing_bytes, unsigned

EXPIRY_WAIT_MS = 1500


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@attrs.define
class Suite:
    """What the checks share: the client, who signs for whom, fresh ids, the asset."""

    client: LedgerClient
    bus: Any
    ledger_id: str
    registry: Registry
    keys: dict[str, PrivateKey]
    operator: str = ""
    issuer: str = ""  # who signs issuance of `asset`
    asset: str = ""
    alice: str = ""  # two participants and their fresh accounts
    bob: str = ""
    alice_account: str = ""
    bob_account: str = ""
    clock_offset_ms: int = 0
    run_id: str = attrs.field(factory=lambda: secrets.token_hex(4))
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"cf-{self.run_id}-{prefix}{self.counter}"

    def now_ms(self) -> int:
        """Our estimate of the ledger's clock, so ts_ms and expiries suit it."""
        return time.time_ns() // 1_000_000 + self.clock_offset_ms

    def signed(self, cls: type[Instruction], *signers: str, **fields) -> Signed[Instruction]:
        fields.setdefault("id", self.fresh(cls.TYPE[:2]))
        fields.setdefault("ledger", self.ledger_id)
        fields.setdefault("ts_ms", self.now_ms())
        return sign(cls(**fields), *((party, self.keys[party]) for party in signers))

    async def send(self, cls: type, *signers: str, **fields) -> Receipt:
        return await self.client.submit(self.signed(cls, *signers, **fields))

    async def balance(self, account: str) -> tuple[int, int]:
        value = await self.client.query(QueryBalances(self.fresh("q"), self.ledger_id, account))
        entry = value["balances"].get(self.asset, {"available": 0, "locked": 0})
        return entry["available"], entry["locked"]


def applied(receipt: Receipt, what: str) -> None:
    expect(receipt.applied, f"{what}: refused with {receipt.code} on {receipt.field}: {receipt.reason}")


def refused(receipt: Receipt | Result, code: Code, field: str | None = None) -> None:
    if not isinstance(receipt, Receipt):
        raise CheckFailed(f"expected {code.value}, but an instruction was answered with a query's result")
    expect(not receipt.applied, f"expected {code.value}, but it was applied")
    expect(receipt.code == code.value, f"expected {code.value}, got {receipt.code} ({receipt.reason})")
    if field is not None:
        expect(receipt.field == field, f"expected field {field!r}, got {receipt.field!r}")


# -- the checks, in order; later ones rely on the accounts and funds of earlier ones --------


async def info_answers(s: Suite) -> None:
    info = await s.client.query(QueryInfo(s.fresh("q"), s.ledger_id))
    expect(info["ledger"] == s.ledger_id, f"info names ledger {info['ledger']!r}")
    s.operator = info["operator"]
    expect(s.operator in s.keys, f"need the key of the operator {s.operator!r}")
    participants = [
        p.id
        for p in s.registry
        if Role.PARTICIPANT in p.roles and p.id in s.keys and Role.CENTRAL_BANK not in p.roles and p.id != s.operator
    ]
    expect(len(participants) >= 2, "need the keys of two participants")
    s.alice, s.bob = participants[:2]
    currencies = [a for a in info["assets"] if a["kind"] == "currency" and a["issuer"] in s.keys]
    if currencies:
        s.asset, s.issuer = currencies[0]["code"], currencies[0]["issuer"]
    else:
        expect(info["role"] in ("securities", "unified"), "need the key of a currency's central bank")
        s.asset, s.issuer = make_isin("XC" + secrets.token_hex(5)[:9].upper()), s.operator


async def accounts_open(s: Suite) -> None:
    s.alice_account, s.bob_account = s.fresh("acct-a"), s.fresh("acct-b")
    applied(await s.send(OpenAccount, s.operator, account=s.alice_account, owner=s.alice), "open by operator")
    applied(await s.send(OpenAccount, s.bob, account=s.bob_account, owner=s.bob), "open by its owner")
    refused(
        await s.send(OpenAccount, s.operator, account=s.alice_account, owner=s.alice), Code.ACCOUNT_EXISTS, "account"
    )
    refused(await s.send(OpenAccount, s.alice, account=s.fresh("acct"), owner=s.bob), Code.NOT_AUTHORISED)


async def issuance_is_the_issuers_alone(s: Suite) -> None:
    if len(s.asset) == 12:  # an instrument we create, issued by alice
        applied(
            await s.send(
                CreateInstrument,
                s.operator,
                isin=s.asset,
                issuer=s.alice,
                currency="EUR",
                face_value_minor=100_00,
                coupon_rate_bp=125,
                maturity_date="2035-06-30",
            ),
            "create instrument",
        )
        refused(await s.send(Issue, s.alice, asset=s.asset, account=s.alice_account, amount=1000), Code.NOT_AUTHORISED)
        refused(
            await s.send(Issue, s.operator, asset=s.asset, account=s.bob_account, amount=1000),
            Code.NOT_AUTHORISED,
            "account",
        )
        applied(await s.send(Issue, s.operator, asset=s.asset, account=s.alice_account, amount=10_000), "issue")
    else:
        refused(await s.send(Issue, s.alice, asset=s.asset, account=s.alice_account, amount=1000), Code.NOT_AUTHORISED)
        applied(await s.send(Issue, s.issuer, asset=s.asset, account=s.alice_account, amount=10_000), "mint")
    expect(await s.balance(s.alice_account) == (10_000, 0), "issued amount is not in the account")


async def transfer_moves_and_refuses(s: Suite) -> None:
    applied(
        await s.send(
            Transfer, s.alice, from_account=s.alice_account, to_account=s.bob_account, asset=s.asset, amount=1_000
        ),
        "transfer",
    )
    expect(await s.balance(s.bob_account) == (1_000, 0), "transfer did not arrive")
    refused(
        await s.send(
            Transfer, s.alice, from_account=s.alice_account, to_account=s.bob_account, asset=s.asset, amount=1_000_000
        ),
        Code.INSUFFICIENT_FUNDS,
        "amount",
    )
    refused(
        await s.send(Transfer, s.bob, from_account=s.alice_account, to_account=s.bob_account, asset=s.asset, amount=1),
        Code.NOT_AUTHORISED,
    )
    refused(
        await s.send(
            Transfer, s.alice, from_account=s.alice_account, to_account=s.fresh("none"), asset=s.asset, amount=1
        ),
        Code.UNKNOWN_ACCOUNT,
        "to_account",
    )
    expect(await s.balance(s.alice_account) == (9_000, 0), "a refused transfer changed a balance")


async def authentication_is_enforced(s: Suite) -> None:
    good = s.signed(Transfer, s.alice, from_account=s.alice_account, to_account=s.bob_account, asset=s.asset, amount=1)
    forged = Signed(good.msg, {s.alice: s.keys[s.bob].sign(signing_bytes(good.body))}, good.body)
    refused(await s.client.submit(forged), Code.BAD_SIGNATURE)
    stranger = Signed(good.msg, {"cf-nobody": good.sigs[s.alice]}, good.body)
    refused(await s.client.submit(stranger), Code.UNKNOWN_SIGNER)
    refused(await s.client.submit(Signed(good.msg, {}, good.body)), Code.MISSING_SIGNATURE)
    tampered = {**good.wire(), "amount": 2}
    refused(await s.client.submit_raw(canonical.encode(tampered)), Code.BAD_SIGNATURE)
    elsewhere = s.signed(
        Transfer,
        s.alice,
        ledger=s.ledger_id + "-other",
        from_account=s.alice_account,
        to_account=s.bob_account,
        asset=s.asset,
        amount=1,
    )
    refused(await s.client.submit(elsewhere), Code.WRONG_LEDGER, "ledger")
    stale = s.signed(
        Transfer,
        s.alice,
        ts_ms=s.now_ms() - 3_600_000,
        from_account=s.alice_account,
        to_account=s.bob_account,
        asset=s.asset,
        amount=1,
    )
    refused(await s.client.submit(stale), Code.STALE, "ts_ms")


async def malformed_messages_are_refused(s: Suite) -> None:
    body = to_body(Transfer(s.fresh("m"), s.ledger_id, s.now_ms(), s.alice_account, s.bob_account, s.asset, 1))
    cases = [
        (b"{not json", Code.MALFORMED),
        (b"\xff\xfe", Code.MALFORMED),
        (canonical.encode({**body, "type": "teleport"}), Code.UNKNOWN_TYPE),
        (canonical.encode({**body, "v": 99}), Code.UNSUPPORTED_VERSION),
        (canonical.encode({**body, "amount": 0}), Code.INVALID_FIELD),
        (canonical.encode({**body, "amount": "1"}), Code.MALFORMED),
        (canonical.encode({**body, "extra": 1}), Code.MALFORMED),
        (canonical.encode({k: v for k, v in body.items() if k != "asset"}), Code.MALFORMED),
        (canonical.encode(body).replace(b'"amount":1', b'"amount":1.5'), Code.MALFORMED),
        (canonical.encode(body).replace(b'"amount":1', b'"amount":9223372036854775808'), Code.INVALID_FIELD),
        (b"[" * 100 + b"]" * 100, Code.MALFORMED),
        (b'{"v":1,"v":1}', Code.MALFORMED),
        (b" " * (canonical.MESSAGE_BYTES_MAX + 1), Code.TOO_LARGE),
    ]
    for raw, code in cases:
        reply = await s.client.submit_raw(raw)
        expect(
            isinstance(reply, Receipt) and reply.code == code.value,
            f"{raw[:40]!r}...: expected {code.value}, got {getattr(reply, 'code', reply)}",
        )


async def instructions_are_idempotent(s: Suite) -> None:
    first = s.signed(
        Transfer, s.alice, from_account=s.alice_account, to_account=s.bob_account, asset=s.asset, amount=10
    )
    one, two = await s.client.submit(first), await s.client.submit(first)
    applied(one, "transfer")
    expect(one == two, "the same instruction sent twice got two different receipts")
    expect(await s.balance(s.bob_account) == (1_010, 0), "the same instruction was applied twice")
    again = s.signed(
        Transfer,
        s.alice,
        id=first.msg.id,
        ts_ms=first.msg.ts_ms,
        from_account=s.alice_account,
        to_account=s.bob_account,
        asset=s.asset,
        amount=11,
    )
    refused(await s.client.submit(again), Code.ID_REUSED, "amount")
    stored = await s.client.submit_raw(canonical.encode(to_body(QueryReceipt(s.fresh("q"), s.ledger_id, first.msg.id))))
    expect(stored == one, "query_receipt does not return the first receipt")


async def batches_apply_item_by_item(s: Suite) -> None:
    """Protocol version 2 (§4a): a batch signed once by alice, one item refused; one
    envelope of receipts back, each signed by the ledger's share, each judged alone;
    the same batch again applies nothing."""
    before = await s.balance(s.bob_account)
    items = [
        unsigned(Transfer(s.fresh("b"), s.ledger_id, s.now_ms(), s.alice_account, s.bob_account, s.asset, amount))
        for amount in (5, 1_000_000, 7)
    ]
    envelope = seal(items, s.alice, s.keys[s.alice])
    for attempt in ("first", "again"):
        reply = canonical.decode(await s.client.request(envelope), bytes_max=REPLY_BYTES_MAX)
        expect(is_batch(reply), f"a batch was answered with {str(reply)[:80]}, not a batch of receipts")
        _signer, receipts = open_batch(reply, allowed=(Receipt,))
        expect(len(receipts) == 3, f"three instructions got {len(receipts)} receipts")
        for item, receipt in zip(items, receipts, strict=True):
            expect(
                isinstance(receipt, Signed) and receipt.signed_by(s.ledger_id, s.client.ledger_key),
                f"{attempt}: a receipt in the batch is not signed by the ledger",
            )
            assert isinstance(receipt, Signed)
            expect(receipt.msg.instruction_id == item.msg.id, f"{attempt}: receipts out of order")
        first, overdrawn, third = (r.msg for r in receipts if isinstance(r, Signed))
        applied(first, f"{attempt}: first transfer of the batch")
        applied(third, f"{attempt}: third transfer of the batch")
        refused(overdrawn, Code.INSUFFICIENT_FUNDS, "amount")
        expect(
            await s.balance(s.bob_account) == (before[0] + 12, 0),
            f"{attempt}: the batch moved {(await s.balance(s.bob_account))[0] - before[0]}, not 12",
        )


def _lock(s: Suite, secret: bytes, expiry_ms: int, **fields) -> Signed:
    fields.setdefault("abort_by", ())
    return s.signed(
        Lock,
        s.alice,
        owner_account=s.alice_account,
        beneficiary_account=s.bob_account,
        asset=s.asset,
        amount=100,
        hashlock=hashlock_of(secret),
        expiry_ms=expiry_ms,
        **fields,
    )


async def locks_claim_with_the_secret_only(s: Suite) -> None:
    secret = secrets.token_bytes(32)
    lock = _lock(s, secret, s.now_ms() + 60_000)
    applied(await s.client.submit(lock), "lock")
    expect(await s.balance(s.alice_account) == (8_890, 100), "lock did not move available to locked")
    refused(
        await s.send(
            Transfer, s.alice, from_account=s.alice_account, to_account=s.bob_account, asset=s.asset, amount=8_891
        ),
        Code.INSUFFICIENT_FUNDS,
        "amount",
    )
    refused(
        await s.send(Claim, s.bob, lock_id=lock.msg.id, preimage=secrets.token_bytes(32)),
        Code.WRONG_PREIMAGE,
        "preimage",
    )
    applied(await s.send(Claim, s.operator, lock_id=lock.msg.id, preimage=secret), "claim by a third party")
    expect(await s.balance(s.bob_account) == (1_110, 0), "claim did not pay the beneficiary")
    expect(await s.balance(s.alice_account) == (8_890, 0), "claim did not release the lock")
    refused(await s.send(Claim, s.bob, lock_id=lock.msg.id, preimage=secret), Code.LOCK_NOT_HELD)
    view = await s.client.query(QueryLock(s.fresh("q"), s.ledger_id, lock.msg.id))
    expect(view["state"] == "claimed", f"lock is {view['state']}")


async def aborts_follow_the_lock_terms(s: Suite) -> None:
    first = _lock(s, secrets.token_bytes(32), s.now_ms() + 60_000)
    applied(await s.client.submit(first), "lock")
    refused(await s.send(Abort, s.alice, lock_id=first.msg.id), Code.NOT_AUTHORISED)
    applied(await s.send(Abort, s.bob, lock_id=first.msg.id), "abort by the beneficiary")
    second = _lock(s, secrets.token_bytes(32), s.now_ms() + 60_000, abort_by=(s.operator,))
    applied(await s.client.submit(second), "lock")
    applied(await s.send(Abort, s.operator, lock_id=second.msg.id), "abort by a party in abort_by")
    expect(await s.balance(s.alice_account) == (8_890, 0), "aborted locks were not returned")


async def expired_locks_refund_themselves(s: Suite) -> None:
    secret = secrets.token_bytes(32)
    expiry_ms = s.now_ms() + EXPIRY_WAIT_MS
    lock = _lock(s, secret, expiry_ms)
    applied(await s.client.submit(lock), "lock")
    refused(
        await s.send(
            Lock,
            s.alice,
            owner_account=s.alice_account,
            beneficiary_account=s.bob_account,
            asset=s.asset,
            amount=1,
            hashlock=hashlock_of(secret),
            expiry_ms=s.now_ms() - 1,
            abort_by=(),
        ),
        Code.EXPIRY_OUT_OF_RANGE,
        "expiry_ms",
    )
    listed = await s.client.query(QueryLocks(s.fresh("q"), s.ledger_id, expiry_ms + 1, 1000))
    expect(lock.msg.id in [entry["lock_id"] for entry in listed], "query_locks does not list the expiring lock")
    refused(await s.send(Refund, s.bob, lock_id=lock.msg.id), Code.LOCK_NOT_EXPIRED)
    async with s.bus.subscribe(entries_topic(s.ledger_id)) as entries:
        with trio.move_on_after(EXPIRY_WAIT_MS / 1000 + 5):
            async for raw in entries:
                if any(
                    entry["kind"] == "expire" and [lock.msg.id, "refunded"] in entry["effects"].get("locks", [])
                    for entry in event_entries(canonical.decode(raw, bytes_max=len(raw)))
                ):
                    break
        view = await s.client.query(QueryLock(s.fresh("q"), s.ledger_id, lock.msg.id))
    expect(view["state"] == "refunded", f"lock past expiry is {view['state']}, not refunded by the ledger")
    expect(await s.balance(s.alice_account) == (8_890, 0), "the refund did not return the asset")
    reply = await s.send(Claim, s.bob, lock_id=lock.msg.id, preimage=secret)
    expect(reply.code in (Code.LOCK_EXPIRED.value, Code.LOCK_NOT_HELD.value), f"late claim: {reply.code}")


async def decision_locks_end_by_their_preimages_until_the_backstop(s: Suite) -> None:
    """A lock with a cancel hashlock and a backstop: past its expiry it is still held and
    still claimed; the abort preimage cancels it, nobody aborts it; at its backstop the
    ledger refunds it by itself."""
    available, _ = await s.balance(s.alice_account)
    secret, cancel_secret = secrets.token_bytes(32), secrets.token_bytes(32)
    expiry_ms = s.now_ms() + EXPIRY_WAIT_MS // 3

    def decision_lock(backstop_ms: int) -> Signed:
        return _lock(s, secret, expiry_ms, cancel_hashlock=hashlock_of(cancel_secret), backstop_ms=backstop_ms)

    claimed, cancelled = decision_lock(s.now_ms() + 60_000), decision_lock(s.now_ms() + 60_000)
    refunded = decision_lock(s.now_ms() + EXPIRY_WAIT_MS)
    for lock in (claimed, cancelled, refunded):
        applied(await s.client.submit(lock), "decision lock")
    refused(await s.send(Abort, s.bob, lock_id=cancelled.msg.id), Code.NOT_AUTHORISED, "lock_id")
    refused(await s.send(Cancel, s.bob, lock_id=cancelled.msg.id, preimage=secret), Code.WRONG_PREIMAGE, "preimage")
    applied(
        await s.send(Cancel, s.operator, lock_id=cancelled.msg.id, preimage=cancel_secret), "cancel by a third party"
    )
    refused(await s.send(Claim, s.bob, lock_id=cancelled.msg.id, preimage=secret), Code.LOCK_NOT_HELD)
    await trio.sleep_until(trio.current_time() + (expiry_ms - s.now_ms()) / 1000 + 0.2)
    view = await s.client.query(QueryLock(s.fresh("q"), s.ledger_id, claimed.msg.id))
    expect(view["state"] == "held", f"a decision lock past its expiry is {view['state']}, not held until its backstop")
    applied(await s.send(Claim, s.bob, lock_id=claimed.msg.id, preimage=secret), "claim past the expiry")
    await trio.sleep_until(trio.current_time() + (refunded.msg.backstop_ms - s.now_ms()) / 1000 + 0.2)
    view = await s.client.query(QueryLock(s.fresh("q"), s.ledger_id, refunded.msg.id))
    expect(view["state"] == "refunded", f"a decision lock past its backstop is {view['state']}, not refunded")
    expect(await s.balance(s.alice_account) == (available - 100, 0), "decision locks did not end as their ends say")


async def settlement_is_all_or_nothing(s: Suite) -> None:
    both = (Leg(s.alice_account, s.bob_account, s.asset, 5), Leg(s.bob_account, s.alice_account, s.asset, 3))
    applied(await s.send(Settle, s.alice, s.bob, legs=both), "two-leg settlement")
    expect(await s.balance(s.alice_account) == (8_888, 0), "settlement legs did not both apply")
    too_much = (Leg(s.alice_account, s.bob_account, s.asset, 5), Leg(s.bob_account, s.alice_account, s.asset, 10**9))
    refused(await s.send(Settle, s.alice, s.bob, legs=too_much), Code.INSUFFICIENT_FUNDS, "legs[1].amount")
    refused(await s.send(Settle, s.alice, legs=both), Code.NOT_AUTHORISED)
    expect(await s.balance(s.alice_account) == (8_888, 0), "a refused settlement moved a leg")


async def journal_verifies(s: Suite) -> None:
    ledger_key = s.registry[s.ledger_id].public_key
    links, seq = [], 0
    while True:
        page = await s.client.query(QueryJournal(s.fresh("q"), s.ledger_id, seq, 200))
        for entry in page["entries"]:
            raw = canonical.encode(entry)
            body = {k: v for k, v in entry.items() if k != "sigs"}
            links.append(Link(entry["seq"], hashlib.sha256(signing_bytes(body)).hexdigest(), raw))
        if not page["entries"]:
            break
        seq = page["entries"][-1]["seq"] + 1
    checked = list(verify_chain(links, s.ledger_id, ledger_key, signatures="all"))
    expect(bool(checked), "the journal is empty")
    ids = {entry.msg.instruction["id"] for entry, _ in checked if entry.msg.instruction}
    expect(f"cf-{s.run_id}-" in " ".join(ids), "our instructions are not in the journal")
    info = await s.client.query(QueryInfo(s.fresh("q"), s.ledger_id))
    expect(info["head_hash"] == checked[-1][1], "the journal head does not match query_info")


CHECKS: list[Callable[[Suite], Awaitable[None]]] = [
    info_answers,
    accounts_open,
    issuance_is_the_issuers_alone,
    transfer_moves_and_refuses,
    authentication_is_enforced,
    malformed_messages_are_refused,
    instructions_are_idempotent,
    locks_claim_with_the_secret_only,
    aborts_follow_the_lock_terms,
    expired_locks_refund_themselves,
    settlement_is_all_or_nothing,
    decision_locks_end_by_their_preimages_until_the_backstop,
    batches_apply_item_by_item,
    journal_verifies,
]


def load_keys(directory: Path) -> tuple[Registry, dict[str, PrivateKey]]:
    if not directory.is_dir():
        raise ExpectedFailure(f"--keys {directory}", "no such folder")
    if not (directory / "keys").is_dir():
        raise ExpectedFailure(f"--keys {directory}", "holds no keys/ folder (keys/<party>.pem)")
    registry = Registry.load(directory / "registry.toml")
    keys = {path.stem: PrivateKey.load(path) for path in sorted((directory / "keys").glob("*.pem"))}
    return registry, keys


async def run_checks(
    bus: Any, ledger_id: str, registry: Registry, keys: dict[str, PrivateKey], out=print
) -> tuple[int, int]:
    """Run every check in order; stop at the first failure, since later checks build
    on earlier ones. Returns (passed, failed)."""
    party = registry.get(ledger_id)
    if party is None:
        out(f"FAIL  ledger {ledger_id!r} is not in the registry")
        return 0, 1
    suite = Suite(LedgerClient(bus, ledger_id, party.public_key, timeout_s=2.0), bus, ledger_id, registry, keys)
    reply = await suite.client.submit_raw(canonical.encode(to_body(QueryInfo(suite.fresh("q"), ledger_id))))
    suite.clock_offset_ms = reply.time_ms - time.time_ns() // 1_000_000
    passed = 0
    for check in CHECKS:
        name = check.__name__.replace("_", " ")
        try:
            await check(suite)
        except (CheckFailed, Rejected) as error:
            out(f"FAIL  {name}: {error}")
            return passed, 1
        out(f"PASS  {name}")
        passed += 1
    return passed, 0


async def main(broker: str, ledger_id: str, keys_dir: str) -> int:
    registry, keys = load_keys(Path(keys_dir))
    failure = None
    async with MqttBus.connect(broker) as bus:
        try:  # caught here: raised through the bus's nursery it would come wrapped in a group
            passed, failed = await run_checks(bus, ledger_id, registry, keys)
        except (BusTimeout, BadReply) as error:
            failure = ExpectedFailure(f"ledger {ledger_id}", str(error))
    if failure is not None:
        raise failure
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0
