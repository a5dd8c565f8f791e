"""Event-loop lag of this gateway process: how late a timer fires. A gateway whose loop is
late relays every stream late; the capacity controller adds gateway processes on it
(`owc_event_loop_lag_seconds`, the worst lag of the last window)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cluster.process import cancel_and_wait


class LoopLag:
    def __init__(self, report: Callable[[float], None], *, period_s: float = 0.1, window: int = 20,
                 clock: Callable[[], float] = time.perf_counter):
        """``report`` gets the worst lag of the last ``window`` ticks of ``period_s``."""
        self._report = report
        self._period_s = period_s
        self._window = window
        self._clock = clock
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        recent: list[float] = []
        while True:
            t0 = self._clock()
            await asyncio.sleep(self._period_s)
            recent.append(max(0.0, self._clock() - t0 - self._period_s))
            if len(recent) > self._window:
                recent.pop(0)
            self._report(max(recent))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
