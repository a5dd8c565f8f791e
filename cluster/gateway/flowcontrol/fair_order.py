"""The order in which the gateway's queue hands out engine slots: strict priority between
classes (a higher ``priority`` first), start-time fair queueing between the tenants of a
class (Goyal et al., SFQ), each request costing ``1 / weight`` of its tenant's virtual time.

Each tenant is a flow with its own FIFO. A flow's head request carries the start tag
``max(V, F)``: ``V`` is the class's virtual time (the start tag of the last request handed
out) and ``F`` the tenant's finish tag (its last start tag + 1/weight). The smallest start
tag goes next. So a tenant sending rarely is served almost at once, a flooding tenant waits
behind its own backlog only (its tags run ahead of ``V``), and a tenant back from idle gets
no credit for the time it sent nothing. Removing a waiter (its client left) touches its own
flow only. Pure: no clock, no I/O; the dispatcher (cluster.gateway.flowcontrol.fair_queue) drives it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


@dataclass
class _Flow:
    weight: float
    priority: int
    waiting: deque = field(default_factory=deque)
    finish: float = 0.0  # this tenant's finish tag


@dataclass
class _Class:
    vtime: float = 0.0
    flows: dict[str, _Flow] = field(default_factory=dict)  # tenants with waiters, in arrival order


class FairOrder:
    def __init__(self) -> None:
        self._classes: dict[int, _Class] = {}
        self._finish: dict[str, tuple[int, float]] = {}  # tenant -> (class, finish tag) of idle tenants
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _flow(self, tenant: str) -> tuple[_Class, _Flow] | None:
        """The tenant's flow with waiters and its class (a tenant waits in one class at a time)."""
        for c in self._classes.values():
            flow = c.flows.get(tenant)
            if flow is not None:
                return c, flow
        return None

    def depth(self, tenant: str) -> int:
        found = self._flow(tenant)
        return len(found[1].waiting) if found else 0

    def depths(self) -> dict[str, int]:
        return {t: len(f.waiting) for c in self._classes.values() for t, f in c.flows.items()}

    def push(self, tenant: str, item: Hashable, *, weight: float = 1.0, priority: int = 0, front: bool = False) -> None:
        """``front``: an item handed out before and taken back (preempted) goes first in its
        flow, its cost refunded (it will be charged when handed out again)."""
        if weight <= 0:
            raise ValueError("weight must be > 0")
        c = self._classes.setdefault(priority, _Class())
        flow = c.flows.get(tenant)
        if flow is None:
            cls, finish = self._finish.pop(tenant, (priority, 0.0))
            flow = c.flows[tenant] = _Flow(weight=weight, priority=priority, finish=finish if cls == priority else 0.0)
        flow.weight = weight
        if front:
            flow.finish = max(0.0, flow.finish - 1.0 / weight)
            flow.waiting.appendleft(item)
        else:
            flow.waiting.append(item)
        self._size += 1

    def head(self, tenant: str) -> Hashable | None:
        """The tenant's next item (None: it has none waiting)."""
        found = self._flow(tenant)
        return found[1].waiting[0] if found else None

    def peek(self, admits: Callable[[str], bool] | None = None) -> tuple[str, Hashable] | None:
        """The tenant and item that ``pop`` would return, without taking it."""
        chosen = self._next(admits)
        if chosen is None:
            return None
        _, tenant, flow, _ = chosen
        return tenant, flow.waiting[0]

    def pop(self, admits: Callable[[str], bool] | None = None) -> tuple[str, Hashable] | None:
        """The next (tenant, item) in fair order among the tenants ``admits`` lets through
        (all by default); None when there is none."""
        chosen = self._next(admits)
        if chosen is None:
            return None
        c, tenant, flow, start = chosen
        item = flow.waiting.popleft()
        self._size -= 1
        c.vtime = start
        flow.finish = start + 1.0 / flow.weight
        if not flow.waiting:
            self._retire(c, tenant, flow)
        return tenant, item

    def remove(self, tenant: str, item: Hashable) -> bool:
        """Take a waiter out (its client left, or it waited too long); False if it is not queued."""
        found = self._flow(tenant)
        if found is None:
            return False
        c, flow = found
        try:
            flow.waiting.remove(item)
        except ValueError:
            return False
        self._size -= 1
        if not flow.waiting:
            self._retire(c, tenant, flow)
        return True

    def newest_of_longest(self) -> tuple[str, Hashable] | None:
        """The last-queued item of the tenant with the most waiters (what a full queue pushes out)."""
        best: tuple[int, str, _Flow] | None = None
        for c in self._classes.values():
            for tenant, flow in c.flows.items():
                if best is None or len(flow.waiting) > best[0]:
                    best = (len(flow.waiting), tenant, flow)
        return (best[1], best[2].waiting[-1]) if best else None

    def _next(self, admits: Callable[[str], bool] | None = None) -> tuple[_Class, str, _Flow, float] | None:
        for priority in sorted(self._classes, reverse=True):
            c = self._classes[priority]
            best: tuple[float, str, _Flow] | None = None
            for tenant, flow in c.flows.items():  # ties: the flow that became active first
                if admits is not None and not admits(tenant):
                    continue
                start = max(c.vtime, flow.finish)
                if best is None or start < best[0]:
                    best = (start, tenant, flow)
            if best is not None:
                return c, best[1], best[2], best[0]
        return None

    def _retire(self, c: _Class, tenant: str, flow: _Flow) -> None:
        """An emptied flow leaves its class; its finish tag is kept so that a tenant that
        comes straight back does not jump ahead of the virtual time it already used."""
        del c.flows[tenant]
        self._finish[tenant] = (flow.priority, flow.finish)
        if len(self._finish) > 4096:  # bounded memory: a tag its class's virtual time has passed means nothing
            self._finish = {t: (p, f) for t, (p, f) in self._finish.items()
                            if p not in self._classes or f > self._classes[p].vtime}
