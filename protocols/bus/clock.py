"""A service's own clock: milliseconds since the epoch, read through trio so that tests
can drive every deadline with `trio.testing.MockClock`. Each service owns one; `skew_ms`
lets tests give two services clocks that disagree."""

from __future__ import annotations

import time

import trio


class ServiceClock:
    def __init__(self, skew_ms: int = 0) -> None:
        self._offset_ms = time.time_ns() // 1_000_000 - int(trio.current_time() * 1000) + skew_ms

    def now_ms(self) -> int:
        return self._offset_ms + int(trio.current_time() * 1000)

    def trio_time_at(self, at_ms: int) -> float:
        """The trio deadline at which this clock reads `at_ms`."""
        return (at_ms - self._offset_ms + 0.5) / 1000  # +0.5: float rounding never reads at_ms - 1
