"""How many batch lines a gateway process may run on a model now, driven by the interactive
requests' time to first token that the same process measures (cluster.gateway.flowcontrol.batch_class
asks it before a batch line takes a slot).

Free engine slots are not free capacity on every engine: on a CPU engine (and on a GPU whose
steps are compute-bound) each running sequence slows every step, so batch lines in the idle
slots can slow the interactive requests that share the engine. The pacer therefore watches what
interactive clients see and backs the batch off, additive increase and multiplicative decrease
as a TCP sender does:

- Time is cut in windows of ``window_s``. A window's figure is a high quantile (``quantile``)
  of the interactive TTFTs that ended in it (a window with fewer than ``min_samples`` runs on,
  up to ``MAX_STRETCH`` windows long: a high quantile of a few samples is mostly noise).
- The baseline is the median figure of the windows of the last ``memory_s`` in which this
  process ran no batch line of the model (the interactive traffic alone; the median, not the
  lowest, which a few lucky windows would pull below what the traffic alone usually shows).
- A window with batch lines over ``(1 + tolerance) x baseline``: the limit halves (down to 0);
  any other window in which the lines reached the limit (or the limit is 0): it grows by one
  line (up to ``max_lines``). A limit the lines did not reach does not grow (as TCP does not grow
  a window the sender did not fill), so a batch arriving after a long quiet spell starts low. With no baseline known while batch
  lines run, the next window starts none (a probe, which goes on until a whole window had no
  line running), and so does one window every ``memory_s`` when every window had batch lines
  (the baseline would otherwise only age).
- One line until a first window has shown whether interactive requests come.
- A window with no interactive request at all: nothing to protect, the limit is ``max_lines``;
  the first interactive request after such a window brings it down to one line at once (slow
  start: lines already running finish, no new one starts beyond it).

Pure: the clock is injected, no I/O. Each process paces its own lines; processes that share
an engine see the same slowed TTFTs and back off together.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


MAX_STRETCH = 5  # a window short of min_samples interactive TTFTs runs on up to this many window_s


def _quantile(xs: list[float], q: float) -> float:
    """Nearest-rank quantile ``q`` (0-100) of a non-empty list."""
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class _Model:
    limit: int
    start: float
    samples: list[float] = field(default_factory=list)
    batch_ran: bool = False  # a batch line of the model ran in this process during the window
    peak: int = 0  # the most batch lines of the model this process ran at once in the window
    quiet: deque = field(default_factory=deque)  # (window end, figure) of windows without batch lines
    last_quiet: float = -math.inf  # when the last such window ended
    probing: bool = False  # this window runs no batch line (learning the baseline)
    idle: bool = True  # the last window had no interactive request


class BatchPacer:
    def __init__(self, *, max_lines: int, tolerance: float = 0.2, window_s: float = 2.0, quantile: float = 90.0,
                 min_samples: int = 20, memory_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.max_lines = max_lines
        self.tolerance = tolerance
        self.window_s = window_s
        self.quantile = quantile
        self.min_samples = min_samples
        self.memory_s = memory_s
        self._clock = clock
        self._models: dict[str, _Model] = {}

    def _model(self, model: str) -> _Model:
        m = self._models.get(model)
        if m is None:
            m = self._models[model] = _Model(limit=1, start=self._clock())  # max_lines after a window with no traffic
        return m

    def interactive_ttft(self, model: str, ttft_s: float) -> None:
        """An interactive request of ``model`` got its first token after ``ttft_s``."""
        m = self._model(model)
        self._roll(model, m)
        if m.idle:  # traffic again after a window without: one line until the windows say more
            m.idle = False
            m.limit = min(m.limit, 1)
        m.samples.append(ttft_s)

    def limit(self, model: str, running: int) -> int:
        """Batch lines of ``model`` this process may run now; ``running``: how many it runs."""
        m = self._model(model)
        self._roll(model, m)
        if running:
            m.batch_ran = True
            m.peak = max(m.peak, running)
        return 0 if m.probing else m.limit

    def baseline(self, model: str) -> float | None:
        m = self._model(model)
        return statistics.median(f for _, f in m.quiet) if m.quiet else None

    def _roll(self, model: str, m: _Model) -> None:
        now = self._clock()
        age = now - m.start
        if age < self.window_s or (m.samples and len(m.samples) < self.min_samples
                                   and age < MAX_STRETCH * self.window_s):
            return
        while m.quiet and m.quiet[0][0] < now - self.memory_s:
            m.quiet.popleft()
        was_probing, m.probing = m.probing, False
        m.idle = not m.samples
        if m.idle:  # no interactive request: nothing to protect
            m.limit = self.max_lines
        else:
            figure = _quantile(m.samples, self.quantile)
            if not m.batch_ran:
                m.quiet.append((now, figure))
                m.last_quiet = now
            base = self.baseline(model)
            if base is None:
                m.probing = m.batch_ran  # learn the baseline first (lines still running: the probe goes on)
            elif m.batch_ran and figure > (1 + self.tolerance) * base:
                m.limit //= 2
            elif m.peak >= m.limit:
                m.limit = min(self.max_lines, m.limit + 1)
            if m.batch_ran and (was_probing or now - m.last_quiet >= self.memory_s):
                m.probing = True  # every window had batch lines: one without, to see the traffic alone
        m.start, m.samples, m.batch_ran, m.peak = now, [], False, 0
