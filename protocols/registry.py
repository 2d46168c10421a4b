"""The consortium's parties: who they are, what roles they hold, their public keys.

Loaded from a TOML file that every service shares:

    [parties.bank-a]
    roles = ["participant"]
    public_key_file = "keys/bank-a.pub.pem"    # or public_key = "-----BEGIN ..."
    bic = "BANKDEFFXXX"                        # optional: how ISO 20022 documents name it
    lei = "5493001KJTIIGC8Y1R12"               # optional
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import Code, Rejected
from .failures import ExpectedFailure, file_reason, read_toml
from .identifiers import bic11, bic_problem, lei_problem
from .messages import IDENT_PATTERN
from .signing import Signed, load_public_pem, public_pem, verify_signature


class Role(enum.Enum):
    PARTICIPANT = "participant"  # holds accounts, moves its own assets
    OPERATOR = "operator"  # runs a ledger: opens accounts, issues instruments
    CENTRAL_BANK = "central_bank"  # issues and redeems a currency
    COORDINATOR = "coordinator"  # drives cross-ledger settlements
    LEDGER = "ledger"  # a ledger service: signs receipts and journal entries
    OBSERVER = "observer"  # reads and audits
    INTERMEDIARY = "intermediary"  # quotes and carries hops of multi-hop payments (protocols.paths)


@attrs.frozen
class Party:
    id: str
    roles: frozenset[Role]
    public_key: ec.EllipticCurvePublicKey = attrs.field(eq=False, repr=False)
    bic: str | None = None  # 11 characters
    lei: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """How documents may name it besides its id, as `identified_by` takes them."""
        return tuple(f"{scheme}/{value}" for scheme, value in (("BIC", self.bic), ("LEI", self.lei)) if value)


class Registry:
    """Parties by id, and the check that a message carries the signatures it needs."""

    def __init__(self, parties: Iterable[Party]) -> None:
        """ValueError where a BIC or an LEI would name two parties."""
        self._parties: dict[str, Party] = {}
        self._named: dict[str, str] = {}
        for party in parties:
            assert party.id not in self._parties, f"party {party.id} registered twice"
            self._parties[party.id] = party
            for name in party.names:
                if name in self._named:
                    raise ValueError(f"party {party.id!r}: {name} already names {self._named[name]!r}")
                self._named[name] = party.id

    @classmethod
    def load(cls, path: str | os.PathLike) -> Registry:
        """The registry file; an ExpectedFailure names it, the party and what is wrong."""
        subject = f"registry {path}"
        path = Path(path)
        data = read_toml("registry", path)
        parties = data.get("parties", {})
        if not isinstance(parties, dict):
            raise ExpectedFailure(subject, "parties: must be a table of [parties.ID]")
        try:
            return cls(_party(subject, path.parent, party_id, entry) for party_id, entry in parties.items())
        except ValueError as error:
            raise ExpectedFailure(subject, str(error)) from None

    def save(self, path: str | os.PathLike) -> None:
        lines = []
        for party in self._parties.values():
            roles = ", ".join(f'"{role.value}"' for role in sorted(party.roles, key=lambda r: r.value))
            lines += [
                f"[parties.{party.id}]",
                f"roles = [{roles}]",
                f'public_key = """{public_pem(party.public_key)}"""',
                *(f'{scheme} = "{value}"' for scheme, value in (("bic", party.bic), ("lei", party.lei)) if value),
                "",
            ]
        Path(path).write_text("\n".join(lines))

    def with_keys(self, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> Registry:
        """This registry with some parties' keys replaced (a ledger's rotated keys)."""
        for party_id in keys:
            assert party_id in self._parties, f"a key for unregistered party {party_id}"
        return Registry(
            attrs.evolve(party, public_key=keys[party.id]) if party.id in keys else party
            for party in self._parties.values()
        )

    def identified_by(self, name: str) -> str | None:
        """The party a document's identifier names (`BIC/...` in its 11-character form,
        `LEI/...`), or None."""
        return self._named.get(name)

    def __contains__(self, party_id: str) -> bool:
        return party_id in self._parties

    def __iter__(self):
        return iter(self._parties.values())

    def get(self, party_id: str) -> Party | None:
        return self._parties.get(party_id)

    def __getitem__(self, party_id: str) -> Party:
        """A party the caller knows is registered (a KeyError if not)."""
        return self._parties[party_id]

    def has_role(self, party_id: str, role: Role) -> bool:
        party = self._parties.get(party_id)
        return party is not None and role in party.roles

    def verify_all(self, signed: Signed) -> None:
        """Every signature on the message is by a known party and is valid."""
        if not signed.sigs:
            raise Rejected(Code.MISSING_SIGNATURE, "sigs", "instruction carries no signature")
        for party_id, sig in signed.sigs.items():
            party = self._parties.get(party_id)
            if party is None:
                raise Rejected(Code.UNKNOWN_SIGNER, "sigs", f"{party_id!r} is not a registered party")
            if not verify_signature(party.public_key, sig, signed):
                raise Rejected(Code.BAD_SIGNATURE, "sigs", f"signature of {party_id!r} does not verify")

    def signed_by(self, signed: Signed, party_ids: Mapping[str, str] | Iterable[str]) -> None:
        """The message is signed by each of these parties (already verified)."""
        for party_id in party_ids:
            if party_id not in signed.sigs:
                raise Rejected(Code.MISSING_SIGNATURE, "sigs", f"needs the signature of {party_id!r}")


def _party(subject: str, base: Path, party_id: str, entry: object) -> Party:
    """One [parties.ID] table of the registry file at `subject`, its key files under `base`."""
    where = f"party {party_id!r}"
    if not IDENT_PATTERN.fullmatch(party_id):
        raise ExpectedFailure(subject, f"{where}: not a valid identifier")
    if not isinstance(entry, dict):
        raise ExpectedFailure(subject, f"{where}: must be a table")
    known = [role.value for role in Role]
    roles = entry.get("roles")
    if not isinstance(roles, list) or not all(role in known for role in roles):
        raise ExpectedFailure(subject, f"{where}: roles: required, a list of {', '.join(known)}")
    if "public_key" in entry:
        pem, source = entry["public_key"], "public_key"
        if not isinstance(pem, str):
            raise ExpectedFailure(subject, f"{where}: public_key: must be a PEM string")
    elif isinstance(entry.get("public_key_file"), str):
        key_file = base / entry["public_key_file"]
        source = f"public_key_file {key_file}"
        try:
            pem = key_file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            reason = file_reason(error) if isinstance(error, OSError) else "not text, so not PEM"
            raise ExpectedFailure(subject, f"{where}: {source}: {reason}") from None
    else:
        raise ExpectedFailure(subject, f"{where}: public_key or public_key_file: required")
    try:
        key = load_public_pem(pem)
    except ValueError as error:
        raise ExpectedFailure(subject, f"{where}: {source}: {error}") from None
    identifiers = {}
    for scheme, problem in (("bic", bic_problem), ("lei", lei_problem)):
        value = entry.get(scheme)
        if value is not None and (not isinstance(value, str) or problem(value)):
            raise ExpectedFailure(
                subject, f"{where}: {scheme}: {problem(value) if isinstance(value, str) else 'must be a string'}"
            )
        identifiers[scheme] = value
    bic = identifiers["bic"] and bic11(identifiers["bic"])
    return Party(party_id, frozenset(Role(role) for role in roles), key, bic, identifiers["lei"])
