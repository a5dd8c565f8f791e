"""The scaling policies the simulator (cluster.capacity.simulator) replays a trace under:
owc's (cluster.capacity.policy), Ray Serve's default autoscaling, and a KEDA-style threshold
on `vllm:num_requests_waiting`. Each sees only a ``View`` of interactive traffic: the batch
backlog shows as ``batch_waiting`` alone (owc's policy reads it only for its batch budget).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

from cluster.capacity.policy import PolicyState, Signals, decide
from cluster.config.schema import Autoscaling, Replicas


@dataclass
class View:
    """What a scaling policy may see at time t."""

    t: float
    target: int  # replicas asked for (starting + ready, not draining)
    ready: int
    ongoing: int  # held + waiting + running
    waiting: int  # in engine queues
    kv_usage: float
    ttft_p95_s: float | None
    request_rate: float
    arrival_rate: float = 0.0  # over the last ARRIVAL_WINDOW_S
    batch_waiting: int = 0  # batch lines not yet running (excluded from every load signal)


class ScalingPolicy(ABC):
    """A scaling policy the simulator consults every ``interval_s``."""

    name = "policy"
    interval_s = 15.0

    @abstractmethod
    def target(self, v: View) -> int:
        """The replica target given what the policy can see now."""


class OwcPolicy(ScalingPolicy):
    def __init__(self, settings: Autoscaling, bounds: Replicas, *, interval_s: float = 15.0, name: str = "owc"):
        self.settings, self.bounds, self.interval_s, self.name = settings, bounds, interval_s, name
        self.state = PolicyState()

    def target(self, v: View) -> int:
        sig = Signals(at=v.t, ongoing=v.ongoing, queue=v.waiting, kv_usage=v.kv_usage, ttft_p95_s=v.ttft_p95_s,
                      request_rate=v.request_rate, arrival_rate=v.arrival_rate, batch_queue=v.batch_waiting)
        d = decide(sig, current=v.target, settings=self.settings, bounds=self.bounds, state=self.state, now=v.t)
        self.state = d.state
        return d.target


class RayServeDefault(ScalingPolicy):
    """Ray Serve's default request-based autoscaling: desired = ceil(mean ongoing requests
    over ``look_back_s`` / ``target_ongoing_requests``), applied once the wish has held
    ``upscale_delay_s`` (up) or ``downscale_delay_s`` (down)."""

    interval_s = 1.0

    def __init__(self, bounds: Replicas, *, target_ongoing_requests: float = 2.0, upscale_delay_s: float = 30.0,
                 downscale_delay_s: float = 600.0, look_back_s: float = 30.0):
        self.bounds, self.target_ongoing = bounds, target_ongoing_requests
        self.up_delay, self.down_delay, self.look_back = upscale_delay_s, downscale_delay_s, look_back_s
        self.name = "ray-serve-default"
        self._samples: deque = deque()
        self._want_since: tuple[str, float] | None = None

    def target(self, v: View) -> int:
        self._samples.append((v.t, v.ongoing))
        while self._samples and self._samples[0][0] < v.t - self.look_back:
            self._samples.popleft()
        mean = sum(x for _, x in self._samples) / len(self._samples)
        desired = min(self.bounds.max, max(self.bounds.min, math.ceil(mean / self.target_ongoing)))
        direction = "up" if desired > v.target else "down" if desired < v.target else None
        if direction is None:
            self._want_since = None
            return v.target
        if self._want_since is None or self._want_since[0] != direction:
            self._want_since = (direction, v.t)
        delay = self.up_delay if direction == "up" else self.down_delay
        if v.t - self._want_since[1] >= delay:
            self._want_since = None
            return desired
        return v.target


class KedaThreshold(ScalingPolicy):
    """KEDA's Prometheus scaler on sum(vllm:num_requests_waiting) with an AverageValue
    ``threshold`` under the HPA defaults: desired = ceil(waiting / threshold) every 15 s,
    up at once (at most max(4, 100 %) per period), down to the highest recommendation of
    the last 300 s."""

    def __init__(self, bounds: Replicas, threshold: float, *, stabilization_s: float = 300.0):
        self.bounds, self.threshold, self.stabilization_s = bounds, threshold, stabilization_s
        self.name = f"keda-waiting>{threshold:g}"
        self._recs: deque = deque()

    def target(self, v: View) -> int:
        desired = min(self.bounds.max, max(self.bounds.min, math.ceil(v.waiting / self.threshold)))
        self._recs.append((v.t, desired))
        while self._recs and self._recs[0][0] < v.t - self.stabilization_s:
            self._recs.popleft()
        if desired > v.target:
            return min(desired, v.target + max(4, v.target))
        return min(v.target, max(d for _, d in self._recs))
