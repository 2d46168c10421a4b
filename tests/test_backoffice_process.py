"""Back offices' own documents, end to end over real processes: ledger and coordinator
processes on Mosquitto, each party running `lockstep submit` with what its back office
writes (tests/backoffice.py): AppHdr envelopes, BICs and LEIs, optional blocks, a bond
by face amount, a delivery free of payment, a PvP as two pacs.009 legs. Each is read,
matched and settled, and every document Lockstep answers with is valid under the
official schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio
from lxml import etree

from engine.world.local import BOND, NAMES, Local, standard_world
from protocols.bus.clock import ServiceClock
from protocols.bus.mqtt import MqttBus
from protocols.settlement import utc_date
from tests.backoffice import PACS009_OPTIONAL, SESE023_OPTIONAL, Who, pacs009_leg, sese023, validate_official
from tests.processes import ServiceProcess

pytestmark = pytest.mark.slow  # a coordinator and three ledgers as processes

A_BIC, A_LEI = NAMES["bank-a"]
B_BIC, B_LEI = NAMES["bank-b"]


def lockstep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=90)


def texts(path: Path, name: str) -> list[str]:
    return [node.text for node in etree.parse(str(path)).iter() if etree.QName(node).localname == name and node.text]


async def test_documents_as_back_offices_write_them_settle_over_real_processes(tmp_path, broker):
    world = standard_world(tmp_path / "world", broker=broker.url)
    ledgers = [
        ServiceProcess(world, "ledger", ledger, broker.url).start() for ledger in ("csd", "cbdc-eur", "cbdc-multi")
    ]
    coordinator = ServiceProcess(world, "coordinator", "coordinator", broker.url).start()
    try:
        async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
            for process in ledgers + [coordinator]:
                await process.ready(bus)
            await Local(world, bus, nursery).fund_standard(ledgers=("csd", "cbdc-eur", "cbdc-multi"))
            nursery.cancel_scope.cancel()
        today = utc_date(ServiceClock().now_ms())
        dvp = {"trade_date": today, "settlement_date": today, "isin": BOND, "common_id": "TRADE-42"}
        documents = {
            # bank-a sells 40 bonds by face amount (EUR 1,000.00 each), in a SWIFT envelope, every block there
            ("bank-a", "sell"): sese023(
                reference="SELL-42",
                movement="DELI",
                payment="APMT",
                face_amount="40000",
                safekeeping="a-sec",
                cash_account="a-eur",
                amount=("EUR", "41000.00"),
                deliverer=Who(bic=A_BIC, lei=A_LEI),
                receiver=Who(lei=B_LEI, name="Bank B"),
                trade_date_time=True,
                optional=SESE023_OPTIONAL - {"Lnkgs"},
                envelope="Envelope",
                schema_location=True,
                comment_before_root=True,
                **dvp,
            ),
            # bank-b buys them in units, bare Document, no optional block but the common reference
            ("bank-b", "buy"): sese023(
                reference="BUY-42",
                movement="RECE",
                payment="APMT",
                units=40,
                safekeeping="b-sec",
                cash_account="b-eur",
                amount=("EUR", "41000.00"),
                deliverer=Who(bic=A_BIC),
                receiver=Who(proprietary="bank-b"),
                optional=frozenset({"CmonId"}),
                **dvp,
            ),
            ("bank-a", "lend"): sese023(  # a collateral move: free of payment
                reference="COLL-1",
                movement="DELI",
                payment="FREE",
                units=5,
                safekeeping="a-sec",
                deliverer=Who(bic=A_BIC),
                receiver=Who(bic=B_BIC),
                envelope="RequestPayload",
                trade_date=today,
                settlement_date=today,
                isin=BOND,
            ),
            ("bank-b", "borrow"): sese023(
                reference="COLL-2",
                movement="RECE",
                payment="FREE",
                units=5,
                safekeeping="b-sec",
                deliverer=Who(lei=A_LEI, name="Bank A"),
                receiver=Who(lei=B_LEI, name="Bank B"),
                trade_date=today,
                settlement_date=today,
                isin=BOND,
            ),
        }
        legs = {"end_to_end_id": "FX-77", "created": f"{today}T09:00:00Z", "settlement_date": today}
        documents[("bank-a", "pay-usd")] = pacs009_leg(
            msg_id="A-FX-77",
            uetr="eb6305c9-1f7f-49de-aed0-16487c27b42d",
            currency="USD",
            amount="540.00",
            debtor=Who(bic=A_BIC),
            debtor_account="a-usd",
            creditor=Who(bic=B_BIC, lei=B_LEI),
            creditor_account="b-usd",
            optional=PACS009_OPTIONAL,
            comment_before_root=True,
            **legs,
        )
        documents[("bank-b", "pay-eur")] = pacs009_leg(
            msg_id="B-FX-77",
            uetr="7a562c67-ca16-48ba-b074-65581be6f001",
            currency="EUR",
            amount="500.00",
            debtor=Who(lei=B_LEI),
            debtor_account="b-eur",
            creditor=Who(proprietary="bank-a"),
            creditor_account="a-eur",
            envelope=None,
            **legs,
        )
        common = ["--broker", broker.url, "--registry", str(world.registry_path)]
        for (party, name), document in documents.items():
            assert validate_official(document) == [], name
            (tmp_path / f"{name}.xml").write_bytes(document)
            second = name in ("buy", "borrow", "pay-eur")  # the first of a pair stays unmatched until the second
            done = lockstep(
                "submit",
                str(tmp_path / f"{name}.xml"),
                *common,
                "--party",
                party,
                "--key",
                str(world.key_path(party)),
                "--wait",
                "60" if second else "0",
                "--out",
                str(tmp_path / party),
            )
            assert done.returncode == 0, (name, done.stdout, done.stderr)
            assert ("SETTLED" if second else "UNMATCHED") in done.stdout, (name, done.stdout)

        for party in ("bank-a", "bank-b"):
            fetched = lockstep(
                "advices",
                *common,
                "--party",
                party,
                "--key",
                str(world.key_path(party)),
                "--out",
                str(tmp_path / party),
            )
            assert fetched.returncode == 0, fetched.stderr
            assert sum(line.split()[1] == "SETTLED" for line in fetched.stdout.splitlines()) == 3, fetched.stdout
            for answer in sorted((tmp_path / party).glob("*.xml")):
                assert validate_official(answer.read_bytes()) == [], answer.name
        settled = {path.name: path for path in (tmp_path / "bank-a").glob("*-settled.xml")}
        confirmations = [
            texts(path, "AcctOwnrTxId") + texts(path, "Unit") + texts(path, "Pmt") for path in settled.values()
        ]
        assert ["SELL-42", "40", "APMT"] in confirmations and ["COLL-1", "5", "FREE"] in confirmations
        (payment,) = [path for path in settled.values() if texts(path, "TxSts") == ["ACSC"]]
        assert texts(payment, "OrgnlMsgId") == ["A-FX-77"] and texts(payment, "OrgnlEndToEndId") == ["FX-77"]
        assert texts(payment, "OrgnlUETR") == ["eb6305c9-1f7f-49de-aed0-16487c27b42d"]

        wrong = documents[("bank-a", "sell")].replace(b"<SctiesMvmntTp>DELI<", b"<SctiesMvmntTp>DELX<")
        wrong = wrong.replace(BOND.encode(), (BOND[:11] + str((int(BOND[11]) + 1) % 10)).encode())
        (tmp_path / "wrong.xml").write_bytes(wrong)
        refused = lockstep(
            "submit", str(tmp_path / "wrong.xml"), *common, "--party", "bank-a", "--key", str(world.key_path("bank-a"))
        )
        assert refused.returncode == 2, refused.stderr
        assert "'DELX' is not one of the allowed codes: DELI, RECE" in refused.stderr
    finally:
        for process in ledgers + [coordinator]:
            process.stop()
