"""Responses conversations across engine replicas, and the reasoning exposure policy, on the
request path.

Admission hands every job to ``Conversations.prepare``:
- the reasoning policy (cluster.gateway.stream.reasoning) sets ``Job.strip_reasoning``;
- a Responses request whose answer an engine may store (it does not say `store: false`) gets
  its body per replica (``Job.body_for``): a minted, tenant-bound id as vLLM's `request_id`,
  which vLLM makes the response id. Minted for every model, whatever owc knows of its engine:
  an engine owc did not start (`owc gateway --upstream`) may keep responses
  (VLLM_ENABLE_RESPONSES_API_STORE=1) without owc's config saying so, and its own store then
  answers follow-ups and retrievals. SSE events are never rewritten for this;
- a Responses request with `previous_response_id` is pinned to the replica its id names
  (``Job.pin``); an id the gateway cannot verify for this tenant and model → OpenAI's 400
  `previous_response_not_found` (cluster.gateway.responses.missing says why where a setting
  would change it; GET and cancel of such an id keep vLLM's 404).
The forwarder narrows a pinned job's endpoints to its owner (``owner_endpoints``): a replica
that is gone or draining → the same 400. The owner's own 404 (its store is off, or it evicted the
response) reaches the client through ``explain`` as that 400, naming the setting. Retrieval and cancel
are routes of their own (cluster.gateway.responses.routes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import orjson

from cluster.config.schema import OwcConfig
from cluster.discovery.endpoints import Endpoint
from cluster.gateway.context import Job
from cluster.gateway.context import RESPONSES
from cluster.gateway.errors import OpenAIError
from cluster.gateway.stream.reasoning import exposure
from cluster.gateway.responses import missing
from cluster.gateway.responses.ids import Owner, ResponseIds


def locate(config: OwcConfig, ids: ResponseIds, tenant: str, response_id: object, *, model: str | None = None) -> Owner:
    """Where ``response_id`` lives, if this tenant was given it (for ``model``, when named):
    its model and replica. The hinted 404 otherwise; a model whose `responses_store` is on
    (owc bounds its engines' stores) also enforces its `ttl_s` here."""
    o = ids.verify(tenant, response_id) if isinstance(response_id, str) else None
    if o is None or o.model not in config.models or (model is not None and o.model != model):
        raise missing.unknown(response_id, random_key=ids.random_key)
    store = config.models[o.model].responses_store
    if store.enabled and ids.expired(o, store.ttl_s):
        raise missing.expired(response_id, o.model, store.ttl_s)
    return o


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
        out: dict = {}
        prev = job.data.get("previous_response_id")
        if prev is not None:
            try:
                out["pin"] = locate(self._config, self._ids, job.tenant, prev, model=job.model).replica_id
            except OpenAIError as e:
                raise missing.previous_not_found(e, prev) from None
        if job.data.get("store", True) is not False:
            out["body_for"] = _minting(self._ids, job)
        return out

    def explain(self, job: Job | None, err: OpenAIError) -> OpenAIError:
        """The owner's own 404 for a follow-up's `previous_response_id`, saying why; any other error as it is."""
        if job is None or job.pin is None or job.route != RESPONSES:
            return err
        prev = job.data.get("previous_response_id")
        if not missing.is_vllms(err, prev):
            return err
        return missing.previous_not_found(missing.engine_missing(
            prev, job.model, store_enabled=self._config.models[job.model].responses_store.enabled), prev)


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
        prev = job.data.get("previous_response_id", "")
        raise missing.previous_not_found(missing.owner_gone(prev), prev)
    return owner
