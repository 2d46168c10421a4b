"""The console (engine/console/) in a real browser, Debian's chromium driven by Selenium,
against a live world in this process: a visitor who has not signed in sees nothing but
the sign-in page, and the data behind the pages answers them 401; a wrong password is
refused; signed in, the overview shows every ledger and follows the settlements the test
makes as they happen; the holders view of the bond adds up to what was issued, on each
ledger; a participant's positions are shown across ledgers. Each page's screenshot goes
to $LOCKSTEP_SCREENSHOTS when it is set (docs/console/, for docs/CONSOLE.md), else to
the test's own folder.

The users file is checked as the broker's password files are: readable by its owner
alone, one `name:password` a line, each fault named by its line."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from engine.audit.journals import LedgerJournal
from engine.console import access, views
from engine.console.service import ADVICES_TIMEOUT_S, Supervisor, Tls, console_of, start_http
from engine.coordinator.shell import Coordinator
from engine.desks.matching import MatchingDesk
from engine.world.local import BOND, PLACES, Local, dvp_legs, standard_world
from protocols.bus.faults import Faults, FaultyBus
from protocols.bus.memory import MemoryBus
from protocols.bus.mqtt import MqttBus
from protocols.failures import ExpectedFailure
from protocols.journal import Replay
from protocols.settlement import Phase, Timing, utc_date
from tests.test_matching import Desk, dvp

TIMING = Timing(lock_wait_ms=1_000, claim_deadline_ms=2_000, clock_skew_ms_max=500)
LEDGERS = ("csd", "cbdc-eur", "cbdc-multi", "unified")
PARTIES = ("bank-b", "bank-a")
CROSS_DVP = dvp_legs("csd", "a-sec", "b-sec", 100, "cbdc-eur", "EUR", "b-eur", "a-eur", 99_000)
USERS = {"supervisor": "correct horse battery staple"}
WAIT_S = 10


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def texts(chrome: webdriver.Chrome, selector: str) -> list[tuple[dict, str]]:
    """Each element's data attributes, and its text, read from the live overview in one
    script: it redraws itself twice a second, and an element found before a redraw is
    stale after it."""
    script = "return [...document.querySelectorAll(arguments[0])].map(e => [{...e.dataset}, e.textContent])"
    return [(data, text) for data, text in chrome.execute_script(script, selector)]


def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LOCKSTEP_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def settling_world(nursery: trio.Nursery, tmp_path: Path) -> tuple[Local, Coordinator]:
    """Every ledger funded, and a coordinator, in this process on the in-memory bus."""
    local = Local(standard_world(tmp_path), MemoryBus(), nursery)
    for ledger in LEDGERS:
        await local.start_ledger(ledger)
    await local.fund_standard(ledgers=LEDGERS)
    coordinator, _ = await local.start_coordinator(TIMING, desks=(lambda c: MatchingDesk(c, PLACES),))
    return local, coordinator


async def matched_and_settled(local: Local) -> None:
    """bank-a's sese.023 and bank-b's, matched by the desk and settled; both confirmed."""
    desk = Desk(local)
    for side in dvp(utc_date(desk.now_ms())):
        await desk.send(desk.instruction(side))
    for party in PARTIES:
        await desk.until(party, "settled")


async def test_the_console_shows_a_signed_in_supervisor_the_ledgers_live_and_nothing_to_anyone_else(tmp_path):
    shots = screenshots(tmp_path)
    async with trio.open_nursery() as nursery:
        local, coordinator = await settling_world(nursery, tmp_path)
        supervisor = Supervisor("supervisor", local.world.keys["supervisor"])
        console = console_of(local.world.registry, local.bus, list(LEDGERS), ("coordinator",), supervisor=supervisor)
        await nursery.start(console.run)
        base = await start_http(console, USERS, "127.0.0.1", 0, nursery)

        async def settle(count: int) -> None:
            for _ in range(count):
                record = await coordinator.submit(local.settlement("dvp", CROSS_DVP, PARTIES))
                assert record.phase is Phase.SETTLED

        def signed_out() -> None:
            assert get(f"{base}/api/overview")[0] == 401
            assert get(f"{base}/events")[0] == 401
            with browser() as chrome:
                chrome.get(f"{base}/holders/{BOND}")
                assert chrome.current_url == f"{base}/login"
                assert "csd" not in chrome.page_source and BOND not in chrome.page_source
                chrome.save_screenshot(str(shots / "sign-in.png"))
                chrome.find_element(By.ID, "name").send_keys("supervisor")
                chrome.find_element(By.ID, "password").send_keys("wrong")
                chrome.find_element(By.ID, "sign-in").click()
                (failed,) = WebDriverWait(chrome, WAIT_S).until(lambda c: c.find_elements(By.ID, "failed"))
                assert failed.text == "Wrong name or password."
                assert chrome.current_url == f"{base}/login"

        await trio.to_thread.run_sync(signed_out)
        await settle(1)
        chrome = await trio.to_thread.run_sync(browser)
        try:

            def sign_in_and_read_heights() -> dict[str, int]:
                chrome.get(f"{base}/")
                chrome.find_element(By.ID, "name").send_keys("supervisor")
                chrome.find_element(By.ID, "password").send_keys(USERS["supervisor"])
                chrome.find_element(By.ID, "sign-in").click()
                WebDriverWait(chrome, WAIT_S).until(lambda c: c.find_elements(By.CSS_SELECTOR, "tr[data-ledger]"))
                rows = texts(chrome, "tr[data-ledger] .height")
                assert [data["ledger"] for data, _ in texts(chrome, "tr[data-ledger]")] == list(LEDGERS)
                return dict(zip(LEDGERS, (int(text) for _, text in rows), strict=True))

            before = await trio.to_thread.run_sync(sign_in_and_read_heights)
            assert before["csd"] > 0 and before["cbdc-eur"] > 0
            await settle(2)  # each: a lock and a claim on csd and on cbdc-eur
            await matched_and_settled(local)  # the same, from two sese.023

            def live() -> None:
                def height(ledger: str) -> int:
                    ((_, text),) = texts(chrome, f'tr[data-ledger="{ledger}"] .height')
                    return int(text)

                def phases() -> dict[str, str]:
                    return {data["phase"]: text for data, text in texts(chrome, "#phases dd")}

                WebDriverWait(chrome, WAIT_S).until(lambda c: height("csd") >= before["csd"] + 6)
                WebDriverWait(chrome, WAIT_S).until(lambda c: phases().get("settled") == "4")
                assert list(phases()) == ["settled"]
                assert height("cbdc-eur") >= before["cbdc-eur"] + 6
                assert height("unified") == before["unified"]  # nothing settled there
                assert chrome.execute_script("return document.getElementById('alerts').className") == "quiet"
                WebDriverWait(chrome, WAIT_S).until(
                    lambda c: texts(chrome, 'tr[data-ledger="csd"] .role') == [({}, "securities")]
                )
                chrome.save_screenshot(str(shots / "overview.png"))

                chrome.get(f"{base}/holders/{BOND}")
                sections = chrome.find_elements(By.CSS_SELECTOR, "section.ledger")
                assert [s.get_attribute("data-ledger") for s in sections] == ["csd", "unified"]
                for section in sections:
                    outstanding = int(section.find_element(By.CLASS_NAME, "outstanding").text)
                    held = int(section.find_element(By.CLASS_NAME, "held").text)
                    rows = section.find_elements(By.CSS_SELECTOR, "table.holdings tbody tr")
                    cells = [
                        int(row.find_element(By.CLASS_NAME, c).text) for row in rows for c in ("available", "locked")
                    ]
                    assert outstanding == held == sum(cells) > 0
                    assert section.find_element(By.CLASS_NAME, "agrees").text == "agrees"
                totals = chrome.find_element(By.ID, "totals")
                outstanding = int(totals.find_element(By.CLASS_NAME, "outstanding").text)
                assert outstanding == int(totals.find_element(By.CLASS_NAME, "held").text) == 2_000_000
                chrome.save_screenshot(str(shots / "holders.png"))

                chrome.get(f"{base}/settlements")
                chrome.find_element(By.CSS_SELECTOR, "#items a").click()  # the latest: the matched one
                WebDriverWait(chrome, WAIT_S).until(lambda c: c.find_elements(By.ID, "legs"))
                legs = chrome.find_elements(By.CSS_SELECTOR, "tr.leg")
                assert sorted(leg.get_attribute("data-ledger") for leg in legs) == ["cbdc-eur", "csd"]
                assert [leg.find_element(By.CLASS_NAME, "state").text for leg in legs] == ["claimed", "claimed"]
                entries = chrome.find_elements(By.CSS_SELECTOR, "tr.entry")
                kinds = sorted((e.get_attribute("data-ledger"), e.get_attribute("data-kind")) for e in entries)
                assert kinds == [("cbdc-eur", "claim"), ("cbdc-eur", "lock"), ("csd", "claim"), ("csd", "lock")]
                assert {e.find_element(By.CLASS_NAME, "signature").text for e in entries} == {"verified"}
                assert f"Δ {TIMING.margin_ms} ms" in chrome.find_element(By.ID, "locks").text
                assert len(chrome.find_elements(By.CSS_SELECTOR, "#life rect")) == 2
                advices = [
                    (a.get_attribute("data-party"), a.get_attribute("data-status"), a.get_attribute("data-format"))
                    for a in chrome.find_elements(By.CSS_SELECTOR, "tr.advice")
                ]
                assert advices == [
                    ("bank-a", "unmatched", "sese.024.001.12"),
                    ("bank-a", "matched", "sese.024.001.12"),
                    ("bank-b", "matched", "sese.024.001.12"),
                    ("bank-a", "settled", "sese.025.001.11"),
                    ("bank-b", "settled", "sese.025.001.11"),
                ]
                assert chrome.find_elements(By.CLASS_NAME, "unasked") == []
                first = chrome.find_element(By.CSS_SELECTOR, "tr.advice")
                assert "CMIS" in first.text  # why it waited: ISO's "counterparty's instruction missing"
                first.find_element(By.TAG_NAME, "summary").click()
                assert "<AcctOwnrTxId>A-REF-1</AcctOwnrTxId>" in first.find_element(By.TAG_NAME, "pre").text
                first.find_element(By.TAG_NAME, "summary").click()
                chrome.execute_script("document.getElementById('advices').scrollIntoView()")
                chrome.save_screenshot(str(shots / "advices.png"))
                chrome.execute_script("window.scrollTo(0, 0)")
                chrome.save_screenshot(str(shots / "settlement.png"))

                chrome.get(f"{base}/conservation")
                rows = chrome.find_elements(By.CSS_SELECTOR, "#conservation tbody tr")
                assert BOND in {row.get_attribute("data-asset") for row in rows} and len(rows) >= 3
                for row in rows:
                    assert row.get_attribute("class") == ""  # not "broken"
                    outstanding = row.find_element(By.CLASS_NAME, "outstanding").text
                    assert outstanding == row.find_element(By.CLASS_NAME, "held").text
                    assert row.find_element(By.CLASS_NAME, "apart").text.startswith("0 of ")
                chrome.save_screenshot(str(shots / "conservation.png"))

                chrome.get(f"{base}/participants/bank-a")
                ledgers = [
                    s.get_attribute("data-ledger") for s in chrome.find_elements(By.CSS_SELECTOR, "section.ledger")
                ]
                assert {"csd", "cbdc-eur"} <= set(ledgers)
                chrome.save_screenshot(str(shots / "participant.png"))

            await trio.to_thread.run_sync(live)
        finally:
            await trio.to_thread.run_sync(chrome.quit)
        status, body = await trio.to_thread.run_sync(get, f"{base}/api/overview")
        assert status == 401 and json.loads(body) == {"error": "sign in first"}  # a session is the browser's alone
        nursery.cancel_scope.cancel()


async def test_a_settlement_made_one_legged_turns_the_overview_red_within_a_second(tmp_path):
    """Every claim to csd is lost until csd refunds leg 1 at its backstop (as in
    tests/test_observer.py, on the real clock and a backstop of seconds): the page open on
    the overview shows the observer's alert, in red, within a second of its being raised."""
    timing = Timing(lock_wait_ms=500, claim_deadline_ms=500, clock_skew_ms_max=100, backstop_ms=1_500)
    shots = screenshots(tmp_path)
    async with trio.open_nursery() as nursery:
        bus = MemoryBus()
        local = Local(standard_world(tmp_path), bus, nursery)
        for ledger in ("csd", "cbdc-eur"):
            await local.start_ledger(ledger)
        await local.fund_standard(ledgers=("csd", "cbdc-eur"))
        local.bus = FaultyBus(
            bus,
            Faults(drop_request=1.0),
            seed=1,
            applies=lambda service, payload: service == "ledger/csd" and b'"claim"' in payload,
        )
        coordinator, _ = await local.start_coordinator(timing, watchtower=False)
        local.bus = bus
        console = console_of(local.world.registry, bus, ["csd", "cbdc-eur"])
        await nursery.start(console.run)
        base = await start_http(console, USERS, "127.0.0.1", 0, nursery)
        chrome = await trio.to_thread.run_sync(browser)
        try:

            def sign_in() -> None:
                chrome.get(f"{base}/login")
                chrome.find_element(By.ID, "name").send_keys("supervisor")
                chrome.find_element(By.ID, "password").send_keys(USERS["supervisor"])
                chrome.find_element(By.ID, "sign-in").click()
                WebDriverWait(chrome, WAIT_S).until(lambda c: c.find_elements(By.CSS_SELECTOR, "tr[data-ledger]"))
                assert chrome.find_element(By.ID, "alerts").get_attribute("class") == "quiet"

            await trio.to_thread.run_sync(sign_in)
            nursery.start_soon(coordinator.submit, local.settlement("dvp", CROSS_DVP, PARTIES))
            with trio.fail_after(WAIT_S):
                while not console.observer.alerts:
                    await trio.sleep(0.005)
            raised = trio.current_time()

            def red() -> str:
                WebDriverWait(chrome, WAIT_S, poll_frequency=0.02).until(
                    lambda c: c.find_element(By.ID, "alerts").get_attribute("class") == "alerting"
                )
                WebDriverWait(chrome, WAIT_S).until(
                    lambda c: c.find_elements(By.CSS_SELECTOR, 'dd[data-count="one-legged"]')
                )
                return texts(chrome, "#alert-list .alert")[0][1]  # the list is redrawn with the page

            text = await trio.to_thread.run_sync(red)
            shown = trio.current_time()
            await trio.to_thread.run_sync(chrome.save_screenshot, str(shots / "alert.png"))
        finally:
            await trio.to_thread.run_sync(chrome.quit)
        nursery.cancel_scope.cancel()
    (violation,) = console.observer.alerts
    assert text == violation.text() and text.startswith("one_legged on cbdc-eur, csd: settlement ")
    assert console.phases == {violation.settlement: "one-legged"}
    assert shown - raised < 1.0


async def test_the_views_agree_with_the_ledgers_own_books(tmp_path):
    """What the console shows is replayed from the journals; the ledgers' own answers
    (query_info's issued and held) say the same."""
    async with trio.open_nursery() as nursery:
        local, coordinator = await settling_world(nursery, tmp_path)
        for _ in range(2):
            assert (await coordinator.submit(local.settlement("dvp", CROSS_DVP, PARTIES))).phase is Phase.SETTLED
        console = console_of(local.world.registry, local.bus, list(LEDGERS))
        await nursery.start(console.run)
        with trio.fail_after(WAIT_S):
            while len(console.infos) < len(LEDGERS) or any(
                console.observer.journals[ledger].entries < info["head_seq"] for ledger, info in console.infos.items()
            ):
                await trio.sleep(0.05)
        overview = console.overview()
        bond = views.holders(console.observer.journals, BOND)
        positions = views.positions(console.observer.journals, "bank-a")
        nursery.cancel_scope.cancel()

    infos = console.infos
    assert overview["phases"] == {"settled": 2} and len(console.settlements) == 2
    assert [row["ledger"] for row in overview["ledgers"]] == list(LEDGERS)
    for row in overview["ledgers"]:
        assert row["height"] == infos[row["ledger"]]["head_seq"] and row["intact"] and row["locks_held"] == 0
    assert overview["settlements"]["open"] == 0 and overview["alerts"] == []
    for ledger in bond["ledgers"]:
        (asset,) = [a for a in infos[ledger["ledger"]]["assets"] if a["code"] == BOND]
        assert ledger["outstanding"] == asset["issued"] - asset["redeemed"] == ledger["held"]
        assert ledger["held"] == infos[ledger["ledger"]]["held"][BOND]
    (csd,) = [ledger for ledger in positions["ledgers"] if ledger["ledger"] == "csd"]
    assert {(row["account"], row["asset"]) for row in csd["balances"]} == {("a-sec", BOND)}


def test_conservation_counts_every_second_an_asset_was_not_all_held():
    """Fed by hand: an asset whose held total falls short of what is outstanding is shown
    apart for each second it was, and still summed over every ledger."""
    replay = Replay()
    replay.assets["EUR"] = ("currency", "ecb", 2, {})
    replay.supply["EUR"] = [1_000, 0]
    replay.balances[("a", "EUR")] = [600, 400]
    journals = {"cbdc-eur": LedgerJournal("cbdc-eur", replay)}
    history = views.Conservation()
    history.sample(journals, 1_000)
    replay.balances[("a", "EUR")] = [500, 400]  # 100 gone, as a bug would lose it
    history.sample(journals, 2_000)
    (row,) = views.conservation(history)
    assert (row["asset"], row["outstanding"], row["held"], row["apart"], row["points"]) == ("EUR", 1_000, 900, 1, 2)
    assert len(row["outstanding_line"].split()) == len(row["held_line"].split()) == 2


@pytest.mark.parametrize(
    ("content", "mode", "reason"),
    [
        ("supervisor:secret\n", 0o644, "readable by others (mode -rw-r--r--); chmod 600 it"),
        ("supervisor\n", 0o600, "line 1: not name:password"),
        ("# operators\nops:a\nops:b\n", 0o600, "line 3: ops again"),
        ("# nobody\n", 0o600, "no users"),
    ],
)
def test_a_users_file_is_refused_naming_its_fault(tmp_path, content, mode, reason):
    path = tmp_path / "users"
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(ExpectedFailure, match=reason.replace("(", r"\(").replace(")", r"\)")):
        access.read_users(path)


def test_a_password_is_checked_for_its_own_name_only(tmp_path):
    path = tmp_path / "users"
    path.write_text("supervisor:s3cret\nops:other\n")
    path.chmod(0o600)
    users = access.read_users(path)
    assert access.signed_in(users, "supervisor", "s3cret")
    assert not access.signed_in(users, "ops", "s3cret")
    assert not access.signed_in(users, "nobody", "s3cret") and not access.signed_in(users, "supervisor", "")


def test_failed_sign_ins_from_one_address_are_throttled_over_a_sliding_window():
    now = [1_000.0]
    throttle = access.Throttle(lambda: now[0])
    for _ in range(access.FAILURES_MAX - 1):
        throttle.failed("10.0.0.1")
        now[0] += 1
    assert throttle.wait_s("10.0.0.1") == 0  # one more try
    throttle.failed("10.0.0.1")
    assert throttle.wait_s("10.0.0.1") == access.FAILURES_WINDOW_S - (access.FAILURES_MAX - 1)
    assert throttle.wait_s("10.0.0.2") == 0  # another address is not held up
    now[0] = 1_000.0 + access.FAILURES_WINDOW_S  # the first failure leaves the window
    assert throttle.wait_s("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    assert throttle.wait_s("10.0.0.1") == 1.0  # the second failure leaves it a second later
    now[0] += 2 * access.FAILURES_WINDOW_S
    assert throttle.wait_s("10.0.0.1") == 0 and throttle._failures == {}


async def test_past_the_failures_allowed_even_the_right_password_is_refused_with_retry_after(tmp_path):
    world = standard_world(tmp_path)
    async with trio.open_nursery() as nursery:
        console = console_of(world.registry, MemoryBus(), list(LEDGERS))
        base = await start_http(console, USERS, "127.0.0.1", 0, nursery)

        def sign_in(password: str) -> tuple[int, str | None, str]:
            form = urllib.parse.urlencode({"name": "supervisor", "password": password}).encode()
            try:
                with urllib.request.urlopen(f"{base}/login", data=form, timeout=WAIT_S) as response:
                    return response.status, None, response.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.headers.get("Retry-After"), error.read().decode()

        for _ in range(access.FAILURES_MAX):
            assert (await trio.to_thread.run_sync(sign_in, "guess"))[:2] == (401, None)
        status, retry_after, body = await trio.to_thread.run_sync(sign_in, USERS["supervisor"])
        assert status == 429 and 0 < int(retry_after) <= access.FAILURES_WINDOW_S
        assert f"try again in {retry_after} s" in body and "sign out" not in body
        nursery.cancel_scope.cancel()


async def test_the_command_serves_the_pages_over_mqtt_until_sigterm(tmp_path, broker):
    """`lockstep console` as its own process: it follows the ledgers on a real broker,
    serves the sign-in page and nothing else to a visitor, and stops on SIGTERM; a users
    file others may read stops it at once, exit status 2, one line naming the file; so
    does a supervisor without the observer role, or with another's key."""
    world = standard_world(tmp_path, broker=broker.url)
    users = tmp_path / "users"
    users.write_text("supervisor:s3cret\n")
    users.chmod(0o644)
    command = [sys.executable, "-m", "engine.cli", "console", "--config", str(world.ledger_configs["coordinator"])]
    refused = await trio.run_process([*command, "--users", str(users)], capture_stderr=True, check=False)
    assert refused.returncode == 2
    assert (
        refused.stderr.decode()
        .strip()
        .splitlines()[-1]
        .endswith(f"console users file {users}: readable by others (mode -rw-r--r--); chmod 600 it")
    )
    users.chmod(0o600)
    keys = world.directory / "keys"
    for supervisor, reason in (
        (["--party", "bank-a", "--key", str(keys / "bank-a.pem")], "--party bank-a: not a party with the observer"),
        (["--party", "supervisor", "--key", str(keys / "bank-a.pem")], "not the key registered for supervisor"),
        (["--party", "supervisor"], "--party and --key: give both, or neither"),
    ):
        refused = await trio.run_process(
            [*command, "--users", str(users), *supervisor], capture_stderr=True, check=False
        )
        assert refused.returncode == 2 and reason in refused.stderr.decode(), refused.stderr
    async with MqttBus.connect(broker.url) as bus, trio.open_nursery() as nursery:
        local = Local(world, bus, nursery)
        for ledger in LEDGERS:
            await local.start_ledger(ledger)
        await local.fund_standard(ledgers=LEDGERS)
        supervisor = ["--party", "supervisor", "--key", str(keys / "supervisor.pem")]
        process = await trio.lowlevel.open_process(
            [*command, "--users", str(users), "--listen", "127.0.0.1:0", *supervisor], stderr=subprocess.PIPE
        )
        stderr = b""
        with trio.fail_after(30):
            while not (found := re.search(rb"console on (http://127\.0\.0\.1:\d+)", stderr)):
                stderr += await process.stderr.receive_some()
            base = found.group(1).decode()
            login = await trio.to_thread.run_sync(get, f"{base}/login")
            overview = await trio.to_thread.run_sync(get, f"{base}/api/overview")
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stderr.receive_some():
                stderr += chunk
            returncode = await process.wait()
        nursery.cancel_scope.cancel()
    text = stderr.decode()
    assert returncode == 0, text
    assert login[0] == 200 and 'id="sign-in"' in login[1] and overview[0] == 401
    assert "following csd, cbdc-eur, cbdc-multi, unified" in text and "stopping on SIGTERM" in text


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lockstep console")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "console.pem", tmp_path / "console-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_over_tls_the_pages_and_the_session_cookie_go_over_https_only(tmp_path):
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    async with trio.open_nursery() as nursery:
        local = Local(standard_world(tmp_path), MemoryBus(), nursery)
        await local.start_ledger("csd")
        console = console_of(local.world.registry, local.bus, ["csd"])
        await nursery.start(console.run)
        with pytest.raises(ExpectedFailure, match=r"console TLS files .*: not a PEM certificate and its key"):
            await start_http(console, USERS, "127.0.0.1", 0, nursery, Tls(key, cert))  # the two swapped
        with pytest.raises(ExpectedFailure, match=r"console TLS files .*: no such file"):
            await start_http(console, USERS, "127.0.0.1", 0, nursery, Tls(tmp_path / "none.pem", key))
        base = await start_http(console, USERS, "127.0.0.1", 0, nursery, Tls(cert, key))
        assert base.startswith("https://127.0.0.1:")

        def requests() -> tuple[int, str, list[str]]:
            with urllib.request.urlopen(f"{base}/login", context=context, timeout=WAIT_S) as response:
                login = response.status, response.read().decode()
                assert response.headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
                assert response.headers["Cache-Control"] == "no-store"
            form = urllib.parse.urlencode({"name": "supervisor", "password": USERS["supervisor"]}).encode()
            opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect)
            with pytest.raises(urllib.error.HTTPError) as redirected:
                opener.open(f"{base}/login", data=form, timeout=WAIT_S)
            with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
                urllib.request.urlopen(base.replace("https:", "http:") + "/login", timeout=WAIT_S)
            return login[0], login[1], redirected.value.headers.get_all("Set-Cookie")

        status, page, cookies = await trio.to_thread.run_sync(requests)
        nursery.cancel_scope.cancel()
    assert status == 200 and 'id="sign-in"' in page
    (cookie,) = cookies
    assert cookie.startswith("lockstep-console=") and "secure" in cookie.lower() and "samesite=strict" in cookie.lower()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A sign-in's 303 as it is, with its Set-Cookie."""

    def redirect_request(self, *args, **kwargs):
        return None


async def test_a_settlements_advices_that_cannot_be_had_are_said_to_be_missing_and_why(tmp_path, autojump_clock):
    """Without a supervisor's key the page says so; a coordinator that does not answer is
    named, and the page is not held up longer than ADVICES_TIMEOUT_S."""
    world = standard_world(tmp_path)
    bus = MemoryBus()
    without = console_of(world.registry, bus, list(LEDGERS), ("coordinator",))
    assert await without.advices("m-1") == ([], ["the console has no supervisor's key to ask with (--party and --key)"])
    supervisor = Supervisor("supervisor", world.keys["supervisor"])
    unanswered = console_of(world.registry, bus, list(LEDGERS), ("coordinator",), supervisor=supervisor)
    asked_at = trio.current_time()
    assert await unanswered.advices("m-1") == ([], ["coordinator coordinator: did not answer within 2.0 s"])
    assert trio.current_time() - asked_at == ADVICES_TIMEOUT_S


async def test_the_token_view_pages_trace_a_holding_to_its_issue_and_an_issue_to_its_holders(tmp_path):
    """Signed in, the holders page links each account to where its units came from: bank-b's
    bonds, bought by a DvP, as lots of the treasury's issue moved by its transfer, a lock and
    the lock's claim; and the issue's page lists every account its units are in now."""
    async with trio.open_nursery() as nursery:
        local, coordinator = await settling_world(nursery, tmp_path)
        assert (await coordinator.submit(local.settlement("dvp", CROSS_DVP, PARTIES))).phase is Phase.SETTLED
        console = console_of(local.world.registry, local.bus, list(LEDGERS))
        await nursery.start(console.run)
        base = await start_http(console, USERS, "127.0.0.1", 0, nursery)
        jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())

        def read(path: str) -> tuple[int, str]:
            try:
                with jar.open(f"{base}{path}", timeout=WAIT_S) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        def pages() -> dict[str, tuple[int, str]]:
            assert get(f"{base}/provenance/csd/b-sec/{BOND}")[1].count("Sign in") >= 1  # signed out: the sign-in page
            form = urllib.parse.urlencode({"name": "supervisor", "password": USERS["supervisor"]}).encode()
            jar.open(f"{base}/login", data=form, timeout=WAIT_S).close()
            return {
                path: read(path)
                for path in (f"/holders/{BOND}", f"/provenance/csd/b-sec/{BOND}", "/provenance/nowhere/b-sec/EUR")
            }

        found = await trio.to_thread.run_sync(pages)
        holders, (status, provenance), missing = found.values()
        assert f'href="/provenance/csd/b-sec/{BOND}"' in holders[1]
        assert status == 200 and "the lots agree with the balance" in provenance, provenance
        issue_seq = int(re.search(r'href="/issuance/csd/(\d+)"', provenance).group(1))
        steps = re.findall(r'<span class="step" data-seq="\d+">\d+ (\w+)</span>', provenance)
        assert steps[:2] == ["issue", "transfer"] and steps[-2:] == ["lock", "claim"], steps
        assert missing[0] == 404
        status, went = await trio.to_thread.run_sync(read, f"/issuance/csd/{issue_seq}")
        assert status == 200 and f"{BOND} 1,000,000 units" in went
        pockets = re.findall(r'<td class="pocket">([^<]+)</td>', went)
        assert {"treasury", "a-sec", "b-sec"} <= set(pockets), pockets
        assert (await trio.to_thread.run_sync(read, "/issuance/csd/0"))[0] == 404  # entry 0 is no issue
        nursery.cancel_scope.cancel()
