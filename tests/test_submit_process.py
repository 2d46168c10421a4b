"""The matching desk as users reach it: ledger and coordinator processes on Mosquitto,
each back office running `lockstep submit` with its own sese.023 and key, then
`lockstep advices` and `lockstep statement`."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio
from lxml import etree

from engine.world.local import BOND, Local, standard_world
from protocols.bus import service_of_coordinator
from protocols.bus.clock import ServiceClock
from protocols.bus.mqtt import MqttBus
from protocols.canonical import decode
from protocols.identifiers import make_isin
from protocols.iso20022 import pacs009, sese023
from protocols.iso20022.model import PACS_009, SESE_023, OneSided
from protocols.messages import Advices, CreateInstrument, Issue, SettlementInstruction, Transfer
from protocols.settlement import utc_date
from protocols.signing import from_wire, sign
from tests.processes import ServiceProcess

pytestmark = pytest.mark.slow  # a coordinator and ledgers as processes


def lockstep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=90)


def advices_of(world, common: list[str], party: str) -> list[str]:
    """`lockstep advices` of a party: one line each."""
    said = lockstep("advices", *common, "--party", party, "--key", str(world.key_path(party)))
    assert said.returncode == 0, said.stderr
    return said.stdout.splitlines()


async def instruct(bus: MqttBus, world, one: OneSided) -> None:
    """A back office's instruction sent from here over the broker, signed with its key, as
    `lockstep submit` sends it (the first test runs the command itself)."""
    now_ms = ServiceClock().now_ms()
    document = sese023.write(one) if one.format == SESE_023 else pacs009.write(one, now_ms=now_ms)
    msg = SettlementInstruction(one.reference, "coordinator", one.party, now_ms, one.format, document.decode())
    raw = sign(msg, (one.party, world.keys[one.party])).encode()
    reply = from_wire(decode(await bus.request(service_of_coordinator("coordinator"), raw, timeout_s=30)))
    assert isinstance(reply.msg, Advices) and reply.msg.items, reply.msg


def local_names(path: Path, name: str) -> list[str]:
    return [node.text for node in etree.parse(str(path)).iter() if etree.QName(node).localname == name]


def sese023_pair(today: str, ref: str, units: int, amount_minor: int) -> dict[str, OneSided]:
    """bank-a sells `units` of the bond to bank-b for `amount_minor` EUR cents, each side its own."""
    return {
        "bank-a": OneSided(
            SESE_023, f"SELL-{ref}", "dvp", "deliver", "bank-a", "bank-b", today, today, BOND, units, "a-sec",
            "EUR", amount_minor, "a-eur",
        ),
        "bank-b": OneSided(
            SESE_023, f"BUY-{ref}", "dvp", "receive", "bank-b", "bank-a", today, today, "EUR", amount_minor,
            "b-eur", BOND, units, "b-sec",
        ),
    }  # fmt: skip


async def test_two_back_offices_submit_sese023_and_get_sese025_and_a_camt053(tmp_path, broker):
    world = standard_world(tmp_path / "world", broker=broker.url)
    ledgers = [ServiceProcess(world, "ledger", ledger, broker.url).start() for ledger in ("csd", "cbdc-eur")]
    coordinator = ServiceProcess(world, "coordinator", "coordinator", broker.url).start()
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in ledgers + [coordinator]:
                await process.ready(bus)
            await Local(world, bus, nursery).fund_standard(ledgers=("csd", "cbdc-eur"))
            nursery.cancel_scope.cancel()
        today = utc_date(ServiceClock().now_ms())
        sides = sese023_pair(today, "7", 40, 4_100_000)
        common = ["--broker", broker.url, "--registry", str(world.registry_path)]
        outcomes = {}
        for party, one in sides.items():
            (tmp_path / f"{party}.xml").write_bytes(sese023.write(one))
            wait_s = "60" if party == "bank-b" else "0"  # the first side stays unmatched until the second comes
            outcomes[party] = lockstep(
                "submit",
                str(tmp_path / f"{party}.xml"),
                *common,
                "--party",
                party,
                "--key",
                str(world.key_path(party)),
                "--wait",
                wait_s,
                "--out",
                str(tmp_path / party),
            )
        for party in sides:
            assert outcomes[party].returncode == 0, outcomes[party].stderr
        assert "UNMATCHED" in outcomes["bank-a"].stdout and "CMIS" in outcomes["bank-a"].stdout
        assert "MATCHED" in outcomes["bank-b"].stdout and "SETTLED" in outcomes["bank-b"].stdout

        fetched = lockstep(
            "advices",
            *common,
            "--party",
            "bank-a",
            "--key",
            str(world.key_path("bank-a")),
            "--out",
            str(tmp_path / "bank-a"),
        )
        assert fetched.returncode == 0, fetched.stderr
        assert [line.split()[1] for line in fetched.stdout.splitlines()] == ["UNMATCHED", "MATCHED", "SETTLED"]
        (confirmation,) = (tmp_path / "bank-a").glob("*-settled.xml")
        assert local_names(confirmation, "AcctOwnrTxId") == ["SELL-7"]
        assert local_names(confirmation, "Unit") == ["40"]

        refused = lockstep(
            "submit", str(tmp_path / "bank-a.xml"), *common, "--party", "bank-b", "--key", str(world.key_path("bank-b"))
        )
        assert refused.returncode == 2 and "instructs for bank-a" in refused.stderr

        statement = lockstep(
            "statement",
            *common,
            "--ledger",
            "cbdc-eur",
            "--account",
            "a-eur",
            "--currency",
            "EUR",
            "--out",
            str(tmp_path / "a-eur.xml"),
        )
        assert statement.returncode == 0, statement.stderr
        assert local_names(tmp_path / "a-eur.xml", "Amt")[-1] == "41000.00"
        assert "CRDT" in local_names(tmp_path / "a-eur.xml", "CdtDbtInd")
        said = statement.stdout.strip()
        assert (
            said.startswith(f"{tmp_path / 'a-eur.xml'}: camt.053 of a-eur on cbdc-eur")
            and "opening EUR 0.00" in said
            and "credits EUR 41,000.00" in said
            and said.endswith("closing EUR 41,000.00")
        ), said
    finally:
        for process in ledgers + [coordinator]:
            process.stop()


async def test_an_issuer_pays_a_coupon_through_the_coordinator_process(tmp_path, broker):
    """`lockstep corporate-action` against a real coordinator: every holder paid once."""
    world = standard_world(tmp_path / "world", broker=broker.url)
    ledgers = [ServiceProcess(world, "ledger", ledger, broker.url).start() for ledger in ("csd", "cbdc-eur")]
    coordinator = ServiceProcess(world, "coordinator", "coordinator", broker.url).start()
    today = utc_date(ServiceClock().now_ms())
    isin = make_isin("XS990000001")
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in ledgers + [coordinator]:
                await process.ready(bus)
            local = Local(world, bus, nursery)
            await local.fund_standard(ledgers=("csd", "cbdc-eur"))
            await local.instruct(
                CreateInstrument,
                "csd",
                "csd-op",
                isin=isin,
                issuer="treasury",
                currency="EUR",
                face_value_minor=100_000,
                coupon_rate_bp=500,
                maturity_date=f"{int(today[:4]) + 4}{today[4:]}",
            )
            await local.instruct(Issue, "csd", "csd-op", asset=isin, account="treasury", amount=1_000)
            for account, units in (("a-sec", 300), ("b-sec", 200)):
                await local.instruct(
                    Transfer, "csd", "treasury", from_account="treasury", to_account=account, asset=isin, amount=units
                )
            await local.open_accounts("cbdc-eur", "ecb", {"t-eur": "treasury"})
            await local.instruct(Issue, "cbdc-eur", "ecb", asset="EUR", account="t-eur", amount=10**9)
            before = {account: await local.balances("cbdc-eur", account) for account in ("a-eur", "b-eur", "t-eur")}
            nursery.cancel_scope.cancel()
        common = ["--broker", broker.url, "--registry", str(world.registry_path), "--id", "cpn-1"]
        sent = lockstep(
            "corporate-action",
            *common,
            "--issuer",
            "treasury",
            "--issuer-key",
            str(world.key_path("treasury")),
            "--isin",
            isin,
            "--kind",
            "coupon",
            "--date",
            today,
            "--securities-account",
            "treasury",
            "--cash-account",
            "t-eur",
            "--deadline-ms",
            str(86_399_000),
        )  # to the end of today
        assert sent.returncode == 0, sent.stdout + sent.stderr
        with trio.fail_after(60):
            while "DONE" not in (status := lockstep("corporate-action", *common, "--query")).stdout:
                await trio.sleep(0.5)
        lines = status.stdout.splitlines()
        assert any(
            "a-sec" in line and f"{isin} 300 units" in line and "EUR 15,000.00 paid" in line for line in lines
        ), status.stdout
        assert any(
            "b-sec" in line and f"{isin} 200 units" in line and "EUR 10,000.00 paid" in line for line in lines
        ), status.stdout
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            local = Local(world, bus, nursery)
            after = {account: await local.balances("cbdc-eur", account) for account in ("a-eur", "b-eur", "t-eur")}
            nursery.cancel_scope.cancel()
        assert after["a-eur"].get("EUR", 0) - before["a-eur"].get("EUR", 0) == 1_500_000
        assert after["b-eur"]["EUR"] - before["b-eur"]["EUR"] == 1_000_000
        assert before["t-eur"]["EUR"] - after["t-eur"]["EUR"] == 2_500_000
        forged = lockstep(
            "corporate-action",
            *common[:-1],
            "cpn-2",
            "--issuer",
            "bank-a",
            "--issuer-key",
            str(world.key_path("bank-a")),
            "--isin",
            isin,
            "--kind",
            "coupon",
            "--date",
            today,
            "--securities-account",
            "a-sec",
            "--cash-account",
            "a-eur",
            "--deadline-ms",
            str(86_399_000),
        )
        assert forged.returncode != 0 and "treasury" in forged.stdout + forged.stderr, forged.stdout + forged.stderr
    finally:
        for process in ledgers + [coordinator]:
            process.stop()


async def test_a_trade_short_of_cash_is_recycled_by_the_coordinator_process_until_the_cash_comes(tmp_path, broker):
    """The settlement queue over real processes: bank-b lacks the cash, both back offices
    are told PENDING (MONY) and nothing moves, and bank-b's end-of-day report shows it
    open beside the day's camt.053; bank-b holds its instruction (`lockstep
    hold`), so the cash paid in to its account moves nothing either; released, the trade
    settles without anyone sending anything again."""
    world = standard_world(tmp_path / "world", broker=broker.url)
    ledgers = [ServiceProcess(world, "ledger", ledger, broker.url).start() for ledger in ("csd", "cbdc-eur")]
    coordinator = ServiceProcess(world, "coordinator", "coordinator", broker.url).start()
    common = ["--broker", broker.url, "--registry", str(world.registry_path)]
    advices = functools.partial(advices_of, world, common)

    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in ledgers + [coordinator]:
                await process.ready(bus)
            local = Local(world, bus, nursery)
            await local.fund_standard(ledgers=("csd", "cbdc-eur"))
            held = (await local.balances("cbdc-eur", "b-eur"))["EUR"]
            await local.instruct(
                Transfer, "cbdc-eur", "bank-b", from_account="b-eur", to_account="a-eur", asset="EUR", amount=held
            )
            for party, one in sese023_pair(utc_date(ServiceClock().now_ms()), "8", 10, 1_000_000).items():
                (tmp_path / f"{party}.xml").write_bytes(sese023.write(one))
                sent = lockstep(
                    "submit", str(tmp_path / f"{party}.xml"), *common, "--party", party,
                    "--key", str(world.key_path(party)),
                )  # fmt: skip
                assert sent.returncode == 0, sent.stderr
            with trio.fail_after(30):
                while not (
                    pending := [line for line in await trio.to_thread.run_sync(advices, "bank-b") if "PENDING" in line]
                ):
                    await trio.sleep(0.2)
            (pending,) = pending
            assert "MONY" in pending and "b-eur has EUR 0.00 available, needs EUR 10,000.00" in pending, pending
            report = await trio.to_thread.run_sync(
                lambda: lockstep(
                    "end-of-day", *common, "--party", "bank-b", "--key", str(world.key_path("bank-b")),
                    "--cash", "cbdc-eur:b-eur:EUR", "--out", str(tmp_path / "eod"),
                )
            )  # fmt: skip
            assert report.returncode == 0, report.stderr
            today = utc_date(ServiceClock().now_ms())
            files = sorted(path.name for path in (tmp_path / "eod").iterdir())
            assert files == [f"bank-b-{today}-camt053-cbdc-eur-b-eur-EUR.xml", f"bank-b-{today}-open-BUY-8-pending.xml"]
            camt = tmp_path / "eod" / files[0]
            assert local_names(camt, "Amt") == ["0.00", "0.00", "10000000000.00", "10000000000.00"]
            assert local_names(camt, "CdtDbtInd")[2:] == ["CRDT", "DBIT"]  # issued, then paid away: the day's two
            assert "MONY" in local_names(tmp_path / "eod" / files[1], "Cd")
            held = lockstep("hold", "BUY-8", *common, "--party", "bank-b", "--key", str(world.key_path("bank-b")))
            assert held.returncode == 0 and "PENDING   BUY-8 sese.024.001.12  PREA/TRAD: held by bank-b" in held.stdout
            await local.instruct(
                Transfer, "cbdc-eur", "bank-a", from_account="a-eur", to_account="b-eur", asset="EUR", amount=10**6
            )
            await trio.sleep(2)
            assert (await local.balances("csd", "b-sec")).get(BOND, 0) == 0  # provided, but held: nothing moves
            released = await trio.to_thread.run_sync(
                lambda: lockstep(
                    "hold", "BUY-8", "--release", *common, "--party", "bank-b", "--key", str(world.key_path("bank-b"))
                )
            )
            assert released.returncode == 0 and "MATCHED   BUY-8" in released.stdout, released
            with trio.fail_after(30):
                while not any("SETTLED" in line for line in await trio.to_thread.run_sync(advices, "bank-a")):
                    await trio.sleep(0.2)
            assert (await local.balances("csd", "b-sec"))[BOND] == 10
            assert (await local.balances("cbdc-eur", "b-eur")).get("EUR", 0) == 0
            nursery.cancel_scope.cancel()
        statuses = [line.split()[1] for line in await trio.to_thread.run_sync(advices, "bank-b")]
        assert statuses == ["MATCHED", "PENDING", "PENDING", "MATCHED", "SETTLED"]
    finally:
        for process in ledgers + [coordinator]:
            process.stop()


async def test_trades_linked_by_a_bank_or_found_to_fund_one_another_settle_netted_by_the_process(tmp_path, broker):
    """Linked settlements over real processes, neither bank holding any cash: bank-b
    buys 100 bonds from bank-a for 1,000.00 and sells 60 back for 1,000.00, linking its
    two instructions (Lnkgs WITH); then the same again without links, which the queue's
    liquidity saving finds when the supervisor asks for it (`lockstep offset`; its
    interval is off here). Each time only the net moves: 40 bonds to bank-b, no cash."""
    world = standard_world(tmp_path / "world", broker=broker.url)
    config = world.ledger_configs["coordinator"]
    config.write_text(config.read_text() + "\n[settlement_queue]\noffset_interval_ms = 0\n")
    ledgers = [ServiceProcess(world, "ledger", ledger, broker.url).start() for ledger in ("csd", "cbdc-eur")]
    coordinator = ServiceProcess(world, "coordinator", "coordinator", broker.url).start()
    common = ["--broker", broker.url, "--registry", str(world.registry_path)]
    advices = functools.partial(advices_of, world, common)

    async def settled(count: int) -> None:
        with trio.fail_after(60):
            while sum("SETTLED" in line for line in await trio.to_thread.run_sync(advices, "bank-b")) < count:
                await trio.sleep(0.2)

    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in ledgers + [coordinator]:
                await process.ready(bus)
            local = Local(world, bus, nursery)
            await local.fund_standard(ledgers=("csd", "cbdc-eur"))
            held = (await local.balances("cbdc-eur", "b-eur"))["EUR"]
            await local.open_accounts("cbdc-eur", "ecb", {"reserve": "ecb"})
            await local.instruct(
                Transfer, "cbdc-eur", "bank-b", from_account="b-eur", to_account="reserve", asset="EUR", amount=held
            )
            today = utc_date(ServiceClock().now_ms())
            a_bonds = (await local.balances("csd", "a-sec"))[BOND]
            for round_, linked in (("L", True), ("O", False)):
                buy = sese023_pair(today, f"{round_}1", 100, 100_000)
                back = sese023_pair(today, f"{round_}2", 60, 100_000)
                b_buys, b_sells = buy["bank-b"], _turned(back)["bank-b"]
                if linked:
                    b_buys = attrs.evolve(b_buys, settle_with=(b_sells.reference,))
                    b_sells = attrs.evolve(b_sells, settle_with=(b_buys.reference,))
                for one in (buy["bank-a"], b_buys, _turned(back)["bank-a"], b_sells):
                    await instruct(bus, world, one)
                if not linked:
                    with trio.fail_after(30):
                        while (await trio.to_thread.run_sync(advices, "bank-b"))[-1].split()[1] != "PENDING":
                            await trio.sleep(0.2)
                    await trio.sleep(1)  # looked at again and again: nothing settles alone
                    assert (await local.balances("csd", "b-sec"))[BOND] == 40
                    offset = await trio.to_thread.run_sync(
                        lambda: lockstep(
                            "offset", *common, "--party", "supervisor", "--key", str(world.key_path("supervisor"))
                        )
                    )
                    assert offset.returncode == 0, offset.stderr
                    lines = offset.stdout.splitlines()
                    assert lines[0] == "released 2 settlements in 1 linked settlements", offset.stdout
                    assert "liquidity saved EUR 2,000.00, XS2700000016 120 units" in lines[1], offset.stdout
                    refused = await trio.to_thread.run_sync(
                        lambda: lockstep("offset", *common, "--party", "bank-a", "--key", str(world.key_path("bank-a")))
                    )
                    assert refused.returncode != 0 and "observer role" in refused.stderr, refused
                await settled(2 if linked else 4)
            assert (await local.balances("csd", "b-sec"))[BOND] == 80
            assert (await local.balances("csd", "a-sec"))[BOND] == a_bonds - 80
            nursery.cancel_scope.cancel()
        lines = await trio.to_thread.run_sync(advices, "bank-b")
        assert any("LINK" in line for line in lines), lines
        assert sum("SETTLED" in line for line in lines) == 4
    finally:
        for process in ledgers + [coordinator]:
            process.stop()


def _turned(pair: dict[str, OneSided]) -> dict[str, OneSided]:
    """The same trade the other way: bank-b delivers to bank-a."""
    sell, buy = pair["bank-a"], pair["bank-b"]
    return {
        "bank-b": attrs.evolve(
            sell, party="bank-b", counterparty="bank-a", gives_account="b-sec", takes_account="b-eur",
            reference=f"B{sell.reference}",
        ),
        "bank-a": attrs.evolve(
            buy, party="bank-a", counterparty="bank-b", gives_account="a-eur", takes_account="a-sec",
            reference=f"A{buy.reference}",
        ),
    }  # fmt: skip


async def test_linked_trades_across_three_ledger_processes_settle_whole_with_one_sigkilled(tmp_path, broker):
    """bank-b buys 100 bonds for 990.00 EUR, holding no euros, and links the purchase to
    its sale of 1,100.00 USD for 1,000.00 EUR (pacs.009): three ledger processes. The USD
    ledger is SIGKILLed as the last instruction is matched, and started again 2 s later:
    everything settles, once, and the audit of the three journals is clean; never one
    ledger's leg without the others'."""
    world = standard_world(tmp_path / "world", broker=broker.url)
    names = ("csd", "cbdc-eur", "cbdc-multi")
    ledgers = {name: ServiceProcess(world, "ledger", name, broker.url).start() for name in names}
    coordinator = ServiceProcess(world, "coordinator", "coordinator", broker.url).start()
    common = ["--broker", broker.url, "--registry", str(world.registry_path)]
    today = utc_date(ServiceClock().now_ms())
    dvp = sese023_pair(today, "L3", 100, 99_000)
    dvp["bank-b"] = attrs.evolve(dvp["bank-b"], settle_with=("FX-B",))
    fx = {
        "bank-a": OneSided(PACS_009, "FX-A", "pvp", "pay", "bank-a", "bank-b", None, today, "EUR", 100_000,
                           "a-eur", "USD", 110_000, "a-usd"),
        "bank-b": OneSided(PACS_009, "FX-B", "pvp", "pay", "bank-b", "bank-a", None, today, "USD", 110_000,
                           "b-usd", "EUR", 100_000, "b-eur"),
    }  # fmt: skip
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in [*ledgers.values(), coordinator]:
                await process.ready(bus)
            local = Local(world, bus, nursery)
            await local.fund_standard(ledgers=names)
            await local.instruct(
                Transfer, "cbdc-multi", "bank-a", from_account="a-usd", to_account="b-usd", asset="USD", amount=200_000
            )
            await local.instruct(
                Transfer, "cbdc-eur", "bank-b", from_account="b-eur", to_account="a-eur", asset="EUR",
                amount=(await local.balances("cbdc-eur", "b-eur"))["EUR"],
            )  # fmt: skip
            before = {name: await local.balances(*name) for name in (("csd", "b-sec"), ("cbdc-multi", "b-usd"))}
            for one in (dvp["bank-a"], dvp["bank-b"], fx["bank-a"], fx["bank-b"]):
                await instruct(bus, world, one)
            ledgers["cbdc-multi"].kill()
            await trio.sleep(2)
            ledgers["cbdc-multi"] = ServiceProcess(world, "ledger", "cbdc-multi", broker.url).start()
            await ledgers["cbdc-multi"].ready(bus)
            with trio.fail_after(60):
                while (
                    sum(
                        "SETTLED" in line for line in await trio.to_thread.run_sync(advices_of, world, common, "bank-b")
                    )
                    < 2
                ):
                    await trio.sleep(0.2)
            assert (await local.balances("csd", "b-sec"))[BOND] == before[("csd", "b-sec")].get(BOND, 0) + 100
            assert (await local.balances("cbdc-eur", "b-eur"))["EUR"] == 1_000
            assert (await local.balances("cbdc-multi", "b-usd"))["USD"] == before[("cbdc-multi", "b-usd")][
                "USD"
            ] - 110_000
            nursery.cancel_scope.cancel()
        lines = await trio.to_thread.run_sync(advices_of, world, common, "bank-b")
        assert sum("SETTLED" in line for line in lines) == 2, lines
        audited = await trio.to_thread.run_sync(
            lambda: lockstep(
                "audit",
                "--registry",
                str(world.registry_path),
                *(arg for n in names for arg in ("--db", str(world.directory / f"{n}.db"))),
            )
        )
        assert audited.returncode == 0 and "CLEAN" in audited.stdout and "0 violations" in audited.stdout, audited
    finally:
        for process in [*ledgers.values(), coordinator]:
            process.stop()
