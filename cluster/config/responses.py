"""Per-model settings of the Responses API's state and of reasoning exposure."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cluster.config.base import StrictModel


class ReasoningPolicy(StrictModel):
    expose: Literal["expose", "strip"] = Field(
        "expose",
        description="`expose`: reasoning reaches clients as vLLM returns it (chat `message.reasoning`, responses "
        "`reasoning` items). `strip`: the gateway removes it from answers, streams and retrievals (responses "
        "stream events renumbered); the model still reasons and the usage still counts reasoning tokens.",
    )


class ResponsesStore(StrictModel):
    enabled: bool = Field(
        False,
        description="Keep responses (`store`, the default in the Responses API) so that `previous_response_id`, "
        "`GET /v1/responses/{id}` and cancel work: sets VLLM_ENABLE_RESPONSES_API_STORE=1 on the engines owc starts "
        "and bounds their store. Off: owc leaves the engine's store as it is (vLLM's default: off, and follow-ups "
        "answer 404 naming this setting); either way the gateway mints tenant-bound ids and sends follow-ups and "
        "retrievals to the replica that made the response, so an engine owc did not start (`owc gateway --upstream`) "
        "run with VLLM_ENABLE_RESPONSES_API_STORE=1 serves them from its own store.",
    )
    max_entries: int = Field(
        1000, ge=1,
        description="Stored responses kept per engine replica; the oldest is evicted first (its id then answers 404).",
    )
    ttl_s: float = Field(
        3600.0, gt=0,
        description="Seconds a stored response is kept; older ids answer 404 at the gateway (the id carries its "
        "mint time) and are evicted from the engine's store.",
    )
