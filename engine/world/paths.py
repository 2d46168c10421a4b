"""A world for multi-hop payments: three one-currency CBDC ledgers (EUR, USD, CHF), a
payer holding only EUR, a payee holding only CHF, and market makers between them, each
with accounts on the two ledgers it makes a market between (protocols.paths). The
tests, `lockstep demo --paths` and `lockstep chaos --paths` start from it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import trio

from protocols.bus.clock import ServiceClock
from protocols.messages import Issue, PathPayment
from protocols.registry import Role
from protocols.signing import sign

from ..client.intermediary import Intermediary, Offer, Side
from .layout import LedgerSpec, World, lay_out
from .local import COORDINATOR, Local

PAYER, PAYEE = "bank-a", "bank-c"
LEDGERS = [
    LedgerSpec("cbdc-eur", "cbdc", "ecb", (("EUR", "ecb"),)),
    LedgerSpec("cbdc-usd", "cbdc", "fed", (("USD", "fed"),)),
    LedgerSpec("cbdc-chf", "cbdc", "snb", (("CHF", "snb"),)),
]
PARTIES: dict[str, tuple[Role, ...]] = {
    "ecb": (Role.CENTRAL_BANK,),
    "fed": (Role.CENTRAL_BANK,),
    "snb": (Role.CENTRAL_BANK,),
    PAYER: (Role.PARTICIPANT,),
    PAYEE: (Role.PARTICIPANT,),
    "mm-1": (Role.PARTICIPANT, Role.INTERMEDIARY),
    "mm-2": (Role.PARTICIPANT, Role.INTERMEDIARY),
    "mm-3": (Role.PARTICIPANT, Role.INTERMEDIARY),
    "supervisor": (Role.OBSERVER,),
    COORDINATOR: (Role.COORDINATOR,),
}
PLACES = {"EUR": ("cbdc-eur", "ecb"), "USD": ("cbdc-usd", "fed"), "CHF": ("cbdc-chf", "snb")}
ACCOUNTS = {PAYER: ("EUR",), PAYEE: ("CHF",), "mm-1": ("EUR", "USD"), "mm-2": ("USD", "CHF"), "mm-3": ("EUR", "CHF")}
# mm-1 and mm-2 together carry EUR to CHF at 1.08 x 0.88 = 0.9504; mm-3 alone at 0.93
RATES = {"mm-1": ("EUR", "USD", "1.08"), "mm-2": ("USD", "CHF", "0.88"), "mm-3": ("EUR", "CHF", "0.93")}
GIVES_MAX = 10**9


def account(party: str, currency: str) -> str:
    return f"{party}-{currency.lower()}"


def path_world(directory: str | Path, broker: str | None = None) -> World:
    """The world on disk, with each market maker's config beside the ledgers' and the
    coordinator's: `lockstep intermediary --config DIR/mm-1.toml` runs mm-1."""
    world = lay_out(directory, LEDGERS, PARTIES, broker=broker)
    for party in RATES:
        offer = offers(party)[0]
        lines = [
            f'intermediary = "{party}"',
            f'key_file = "keys/{party}.pem"',
            'registry = "registry.toml"',
            f'broker = "{world.broker}"',
            "",
            "[[offers]]",
            f'takes = "{offer.takes.ledger}:{offer.takes.asset}:{offer.takes.account}"',
            f'gives = "{offer.gives.ledger}:{offer.gives.asset}:{offer.gives.account}"',
            f'rate = "{RATES[party][2]}"',
            f"gives_max = {offer.gives_max}",
        ]
        world.ledger_configs[party] = world.directory / f"{party}.toml"
        world.ledger_configs[party].write_text("\n".join(lines) + "\n")
    return world


def offers(party: str) -> tuple[Offer, ...]:
    takes, gives, rate = RATES[party]
    return (
        Offer(
            Side(PLACES[takes][0], takes, account(party, takes)),
            Side(PLACES[gives][0], gives, account(party, gives)),
            Fraction(rate),
            GIVES_MAX,
        ),
    )


async def fund(local: Local, amount_minor: int = 10**9) -> None:
    """Every party's accounts, each holding `amount_minor` but the payee's, which is empty."""
    for party, currencies in ACCOUNTS.items():
        for currency in currencies:
            ledger, bank = PLACES[currency]
            await local.open_accounts(ledger, bank, {account(party, currency): party})
            if party != PAYEE:
                await local.instruct(
                    Issue, ledger, bank, asset=currency, account=account(party, currency), amount=amount_minor
                )


async def start_intermediaries(local: Local, nursery: trio.Nursery, margin_ms: int) -> dict[str, Intermediary]:
    started = {}
    for party in RATES:
        intermediary = Intermediary(
            party,
            local.world.keys[party],
            local.world.registry,
            local.bus,
            ServiceClock(),
            offers(party),
            margin_ms=margin_ms,
        )
        await nursery.start(intermediary.run)
        started[party] = intermediary
    return started


def payment(local: Local, payment_id: str, amount: int, source_max: int, deadline_ms: int) -> bytes:
    """The payer's order: `amount` CHF cents to the payee, at most `source_max` EUR cents."""
    order = PathPayment(
        payment_id,
        COORDINATOR,
        PAYER,
        local.clock.now_ms(),
        "cbdc-eur",
        account(PAYER, "EUR"),
        "EUR",
        source_max,
        PAYEE,
        "cbdc-chf",
        account(PAYEE, "CHF"),
        "CHF",
        amount,
        deadline_ms,
    )
    return sign(order, (PAYER, local.world.keys[PAYER])).encode()


async def positions(local: Local) -> dict[tuple[str, str], int]:
    """What each party holds of each currency, locked or not."""
    held = {}
    for party, currencies in ACCOUNTS.items():
        for currency in currencies:
            balances = await local.balances(PLACES[currency][0], account(party, currency))
            held[(party, currency)] = balances.get(currency, 0)
    return held
