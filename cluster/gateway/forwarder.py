"""Forwarding: an admitted job goes to one engine replica's own OpenAI HTTP server and its
answer back to the client (cluster.gateway.stream.relay), tokens never crossing a Ray actor.

Here: the model's in-flight and queued gauges; holding a job while its model is scaled to
zero; the routing inputs (prefix and session keys); the replica choice and the retries
until the first byte (a replica that refuses the connection or dies before answering is
retried on another); the request deadline; the engine span. Closing the engine connection
is how an engine request is aborted: vLLM aborts a request whose client went away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

from cluster.discovery.endpoints import Endpoint
from cluster.discovery.sources import EndpointSource
from cluster.gateway.context import CLIENT_CLOSED, Delivery, Job, Receive, Send, first_of, wait_disconnect
from cluster.gateway.edge.client_writer import ClientWriter
from cluster.gateway.upstream.deadline import Deadline
from cluster.gateway.upstream.wake import taking_requests, wait_for_replica
from cluster.gateway.upstream.engine_client import ConnectFailed, EngineClient, EngineError, Response
from cluster.gateway.errors import RETRY_SOON, OpenAIError, from_upstream
from cluster.gateway.flowcontrol.fair_queue import FairQueue
from cluster.gateway.flowcontrol.preemption import Preempted
from cluster.gateway.observability.children import Children, add
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.gateway.responses.conversations import owner_endpoints
from cluster.gateway.rollout.version import versioned
from cluster.gateway.context import MESSAGES
from cluster.gateway.stream.resume import StreamLedger, continuation, rendered
from cluster.gateway.stream.relay import respond
from cluster.gateway.observability.tracing import RequestTracer
from cluster.routing.filters import QueueFull
from cluster.routing.keys import prefix_key, session_key
from cluster.routing.router import NoReplica, Routing
from cluster.routing.types import RequestInfo

log = logging.getLogger(__name__)
ANTHROPIC_SHARED = ("system", "tools")  # the Messages API's shared prompt leads its prefix key
ENGINE_LOST = "the engine replica's connection broke before it answered; retry"


class Forwarder:
    adapters = None  # cluster.gateway.upstream.adapter_loader.AdapterLoader: loads a LoRA adapter the chosen replica lacks
    versions = None  # cluster.gateway.rollout.view.RolloutView: the version a request goes to during a rollout
    mirror = None  # cluster.gateway.rollout.mirror.Mirror: mirror mode's copies for the candidate

    def __init__(
        self, *, routing: Routing, endpoints: EndpointSource, engine: EngineClient, metrics: GatewayMetrics,
        request_timeout_s: float, wake_timeouts: Mapping[str, float] | None = None,
        tracer: RequestTracer | None = None, fair: FairQueue | None = None,
    ):
        """``wake_timeouts``: for each model that a request wakes from zero, how long to hold it.
        ``fair``: the gateway's queue in front of saturated engines (None: requests go straight on)."""
        self._routing = routing
        self._endpoints = endpoints
        self._engine = engine
        self._metrics = metrics
        self._request_timeout_s = request_timeout_s
        self._wake_timeouts = dict(wake_timeouts or {})
        self._tracer = tracer
        self._fair = fair
        self._child = Children()

    async def close(self) -> None:
        self._engine.close()
        if self._fair is not None:
            await self._fair.close()

    async def forward(self, job: Job, receive: Receive, send: Send, delivery: Delivery,
                      writer: ClientWriter | None = None) -> None:
        """Forward one job; raises OpenAIError (or ClientGone) before any response byte is sent.
        ``writer``: the client's connection, for a stream's events (cluster.gateway.stream.relay)."""
        m = self._metrics
        child = self._child
        if job.batch is not None:  # batch lines do not count in the controller's load signal
            in_flight, queued = child(m.batch_in_flight, job.model), child(m.batch_waiting, job.model)
        else:
            in_flight, queued = child(m.in_flight, job.model), child(m.queued, job.model)
        add(in_flight)
        add(queued)
        answered = False

        def on_answer() -> None:
            nonlocal answered
            if not answered:
                answered = True
                add(queued, -1)

        engine_span, trace_headers = (self._tracer.engine_span(job.span, job.model)
                                      if self._tracer is not None and job.span is not None else (None, None))
        try:
            endpoints = self._endpoints.endpoints(job.model)
            wake_s = self._wake_timeouts.get(job.model)
            if wake_s is not None and not taking_requests(endpoints) and job.batch is None:
                # Scaled to zero: hold the request (it counts as in flight, which is what wakes
                # the model through the controller) until a replica registers.
                endpoints = await wait_for_replica(self._endpoints, job.model, wake_s, receive)
            if job.pin is not None:  # a previous_response_id: only its owner holds it
                endpoints = owner_endpoints(job, endpoints)
            job, endpoints = self._version(job, endpoints, delivery)
            chars = self._routing.prefix_chars(job.model)
            preamble = ANTHROPIC_SHARED if job.route == MESSAGES else ()  # an agent's system prompt and tools
            info = RequestInfo(model=job.model, prefix_key=prefix_key(job.data, chars, preamble=preamble) if chars else b"",
                               session_key=session_key(job.headers, job.data), adapter=job.adapter)
            if self.mirror is not None:  # mirror mode: maybe a copy for the candidate, never awaited
                self.mirror.offer(job, info)
            headers = {"Content-Type": "application/json", "X-Request-Id": job.request_id, **(trace_headers or {})}
            first, taken = await self._slot(job, info, endpoints, receive, delivery), False
            while True:
                try:
                    await self._send(job, receive, send, info=info, endpoints=endpoints, headers=headers,
                                     delivery=delivery, on_answer=on_answer, first=first, writer=writer, taken=taken)
                    break
                except Preempted:  # its slot taken back before it answered: it waits again, first of its tenant
                    taken = True
                finally:
                    if first is not None and job.batch is not None:
                        self._fair.batch_finished(job.model)
                    elif first is not None:
                        self._fair.finished(job.model, job.tenant)
                first = None
                first = await self._slot(job, info, endpoints, receive, delivery, again=True)
        finally:
            on_answer()
            add(in_flight, -1)
            if engine_span is not None:
                ep = delivery.endpoint
                RequestTracer.finish(engine_span, delivery.status or 500, {
                    "server.address": ep.url if ep else None, "owc.replica_id": ep.replica_id if ep else None,
                })

    def _version(self, job: Job, endpoints: list[Endpoint], delivery: Delivery) -> tuple[Job, list[Endpoint]]:
        """During a rollout, the version that answers and its replicas (cluster.gateway.rollout.version)."""
        return (job, endpoints) if self.versions is None else versioned(self.versions, job, endpoints, delivery)

    def _of_version(self, model: str, delivery: Delivery) -> list[Endpoint]:
        version = delivery.version if self.versions is not None and model in self.versions.models else None
        return [e for e in self._endpoints.endpoints(model) if version in (None, e.version)]

    async def _slot(self, job: Job, info: RequestInfo, endpoints: list[Endpoint], receive: Receive,
                    delivery: Delivery, *, again: bool = False) -> Endpoint | None:
        """The replica the request's first attempt goes to, taken: once it has room, in the
        tenant's fair turn (cluster.gateway.flowcontrol.fair_queue). None without a fair queue."""
        if self._fair is None:
            return None

        def pick(eps, exclude: frozenset[str]) -> Endpoint:
            # A waiter is granted on the room of the model's replicas of every version: during a
            # rollout it still goes to its own version's (past their limit when none has room).
            # (A model's rollout only: an adapter's versions share the replicas and keep their label.)
            split = delivery.version is not None and self.versions is not None and job.model in self.versions.models
            mine = [e for e in eps if e.version == delivery.version] if split else eps
            if mine is not eps and mine:
                eps, exclude = mine, exclude if any(e.replica_id not in exclude for e in mine) else frozenset()
            ep = self._choose(eps, info, exclude, delivery, lost=None)
            if split:
                delivery.version = ep.version  # its version gone meanwhile: the answer says who answered
            self._routing.acquire(ep.replica_id, job.adapter)
            return ep

        if job.batch is not None:  # the lowest class: idle room only (cluster.gateway.flowcontrol.batch_class)
            ep = await self._fair.batch_slot(job.model, pick)
            job.batch.sent = True
            return ep
        return await self._fair.slot(job.model, job.tenant, endpoints, pick, receive, pinned=job.pin is not None,
                                     give_back=lambda ep: self._routing.release(ep.replica_id, job.adapter), again=again,
                                     revocable=not job.stream and not again)

    def _choose(self, endpoints, info: RequestInfo, exclude: frozenset[str], delivery: Delivery,
                lost: str | None) -> Endpoint:
        t0 = time.perf_counter()
        try:
            return self._routing.choose(endpoints, info, exclude, delivery.plugin_timings)
        except QueueFull as e:
            raise OpenAIError(429, f"{e}; retry shortly", code="queue_full", headers=RETRY_SOON) from None
        except NoReplica:
            if lost is not None:
                raise OpenAIError(502, ENGINE_LOST, code="engine_connection_lost") from None
            raise OpenAIError(503, "no engine replica of this model is reachable; retry shortly",
                              code="no_healthy_replica", headers=RETRY_SOON) from None
        finally:
            delivery.decisions.append(time.perf_counter() - t0)

    def _release(self, replica_id: str, job: Job) -> None:
        self._routing.release(replica_id, job.adapter)
        if self._fair is not None:
            self._fair.released(job.model)

    async def _send(self, job: Job, receive: Receive, send: Send, *, info: RequestInfo, endpoints: list[Endpoint],
                    headers: dict[str, str], delivery: Delivery, on_answer: Callable[[], None],
                    first: Endpoint | None = None, writer: ClientWriter | None = None, taken: bool = False) -> None:
        deadline = Deadline(self._request_timeout_s)
        # Once the body is consumed, receive() only returns on disconnect. Before the engine
        # answers (a non-streamed response comes all at the end), a disconnect cancels the
        # call; after, it closes the engine connection. Either way vLLM aborts the request.
        loop = asyncio.get_running_loop()
        gone = writer.lost() if writer is not None and writer.watched else loop.create_task(wait_disconnect(receive))
        given, begun = first, []

        async def opened() -> tuple[Response, bytes]:  # from its start ``open`` gives the replica back itself
            begun.append(True)
            return await self.open(job, info, endpoints, headers, delivery, first=given)

        def unstarted() -> None:  # cancelled before it ran: the replica the fair queue gave it goes back here
            if not begun and given is not None:
                self._release(given.replica_id, job)

        opening = deadline.opening = loop.create_task(opened())
        # Until it answers, a request granted by the fair queue may have its slot taken back.
        grant = self._fair.preemptible(job.model, job.tenant, first.replica_id, opening.cancel) \
            if first is not None and job.batch is None and job.pin is None and not taken else None
        try:
            try:
                await first_of(gone, opening)
            except asyncio.CancelledError:
                opening.cancel()
                unstarted()
                raise
            finally:
                if grant is not None:
                    self._fair.settled(job.model, grant)
            if not opening.done():
                opening.cancel()
                unstarted()
                delivery.status = CLIENT_CLOSED
                return
            if opening.cancelled():
                unstarted()
                if grant is not None and grant.preempted:
                    raise Preempted()
                raise OpenAIError(504, "engine did not answer in time", code="engine_timeout")
            resp, first = opening.result()
            deadline.resp = resp
            held = [delivery.endpoint.replica_id if delivery.endpoint else ""]  # the replica answering now
            tried = {held[0]}

            async def resume(ledger: StreamLedger) -> tuple[Response, bytes]:
                """The stream continued on another replica (cluster.gateway.stream.resume)."""
                self._release(held.pop(), job)
                endpoints = self._of_version(job.model, delivery)
                try:
                    if ledger.render is not None:  # a harmony stream: the engine's prompt and grammar first
                        route, body = ledger.render
                        render = dataclasses.replace(job, route=route, body=body, body_for=None, pin=None, stream=False)
                        answer = await self.open(render, info, endpoints, headers, delivery, exclude=tried)
                        self._release(delivery.endpoint.replica_id, job)
                        rendered(ledger, *answer)
                    cont = dataclasses.replace(job, route=ledger.continuation_route, body=continuation(ledger),
                                               body_for=None, pin=None)
                    resp, first = await self.open(cont, info, endpoints, headers, delivery, exclude=tried)
                    rid = delivery.endpoint.replica_id
                    tried.add(rid)
                    if resp.status >= 400:
                        resp.close()
                        self._release(rid, job)
                        raise from_upstream(resp.status, first)
                except OpenAIError:
                    self._metrics.resumes.labels(job.model, "failed").inc()
                    raise
                held.append(rid)
                deadline.resp = resp
                self._metrics.resumes.labels(job.model, "resumed").inc()
                return resp, first

            try:
                on_answer()
                await respond(resp, first, send, job=job, delivery=delivery, gone=gone,
                              timed_out=lambda: deadline.expired,
                              on_broken=lambda: self._routing.failed(held[0]) if held else None,
                              resume=resume if job.resume else None, writer=writer)
            finally:
                if held:
                    self._release(held[0], job)
        finally:
            deadline.cancel()
            gone.cancel()

    async def open(self, job: Job, info: RequestInfo, endpoints: list[Endpoint], headers: dict[str, str],
                   delivery: Delivery, *, first: Endpoint | None = None,
                   exclude: set[str] | None = None) -> tuple[Response, bytes]:
        """Send the job to the replica routing picks (``first``: already picked and taken) and
        wait for its first body bytes (a non-streamed response: all of it). Until then the
        client has received nothing, so a replica that refuses the connection or dies is
        retried on another one (a retry does not queue again). ``exclude``: replicas not to try."""
        routing = self._routing
        tried: set[str] = set(exclude or ())
        lost: str | None = None
        while True:
            if first is not None:
                ep, first = first, None
            else:
                ep = self._choose(endpoints, info, frozenset(tried), delivery, lost)
                routing.acquire(ep.replica_id, job.adapter)
            rid = ep.replica_id
            tried.add(rid)
            host, port = self._engine.address(ep.url)
            delivery.endpoint = ep
            resp: Response | None = None
            try:
                if job.adapter is not None and self.adapters is not None:
                    await self.adapters.ensure(job.model, ep, job.adapter, routing.adapters_of(rid))
                body = job.body if job.body_for is None else job.body_for(ep)  # a stored response's id
                resp = await self._engine.post(host, port, job.route, body, headers)
                if job.stream and resp.status < 400:
                    first = await anext(aiter(resp.chunks()), b"")
                else:
                    first = await resp.read()
                return resp, first
            except BaseException as e:
                # Not this replica after all: its connection goes, its in-flight count too.
                if resp is not None:
                    resp.close()
                self._release(rid, job)
                delivery.endpoint = None
                if not isinstance(e, EngineError):
                    raise
                routing.failed(rid)
                reason = "connect_refused" if isinstance(e, ConnectFailed) else "engine_lost"
                # The detail names the engine's address: the log has it, the client does not.
                log.warning("request %s: replica %s failed before its first byte: %s", job.request_id, rid, e)
                if reason == "engine_lost":
                    lost = reason
                if delivery.retries >= routing.max_retries(info.model):
                    if reason == "engine_lost":
                        raise OpenAIError(502, ENGINE_LOST, code="engine_connection_lost") from None
                    raise OpenAIError(503, "no engine replica of this model is reachable; retry shortly",
                                      code="no_healthy_replica", headers=RETRY_SOON) from None
                delivery.retry_reasons.append(reason)
