"""The command line as a person uses it: clear errors that name the cause, and the demo."""

from __future__ import annotations

import subprocess
import sys

from engine.broker import free_port
from engine.local import standard_world


def lockstep(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_ledger_with_a_wrong_config_exits_naming_the_field(tmp_path):
    world = standard_world(tmp_path)
    config = world.ledger_configs["csd"]
    config.write_text(config.read_text().replace('role = "securities"', 'role = "bank"'))
    result = lockstep("ledger", "--config", str(config))
    assert result.returncode == 2
    assert "role: must be one of securities, cbdc, unified" in result.stderr


def test_ledger_with_an_unreachable_broker_exits_naming_it(tmp_path):
    world = standard_world(tmp_path)
    port = free_port()
    result = lockstep("ledger", "--config", str(world.ledger_configs["csd"]), "--broker", f"mqtt://127.0.0.1:{port}")
    assert result.returncode == 2
    assert f"cannot reach the MQTT broker at 127.0.0.1:{port}" in result.stderr


def test_ledger_with_a_key_that_is_not_the_registered_one_refuses_to_start(tmp_path):
    world = standard_world(tmp_path)
    world.key_path("csd").write_bytes(world.key_path("ecb").read_bytes())
    result = lockstep("ledger", "--config", str(world.ledger_configs["csd"]), "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 2
    assert "does not match the key registered for csd" in result.stderr


def test_coordinator_with_a_missing_config_exits_with_a_clear_error(tmp_path):
    result = lockstep("coordinator", "--config", str(tmp_path / "nowhere.toml"))
    assert result.returncode == 2
    assert "nowhere.toml" in result.stderr


def test_demo_settles_rolls_back_recovers_and_checks_conservation():
    result = lockstep("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("SETTLED") == 6 and "FAILED" in out and "sese.023" in out and "ROLLED_BACK" in out
    assert "insufficient_funds" in out
    assert "Checked: every asset conserved on every ledger, no lock left held." in out


def test_status_with_no_coordinator_answering_exits_with_a_clear_error(tmp_path, broker):
    world = standard_world(tmp_path, broker=broker.url)
    result = lockstep("status", "dvp-1", "--config", str(world.ledger_configs["coordinator"]), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "coordinator coordinator did not answer" in result.stderr
