"""`lockstep bench --queue` (benchmarks/queue.py), short: every trade waits at first; each
of the four hand-backs releases a part of them, the parts add up to every trade and all
its value; the gridlock after them, neither bank holding cash, is released whole by
liquidity saving with no cash moving; and the audit after it is clean."""

from __future__ import annotations

import json

import pytest

from benchmarks import queue

pytestmark = pytest.mark.slow  # a world in this process, some seconds of waves


async def test_four_hand_backs_release_every_trade_and_all_its_value_in_parts(tmp_path):
    result = await queue.run(tmp_path, 40, seed=3)
    waves = result["waves"]
    assert len(waves) == queue.WAVES and all(wave["trades_settled"] > 0 for wave in waves[1:]), waves
    assert all(wave["value_released_minor"] > 0 and wave["units_released"] > 0 for wave in waves), waves
    assert sum(wave["trades_settled"] for wave in waves) == 40
    assert sum(wave["value_released_minor"] for wave in waves) == result["value_minor"]
    assert sum(wave["units_released"] for wave in waves) == result["units"]
    assert result["audit"].startswith("CLEAN") and result["audit"].endswith("0 violations")
    gridlock = result["gridlock"]
    assert gridlock["trades"] == gridlock["trades_settled"] == 8 and gridlock["cash_moved_minor"] == 0, gridlock
    assert gridlock["value_released_minor"] > 0
    assert "wave" in queue.table(result) and "gridlock: 8 of 8 trades" in queue.table(result)
    assert json.dumps(result)
