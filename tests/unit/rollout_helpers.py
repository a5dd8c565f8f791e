"""The rollout analysis run in a test as `owc serve` runs it: ticking in the background,
reading the gateway processes' own metrics."""

from __future__ import annotations

import threading

from cluster.rollouts.analysis import LocalAnalysis


class Ticker:
    """The analysis ticking in the background, as owc serve runs it."""

    def __init__(self, analysis: LocalAnalysis, period_s: float = 0.25):
        self.analysis, self._stop = analysis, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self.analysis.tick()

    def __enter__(self):
        self._thread.start()
        return self.analysis

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
