"""Responses conversations across engine replicas, and the reasoning exposure policy, on the
request path.

Admission hands every job to ``Conversations.prepare``:
- the reasoning policy (cluster.gateway.stream.reasoning) sets ``Job.strip_reasoning``;
- a Responses request with `previous_response_id` is pinned to the replica its id names
  (``Job.pin``); an id the gateway cannot verify for this tenant and model → vLLM's 404;
- a Responses request whose answer will be stored (the model's `responses_store` is on and
  the request does not say `store: false`) gets its body per replica (``Job.body_for``): the
  minted id as vLLM's `request_id`, which vLLM makes the response id. SSE events are never
  rewritten for this.
The forwarder narrows a pinned job's endpoints to its owner (``owner_endpoints``): a replica
that is gone or draining → 404. Retrieval and cancel are routes of their own
(cluster.gateway.responses.routes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import orjson

from cluster.config.schema import OwcConfig
from cluster.discovery.endpoints import Endpoint
from cluster.gateway.context import Job
from cluster.gateway.context import RESPONSES
from cluster.gateway.stream.reasoning import exposure
from cluster.gateway.responses.ids import ResponseIds, not_found


class Conversations:
    def __init__(self, config: OwcConfig, ids: ResponseIds):
        self._config = config
        self._ids = ids

    @property
    def ids(self) -> ResponseIds:
        return self._ids

    def prepare(self, job: Job) -> Job:
        changes: dict = {}
        if exposure(self._config, job.model, job.tenant) == "strip":
            changes["strip_reasoning"] = True
        if job.route == RESPONSES:
            changes.update(self._affinity(job))
        return dataclasses.replace(job, **changes) if changes else job

    def _affinity(self, job: Job) -> dict:
        store = self._config.models[job.model].responses_store
        out: dict = {}
        prev = job.data.get("previous_response_id")
        if prev is not None:
            if not store.enabled:
                raise not_found(prev)  # what vLLM without its store answers
            owner = self._ids.verify(job.tenant, prev, ttl_s=store.ttl_s)
            if owner is None or owner.model != job.model:
                raise not_found(prev)
            out["pin"] = owner.replica_id
        if store.enabled and job.data.get("store", True) is not False:
            out["body_for"] = _minting(self._ids, job)
        return out


def _minting(ids: ResponseIds, job: Job) -> Callable[[Endpoint], bytes]:
    data, tenant, model = job.data, job.tenant, job.model

    def body_for(ep: Endpoint) -> bytes:
        return orjson.dumps({**data, "request_id": ids.mint(tenant, model, ep.replica_id)})

    return body_for


def owner_endpoints(job: Job, endpoints: list[Endpoint]) -> list[Endpoint]:
    """A pinned job's owner among ``endpoints``; vLLM's 404 when it is gone or draining
    (its stored responses leave with it)."""
    owner = [e for e in endpoints if e.replica_id == job.pin and not e.draining]
    if not owner:
        raise not_found(job.data.get("previous_response_id", ""))
    return owner
