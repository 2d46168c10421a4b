"""A service's own clock: milliseconds since the epoch, read through trio so that tests
can drive every deadline with `trio.testing.MockClock`.

It reads the wall clock once, when the first ServiceClock of a trio run is made, and
counts trio's monotonic time from there: it never runs backwards (an NTP step does not
move it; NTP slewing does, as it slews the monotonic clock). Clocks made in one run
agree, so services sharing a process (the demo, the tests) share one time; `skew_ms`
gives a service a clock that disagrees on purpose, for skew tests."""

from __future__ import annotations

import time

import trio

_ANCHOR: trio.lowlevel.RunVar = trio.lowlevel.RunVar("lockstep_clock_anchor")


class ServiceClock:
    def __init__(self, skew_ms: int = 0) -> None:
        try:
            wall_ms, trio_s = _ANCHOR.get()
        except LookupError:
            wall_ms, trio_s = time.time_ns() // 1_000_000, trio.current_time()
            _ANCHOR.set((wall_ms, trio_s))
        self._offset_ms = wall_ms - round(trio_s * 1000) + skew_ms

    def now_ms(self) -> int:
        return self._offset_ms + int(trio.current_time() * 1000)

    def trio_time_at(self, at_ms: int) -> float:
        """The trio deadline at which this clock reads `at_ms`."""
        return (at_ms - self._offset_ms + 0.5) / 1000  # +0.5: float rounding never reads at_ms - 1
