"""The version a request goes to during a rollout, on the request path (docs/rollouts.md).

A model's rollout: the version picked by the weight (cluster.gateway.rollout.view), then
only that version's replicas; a request pinned to a replica (a stored response) keeps that
replica's version.

An adapter's rollout ("Adapter candidates"): the retrained adapter runs on the model's own replicas beside the current one, as the LoRA
``<adapter>@candidate`` (cluster.config.adapters.candidate_lora). A request that names the
adapter and is picked for the candidate goes to the engine under that LoRA name; vLLM
writes the LoRA name it served into the answer's ``model`` field, so the answer is renamed
back to the name the client asked for (``Job.rename``, applied by the relay to this
request's bytes only: no request outside an adapter rollout's candidate pays for it).

The version of every other request of that model is ``other``: the version-labelled metrics
the analysis reads then hold the adapter's requests alone as stable and candidate."""

from __future__ import annotations

import dataclasses

import orjson

from cluster.config.adapters import candidate_lora
from cluster.discovery.endpoints import Endpoint
from cluster.gateway.context import Delivery, Job
from cluster.routing.keys import session_key
from cluster.routing.versions import CANDIDATE


def renames(engine: str, client: str) -> tuple[tuple[bytes, bytes], ...]:
    """The ``"model"`` field as an engine writes it (compact JSON, or with a space) -> as the client asked."""
    e, c = orjson.dumps(engine), orjson.dumps(client)
    return tuple((b'"model"' + sep + e, b'"model"' + sep + c) for sep in (b":", b": "))


def candidate_job(job: Job) -> Job:
    """``job`` (naming an adapter) as the adapter's candidate LoRA receives it."""
    assert job.adapter is not None
    lora = candidate_lora(job.adapter)
    data = {**job.data, "model": lora}
    body_for = job.body_for
    if body_for is not None:  # a stored Responses request: its minted id in the body, per replica
        def body_for(ep, _minted=body_for):  # noqa: E306
            return orjson.dumps({**orjson.loads(_minted(ep)), "model": lora})
    return dataclasses.replace(job, data=data, body=orjson.dumps(data), body_for=body_for, adapter=lora,
                               rename=renames(lora, job.adapter))


def versioned(view, job: Job, endpoints: list[Endpoint], delivery: Delivery) -> tuple[Job, list[Endpoint]]:
    """The job as the version it goes to receives it, and the replicas that may answer it;
    the version in ``delivery`` (``view``: cluster.gateway.rollout.view.RolloutView)."""
    session = session_key(job.headers, job.data)
    if (picked := adapter_job(view, job, session, delivery)) is not None:  # the same replicas
        return picked, endpoints
    if job.pin is not None:
        if view.weight(job.model) is not None and endpoints:
            delivery.version = endpoints[0].version
        return job, endpoints
    version = view.pick(job.model, session, endpoints)
    if version is None:
        return job, endpoints
    delivery.version = version
    return job, [e for e in endpoints if e.version == version]


def adapter_job(view, job: Job, session: str | None, delivery: Delivery) -> Job | None:
    """During an adapter rollout of ``job.model``: the job as the picked version receives it,
    its version in ``delivery``; None: the model has no adapter rollout (``view``:
    cluster.gateway.rollout.view.RolloutView)."""
    version = view.adapter_version(job.model, job.adapter, session)
    if version is None:
        return None
    delivery.version = version
    return candidate_job(job) if version == CANDIDATE else job
