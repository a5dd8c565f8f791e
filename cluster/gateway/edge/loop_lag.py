"""Event-loop lag of this gateway process: how late a timer fires. A gateway whose loop is
late relays every stream late; the capacity controller adds gateway processes on it
(`owc_event_loop_lag_seconds`, the worst lag of the last window)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cluster.periodic import Periodic

log = logging.getLogger(__name__)


class LoopLag:
    def __init__(self, report: Callable[[float], None], *, period_s: float = 0.1, window: int = 20,
                 clock: Callable[[], float] = time.perf_counter):
        """``report`` gets the worst lag of the last ``window`` ticks of ``period_s``."""
        self._report = report
        self._period_s = period_s
        self._window = window
        self._clock = clock
        self._recent: list[float] = []
        self._last = 0.0
        self._loop = Periodic(self._tick, period_s=period_s, what="loop-lag timer", log=log, first_after=True,
                              clock=clock)

    def _tick(self) -> None:
        now = self._clock()
        self._recent.append(max(0.0, now - self._last - self._period_s))
        self._last = now
        if len(self._recent) > self._window:
            self._recent.pop(0)
        self._report(max(self._recent))

    async def start(self) -> None:
        self._last = self._clock()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
