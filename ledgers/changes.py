"""The writes of one instruction, kept apart from the store until the instruction has
passed every rule, so that a refused instruction changes nothing. Reads see the
instruction's own earlier writes (a settlement's legs may touch one balance twice).

Every instruction's changes are checked for conservation before they are written: for
each asset, what moved between balances sums to what was issued minus what was redeemed."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import attrs

from protocols.htlc import HeldLock

from .store import Asset, Store


class Changes:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._accounts: dict[str, str] = {}
        self._assets: dict[str, Asset] = {}
        self._balances: dict[tuple[str, str], tuple[int, int]] = {}
        self._locks: dict[str, HeldLock] = {}
        self._keys: dict[str, str] = {}
        self._fences: dict[str, int] = {}
        self._effects: dict[str, list[list[Any]]] = defaultdict(list)

    # -- reads -----------------------------------------------------------------------

    def owner(self, account: str) -> str | None:
        return self._accounts.get(account) or self._store.account_owner(account)

    def asset(self, code: str) -> Asset | None:
        return self._assets.get(code) or self._store.asset(code)

    def balance(self, account: str, asset: str) -> tuple[int, int]:
        key = (account, asset)
        if key in self._balances:
            return self._balances[key]
        return self._store.balance(account, asset)

    def lock(self, lock_id: str) -> HeldLock | None:
        return self._locks.get(lock_id) or self._store.lock(lock_id)

    def fence(self, coordinator: str) -> int:
        """The highest epoch of `coordinator` this ledger has applied (0: none)."""
        return self._fences.get(coordinator) or self._store.fence(coordinator)

    # -- writes ----------------------------------------------------------------------

    def add_account(self, account: str, owner: str) -> None:
        self._accounts[account] = owner
        self._effects["accounts"].append([account, owner])

    def add_asset(self, asset: Asset) -> None:
        self._assets[asset.code] = asset
        self._effects["assets"].append([asset.code, asset.kind, asset.issuer, asset.minor_units, asset.reference])

    def move(self, account: str, asset: str, available_delta: int, locked_delta: int) -> None:
        available, locked = self.balance(account, asset)
        available += available_delta
        locked += locked_delta
        assert available >= 0 and locked >= 0, f"{account}/{asset} would go negative: rules let it through"
        self._balances[(account, asset)] = (available, locked)
        self._effects["balances"].append([account, asset, available_delta, locked_delta])

    def supply(self, code: str, issued_delta: int, redeemed_delta: int) -> None:
        asset = self.asset(code)
        assert asset is not None
        self._assets[code] = attrs.evolve(
            asset, issued=asset.issued + issued_delta, redeemed=asset.redeemed + redeemed_delta
        )
        self._effects["supply"].append([code, issued_delta, redeemed_delta])

    def put_lock(self, lock: HeldLock) -> None:
        self._locks[lock.lock_id] = lock
        self._effects["locks"].append([lock.lock_id, lock.state.value])

    def raise_fence(self, coordinator: str, epoch: int) -> None:
        assert epoch >= self.fence(coordinator), "a fence never goes down"
        self._fences[coordinator] = epoch

    def set_key(self, party: str, public_key: str) -> None:
        self._keys[party] = public_key
        self._effects["keys"].append([party, public_key])

    # -- end -------------------------------------------------------------------------

    def effects(self) -> dict[str, list[list[Any]]]:
        return {key: rows for key, rows in self._effects.items() if rows}

    def check_conservation(self) -> None:
        """What moved between balances equals the change in supply, asset by asset."""
        moved: dict[str, int] = defaultdict(int)
        for _, asset, available_delta, locked_delta in self._effects["balances"]:
            moved[asset] += available_delta + locked_delta
        supplied: dict[str, int] = defaultdict(int)
        for asset, issued_delta, redeemed_delta in self._effects["supply"]:
            supplied[asset] += issued_delta - redeemed_delta
        for asset in moved.keys() | supplied.keys():
            assert moved[asset] == supplied[asset], (
                f"conservation broken for {asset}: balances moved {moved[asset]}, supply moved {supplied[asset]}"
            )

    def write(self) -> None:
        self.check_conservation()
        for account, owner in self._accounts.items():
            self._store.put_account(account, owner)
        for terms in self._assets.values():
            self._store.put_asset(terms)
        for (account, code), (available, locked) in self._balances.items():
            self._store.set_balance(account, code, available, locked)
        for lock in self._locks.values():
            self._store.put_lock(lock)
        for party, public_key in self._keys.items():
            self._store.put_key(party, public_key)
        for coordinator, epoch in self._fences.items():
            self._store.set_fence(coordinator, epoch)
