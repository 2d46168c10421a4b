"""The matching desk as users reach it: ledger and coordinator processes on Mosquitto,
each back office running `lockstep submit` with its own sese.023 and key, then
`lockstep advices` and `lockstep statement`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio
from lxml import etree

from engine.world.local import BOND, Local, standard_world
from protocols.bus.clock import ServiceClock
from protocols.bus.mqtt import MqttBus
from protocols.identifiers import make_isin
from protocols.iso20022 import sese023
from protocols.iso20022.model import SESE_023, OneSided
from protocols.messages import CreateInstrument, Issue, Transfer
from protocols.settlement import utc_date
from tests.processes import ServiceProcess

pytestmark = pytest.mark.slow  # a coordinator and ledgers as processes


def lockstep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=90)


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

    def advices(party: str) -> list[str]:
        said = lockstep("advices", *common, "--party", party, "--key", str(world.key_path(party)))
        assert said.returncode == 0, said.stderr
        return said.stdout.splitlines()

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
