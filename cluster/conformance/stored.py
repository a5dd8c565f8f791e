"""Stored responses in `owc conformance`: calls that need the engine's Responses store
(vLLM's VLLM_ENABLE_RESPONSES_API_STORE=1) and, through owc, the replica that stored the
response: a follow-up (`previous_response_id`, streamed and not), retrieval
(`GET /v1/responses/{id}`, cancel, an unknown id) and a tool-output turn (a forced function
call, then its `function_call_output` with the call's response as `previous_response_id`).

Each step is observed on its own (cluster.conformance.calls.observe), so a side whose
follow-up is refused shows which step and with what status; ids differ by design and are
compared only as "the same id came back"."""

from __future__ import annotations

from typing import Any

from cluster.conformance import calls
from cluster.conformance.calls import Observation, observe

FOLLOW_UP = "And in Rome?"
TOOL_OUTPUT = "sunny, 21 C"
UNKNOWN_ID = "resp_" + "0" * 32  # vLLM's own id shape; no store holds it


def _create(client: Any, args: dict[str, Any], made: list[Any]) -> Observation:
    """The first response of a conversation (kept in ``made`` for the next step)."""

    def call() -> Observation:
        r = client.responses.create(**args)
        made.append(r)
        return calls.response(r)

    return observe(call)


def follow_up(client: Any, args: dict[str, Any]) -> Observation:
    made: list[Any] = []
    out = {"first": _create(client, args, made)}
    prev = made[0].id if made else UNKNOWN_ID
    more = {**args, "input": FOLLOW_UP, "previous_response_id": prev}
    out["follow_up"] = observe(lambda: calls.responses(client, **more))
    out["follow_up_stream"] = observe(lambda: calls.responses_stream(client, **more))
    return out


def retrieval(client: Any, args: dict[str, Any]) -> Observation:
    made: list[Any] = []
    out = {"created": _create(client, args, made)}
    rid = made[0].id if made else UNKNOWN_ID

    def retrieve() -> Observation:
        r = client.responses.retrieve(rid)
        return {**calls.response(r), "same_id": r.id == rid, "same_text": bool(made) and r.output_text == made[0].output_text}

    out["retrieved"] = observe(retrieve)
    out["cancel"] = observe(lambda: {"state": client.responses.cancel(rid).status})  # a finished one: vLLM's 400
    out["unknown"] = observe(lambda: calls.response(client.responses.retrieve(UNKNOWN_ID)))
    return out


def tool_output(client: Any, args: dict[str, Any], tools: list[dict[str, Any]], name: str) -> Observation:
    made: list[Any] = []
    out = {"call": _create(client, {**args, "tools": tools, "tool_choice": {"type": "function", "name": name}}, made)}
    fcs = [i for i in made[0].output if i.type == "function_call"] if made else []
    if not fcs:
        return out  # no call to answer: the observation says so
    turn = {**args, "tools": tools, "previous_response_id": made[0].id,
            "input": [{"type": "function_call_output", "call_id": fcs[0].call_id, "output": TOOL_OUTPUT}]}
    out["answer"] = observe(lambda: calls.responses(client, **turn))
    return out
