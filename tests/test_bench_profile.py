"""`lockstep bench --profile`: each service process sampled from outside while a run is
measured, its functions by share of its busy samples, from py-spy's raw stacks."""

from __future__ import annotations

import pytest

from benchmarks import profile
from benchmarks.runner import Load, Run, measure, mqtt_system
from benchmarks.workload import LEDGERS, Shape
from protocols.failures import ExpectedFailure

RAW = """\
<module> (/x/lib/python3.11/runpy.py:88);run (/w/t/engine/cli.py:10);verify (/w/t/protocols/signing.py:360) 6
<module> (/x/lib/python3.11/runpy.py:88);run (/w/t/engine/cli.py:10);verify (/w/t/protocols/signing.py:361) 3
<module> (/x/lib/python3.11/runpy.py:88);unrolled_run (/x/lib/python3.11/site-packages/trio/_core/_run.py:2712) 2
<module> (/x/lib/python3.11/runpy.py:88);raw_decode (/x/lib/python3.11/json/decoder.py:353) 1
"""


def test_samples_count_in_the_innermost_function_whatever_line_they_hit(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    read = profile.read(raw)
    assert read.samples == 12
    assert read.top == (
        ("verify (protocols/signing.py)", 75.0),
        ("unrolled_run (trio/_core/_run.py)", 16.7),
        ("raw_decode (json/decoder.py)", 8.3),
    )


def test_without_py_spy_the_option_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(profile.shutil, "which", lambda name: None)
    with pytest.raises(ExpectedFailure) as failure:
        profile.sampler_path()
    assert "--profile" in str(failure.value) and ".[profile]" in str(failure.value)


@pytest.mark.slow  # a benchmark run over MQTT, every service its own process
async def test_a_run_profiles_each_service_process_while_it_is_measured(tmp_path):
    async with mqtt_system(tmp_path, Shape(participants=6), 1) as system:
        result = await measure(
            system, Run("mqtt", "dvp", "cross", Load(concurrency=8), 120), lambda count: None, tmp_path
        )
    assert result.phases == {"settled": 120}
    profiles = result.profiles
    assert profiles is not None and set(profiles) == {spec.ledger_id for spec in LEDGERS} | {"coordinator"}
    for name in ("coordinator", "csd", "cbdc-eur"):  # the processes a cross-ledger DvP uses
        top = profiles[name].top
        assert profiles[name].samples > 0 and top, name
        assert [pct for _, pct in top] == sorted((pct for _, pct in top), reverse=True)
        assert 0 < sum(pct for _, pct in top) <= 100 + 0.05 * len(top)  # each share rounded to 0.1
        assert any(f"({part}" in function for function, _ in top for part in profile.OURS), top
    assert (tmp_path / "profile-mqtt-dvp-cross-c8-coordinator.txt").exists()  # py-spy's own record, kept
    assert result.summary()["profile"]["coordinator"]["samples"] == profiles["coordinator"].samples
