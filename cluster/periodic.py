"""One periodic background task: run ``tick`` every ``period_s`` seconds; a failing tick is
logged and the loop goes on (a background loop that dies leaves the process blind: stale
endpoints, load-blind routing, keys never reloaded); the same failure again (a store that
stays down) is logged on one line, on its 2nd, 4th, 8th... time, and the recovery once;
``stop`` cancels the task and waits for it. Discovery's endpoint sync and file source, the gateway's stats poller, JWKS refresher,
key reloader and loop-lag timer all run on it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable

Tick = Callable[[], "Awaitable[None] | None"]


class Periodic:
    def __init__(self, tick: Tick, *, period_s: float, what: str, log: logging.Logger,
                 first_after: bool = False, fixed_rate: bool = False, traceback: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        """``what`` names the tick in the log line of a failure (with its traceback when
        ``traceback``); ``first_after``: the first tick one period after start (else at once);
        ``fixed_rate``: periods count from each tick's start (else from its end)."""
        self._tick = tick
        self.period_s = period_s
        self._what = what
        self._log = log
        self._first_after = first_after
        self._fixed_rate = fixed_rate
        self._traceback = traceback
        self._clock = clock
        self._woken = False  # wake() called since the last sleep began
        self._waiter: asyncio.Future[None] | None = None  # the sleep in progress
        self._task: asyncio.Task[None] | None = None
        self._failing: tuple[type, str] | None = None  # the failure the last ticks repeat
        self._failures = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the loop on the running event loop (a second start is a no-op)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the loop and wait until it has ended (a no-op when it is not running)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def wake(self) -> None:
        """Run the next tick now rather than at the end of the period."""
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _sleep(self, seconds: float) -> None:
        """Until ``seconds`` have passed or ``wake`` is called: one future and one timer (issue 34:
        ``asyncio.wait_for`` on an Event, a task per sleep, was most of an idle gateway's
        wake-ups' CPU, at tens of sleeps a second)."""
        if not self._woken:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(max(0.0, seconds), _settle, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._woken = False

    async def _run(self) -> None:
        if self._first_after:
            await self._sleep(self.period_s)
        while True:
            t0 = self._clock()
            try:
                result = self._tick()
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - logged; the loop must survive any failure
                self._failed(e)
            else:
                if self._failures:
                    self._log.warning("%s recovered after %d failed ticks", self._what, self._failures)
                    self._failing, self._failures = None, 0
            await self._sleep(self.period_s - (self._clock() - t0) if self._fixed_rate else self.period_s)

    def _failed(self, e: Exception) -> None:
        self._failures += 1
        again = (type(e), str(e))
        if again != self._failing:
            self._failing = again
            if self._traceback:
                self._log.exception("%s failed", self._what)
            else:
                self._log.warning("%s failed: %s", self._what, e)
        elif self._failures & (self._failures - 1) == 0:  # 2, 4, 8...: a lasting failure, not a flood
            self._log.warning("%s still failing (%d ticks): %s: %s", self._what, self._failures, type(e).__name__, e)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
