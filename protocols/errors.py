"""The one error family that crosses the wire: a refusal with a stable code, the field
it concerns and a reason for people. A broken invariant is not a `Rejected`: it is a bug
and raises `AssertionError`, which stops the service."""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """Stable rejection codes; docs/PROTOCOL.md lists each with its meaning.

    A *final* code will be given again for the same instruction; a *temporary* one may
    pass on a retry with a new id (the state it depends on may change)."""

    # the message itself (final)
    MALFORMED = "malformed"  # not JSON, wrong structure, wrong type
    INVALID_FIELD = "invalid_field"  # a value outside its allowed range or form
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    WRONG_LEDGER = "wrong_ledger"
    # authentication and authority (final)
    UNKNOWN_SIGNER = "unknown_signer"
    BAD_SIGNATURE = "bad_signature"
    MISSING_SIGNATURE = "missing_signature"
    NOT_AUTHORISED = "not_authorised"
    STALE = "stale"  # ts_ms outside the freshness window (temporary if ahead)
    ID_REUSED = "id_reused"  # same id, different content
    FENCED = "fenced"  # a coordinator's instruction from an epoch this ledger has been fenced past
    # the ledger's state (temporary: a later instruction may succeed)
    UNKNOWN_ACCOUNT = "unknown_account"
    ACCOUNT_EXISTS = "account_exists"
    UNKNOWN_ASSET = "unknown_asset"
    ASSET_EXISTS = "asset_exists"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_LOCK = "unknown_lock"
    UNKNOWN_INSTRUCTION = "unknown_instruction"  # query_receipt: not answered (yet)
    LOCK_EXISTS = "lock_exists"
    LOCK_NOT_HELD = "lock_not_held"
    LOCK_EXPIRED = "lock_expired"
    LOCK_NOT_EXPIRED = "lock_not_expired"
    WRONG_PREIMAGE = "wrong_preimage"
    EXPIRY_OUT_OF_RANGE = "expiry_out_of_range"
    NOT_YET = "not_yet"  # before a settlement's earliest time: send again then
    NO_PATH = "no_path"  # no intermediaries' quotes carry a multi-hop payment within its limit
    # the transport (temporary)
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"
    BUSY = "busy"  # a coordinator's intake is full: send the same settlement again later


class Rejected(Exception):
    """A refusal: the other side asked for something the protocol does not allow."""

    def __init__(self, code: Code, field: str, reason: str) -> None:
        assert isinstance(code, Code)
        super().__init__(f"{code.value}: {field}: {reason}")
        self.code = code
        self.field = field
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rejected) and (self.code, self.field, self.reason) == (
            other.code,
            other.field,
            other.reason,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.field, self.reason))
