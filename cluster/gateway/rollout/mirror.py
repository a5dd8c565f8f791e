"""Mirror mode (`rollout.mirror`, docs/rollouts.md): copies of a share of stable's traffic go
to the candidate off the client's path; their answers are read for the gates and discarded.

``offer`` is called on the request path once the forwarder knows the request's routing
inputs: it decides (the rollout view's weight, sticky by session) and, when a copy is due,
starts it as a task of its own and returns at once: the client's request never awaits a
copy. A bounded queue per model and gateway process (`rollout.mirror_queue` copies pending,
i.e. sent and not answered yet) drops a copy beyond it, counted in
owc_rollout_mirror_dropped_total: a candidate that hangs fills the queue and loses copies,
and never slows the clients.

A copy goes to a candidate replica through the forwarder's own engine path (routing choice,
retries before the first byte, LoRA adapter loading) and its answer through the relay into
nothing; it is settled as a mirror copy (cluster.gateway.observability.accounting): the
owc_* request, TTFT, ITL and token metrics under version="candidate" with the tenant's label,
which is what the analysis compares with stable. It is not admitted: no tenant limit, quota
or usage is charged for it (the client's request was charged once), it takes no fair-queue
turn and is not in owc_requests_in_flight, the access log or a trace.

Not copied: a follow-up pinned to a stored response (the candidate does not hold it), a
Responses request the gateway stores on the replica (a copy would store an answer nobody can
fetch), a batch line."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from cluster.discovery.endpoints import Endpoint
from cluster.discovery.sources import EndpointSource
from cluster.gateway.context import Delivery, Job
from cluster.gateway.errors import OpenAIError
from cluster.gateway.observability.accounting import Settled
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.gateway.rollout.view import RolloutView
from cluster.gateway.stream.relay import respond
from cluster.gateway.upstream.engine_client import Response
from cluster.routing.router import Routing
from cluster.routing.types import RequestInfo
from cluster.routing.versions import CANDIDATE

log = logging.getLogger(__name__)
Open = Callable[..., Awaitable[tuple[Response, bytes]]]  # cluster.gateway.forwarder.Forwarder.open


async def _discard(message: dict) -> None:
    """The copy's answer: read, never sent anywhere."""


class Mirror:
    def __init__(self, *, view: RolloutView, endpoints: EndpointSource, routing: Routing, open: Open,
                 settle: Callable[[Settled, Delivery], None], metrics: GatewayMetrics, queue: dict[str, int],
                 timeout_s: float):
        """``open``: the forwarder's engine call (a replica chosen among the endpoints given,
        retried before its first byte); ``settle``: the accounting's; ``queue``: each mirrored
        model's bound on pending copies; ``timeout_s``: a copy's deadline (the gateway's
        request timeout: a copy no one answers frees its place then, counted as a 504)."""
        self._view = view
        self._endpoints = endpoints
        self._routing = routing
        self._open = open
        self._settle = settle
        self._queue = dict(queue)
        self._timeout_s = timeout_s
        self._pending: dict[str, set[asyncio.Task]] = {m: set() for m in self._queue}
        self._dropped = {m: metrics.mirror_dropped.labels(m) for m in self._queue}

    def offer(self, job: Job, info: RequestInfo) -> None:
        """A copy of ``job`` for the candidate when one is due; never waits."""
        if job.model not in self._queue or job.pin is not None or job.body_for is not None or job.batch is not None:
            return
        if not self._view.copies(job.model, info.session_key):
            return
        pending = self._pending[job.model]
        if len(pending) >= self._queue[job.model]:
            self._dropped[job.model].inc()
            return
        task = asyncio.get_running_loop().create_task(self._copy(job, info))
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def close(self) -> None:
        """Cancel the copies still pending (the gateway process stops)."""
        tasks = [t for p in self._pending.values() for t in p]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _copy(self, job: Job, info: RequestInfo) -> None:
        copy = dataclasses.replace(job, request_id=f"{job.request_id}-mirror", span=None, resume=False)
        delivery = Delivery(version=CANDIDATE)
        status = 0
        try:
            status = await asyncio.wait_for(self._send(copy, info, delivery), self._timeout_s)
        except asyncio.TimeoutError:
            status = 504
        except OpenAIError as e:  # no candidate replica, or the candidate's error answer
            status = e.status
        except Exception:  # a gateway bug must not end the task silently: logged, counted as a 500
            log.exception("mirror copy %s failed in the gateway", copy.request_id)
            status = 500
        if status:
            self._settle(Settled(request_id=copy.request_id, route=job.route, status=status, tenant=job.tenant,
                                 model=job.model, stream=job.stream, mirror=True), delivery)

    async def _send(self, job: Job, info: RequestInfo, delivery: Delivery) -> int:
        """The copy's final status; 0 (not settled) when no candidate replica takes requests
        (starting, or drained): that is no answer of the candidate's to judge."""
        endpoints = [e for e in self._endpoints.endpoints(job.model) if e.version == CANDIDATE]
        if all(e.draining for e in endpoints):
            return 0
        headers = {"Content-Type": "application/json", "X-Request-Id": job.request_id}
        resp, first = await self._open(job, info, endpoints, headers, delivery)
        held: Endpoint | None = delivery.endpoint
        gone = asyncio.get_running_loop().create_future()  # no client to go away
        try:
            await respond(resp, first, _discard, job=job, delivery=delivery, gone=gone, timed_out=lambda: False,
                          on_broken=lambda: self._routing.failed(held.replica_id) if held else None)
        finally:
            gone.cancel()
            resp.close()
            if held is not None:
                self._routing.release(held.replica_id, job.adapter)
        return delivery.status
