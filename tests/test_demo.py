"""`lockstep demo` as a new user runs it: every scenario announced as it starts and a
countdown while the coordinator stays down (before deciding, and after committing), money
in one form, each balance available and locked, the world kept where `--keep` asks, and
nothing left in the temporary directory otherwise."""

from __future__ import annotations

import http.cookiejar
import json
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from lxml import etree

from tests.backoffice import validate_official

pytestmark = pytest.mark.slow  # the whole demo, twice (once kept, once with its console), with its past-expiry wait


def demo(tmp: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TMPDIR": str(tmp), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_demo_reports_every_scenario_and_balance_and_keeps_the_world_where_asked(tmp_path):
    out = demo(tmp_path, "--keep")
    (kept,) = tmp_path.iterdir()
    assert f"Kept: {kept} " in out
    assert (kept / "demo.log").stat().st_size > 0 and (kept / "registry.toml").exists()
    written = {path.name: path.read_bytes() for path in (kept / "iso20022").glob("*.xml")}
    kinds = {etree.QName(etree.fromstring(document)).namespace.rsplit(":", 1)[1] for document in written.values()}
    assert kinds == {"sese.024.001.12", "sese.025.001.11", "pacs.002.001.14", "camt.053.001.12"}
    for name, document in written.items():  # each valid under the standard itself
        assert validate_official(document) == [], name

    announced, report = out.split("\nSettlements:\n")
    report, balances = report.split("\nBalances, by ledger and account")
    titles = [line.split(" ms  ", 1)[1] for line in report.splitlines() if " ms  " in line]
    assert len(titles) == 12
    assert [line.strip().removesuffix(" ...") for line in announced.splitlines() if line.endswith(" ...")] == titles
    assert "same-ledger DvP: EUR 985,000.00 (unified) against XS2700000016 1,000 units (unified)" in titles
    countdown = re.findall(r"coordinator down after committing: (\d+) s to go", announced)
    assert countdown == sorted(countdown, key=int, reverse=True) and len(countdown) >= 5 and countdown[-1] == "1"
    assert "coordinator down before deciding: 1 s to go" in announced

    assert [line.split()[0] for line in report.splitlines() if line.startswith("  ") and line.split()[0].isupper()] == [
        "SETTLED"
    ] * 7 + ["FAILED", "SETTLED", "ROLLED_BACK", "SETTLED", "SETTLED"]
    assert titles[-1] == "multi-hop PvP: bank-a pays bank-c CHF 1,000.00 from its euros, through market makers"
    assert [line for line in announced.splitlines() if line][-3:] == [
        "    bank-a -> mm-1: EUR 1,052.20 on cbdc-eur",
        "    mm-1 -> mm-2: USD 1,136.37 on cbdc-usd",
        "    mm-2 -> bank-c: CHF 1,000.00 on cbdc-chf",
    ]
    assert "b-eur has EUR 9,996,045,000.00 available, needs EUR 1,000,000,000,000.00" in report

    header, *rows = balances.split("\n\n")[0].splitlines()[1:]
    assert header.split() == [
        "ledger",
        "/",
        "account",
        "before:",
        "available",
        "locked",
        "after:",
        "available",
        "locked",
    ]
    accounts = [tuple(row.split()[0:3:2]) for row in rows]
    assert accounts == sorted(accounts)  # by ledger, then account: the treasuries in their place
    assert ("csd", "treasury") in accounts and ("unified", "treasury") in accounts
    assert any(row.split()[:3] == ["cbdc-eur", "/", "b-eur"] and "EUR 9,994,075,000.00" in row for row in rows)
    assert any("XS2700000016 495,000 units" in row for row in rows)
    assert any("the settlement queue" in title for title in titles)
    assert not re.search(r"(?<![\d,A-Z])\d{4}", balances.split("\n\n")[0]), "an amount without grouping"
    assert "Checked: every asset conserved on every ledger, no lock left held." in out


def test_the_console_follows_the_demo_and_goes_on_serving_until_interrupted(tmp_path):
    """`--console`: the URL and a drawn password first, the scenarios as ever, then the
    console still serving what they did, signed in with that password; SIGTERM ends it
    as an interrupt (130) and removes the world, naming nothing that is gone."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "demo", "--console", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("The console goes on serving"):
                break
        out = "".join(lines)
        found = re.search(r"Console: (http://127\.0\.0\.1:\d+), sign in as supervisor with password (\S+)", out)
        assert found and "Checked: every asset conserved on every ledger, no lock left held." in out, out
        assert str(tmp_path) not in out and "iso20022" not in out
        base, password = found.groups()
        jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        form = urllib.parse.urlencode({"name": "supervisor", "password": password}).encode()
        with jar.open(f"{base}/login", data=form, timeout=10) as signed_in:
            assert signed_in.url == f"{base}/"
        with jar.open(f"{base}/api/overview", timeout=10) as response:
            overview = json.load(response)
        with jar.open(f"{base}/settlements", timeout=10) as response:
            matched = sorted(set(re.findall(r'href="/settlements/(m-[^"]+)"', response.read().decode())))
        advices = {}
        for settlement_id in matched:
            with jar.open(f"{base}/settlements/{settlement_id}", timeout=10) as response:
                page = response.read().decode()
            advices[settlement_id] = re.findall(r'class="advice" data-party="([^"]+)" data-status="([^"]+)"', page)
    finally:
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=30)[1]
    assert process.returncode == 130 and "interrupted" in stderr
    assert [row["ledger"] for row in overview["ledgers"]] == ["csd", "cbdc-eur", "cbdc-multi", "unified"]
    # the cross-ledger ones, by their locks: the queue's two parts and its first try, which moved nothing
    assert overview["phases"] == {"settled": 8, "rolled back": 3}
    assert overview["alerts"] == []
    assert len(matched) == 5, matched  # a sese.023 pair, the pacs.009 legs, the queued pair's three tries
    for settlement_id, seen in advices.items():
        assert seen[-2:] == [("bank-a", "settled"), ("bank-b", "settled")], (settlement_id, seen)
        assert {party for party, status in seen if status == "matched"} == {"bank-a", "bank-b"}, seen
    assert list(tmp_path.iterdir()) == []
