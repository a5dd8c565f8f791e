"""What crosses the layers of the request path, typed.

admission builds a ``Job`` (who asked for what, as the engine will receive it) and hands it
to the forwarder; the forwarder alone writes the ``Delivery`` (which replica, retries,
status, timings, tokens); accounting reads both once the request is over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.discovery.endpoints import Endpoint


class ClientGone(Exception):
    """The client disconnected before an answer started."""


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
ALL = (CHAT, COMPLETIONS, RESPONSES)  # the generation routes of the OpenAI front-end
# Anthropic's Messages API (cluster.gateway.anthropic), over the same admission and forwarding.
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"

CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before the answer
Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


@dataclass(frozen=True)
class Job:
    """One admitted request."""

    request_id: str
    route: str  # the engine's path, e.g. /v1/chat/completions or /v1/messages
    model: str  # the served model it resolved to
    tenant: str
    data: dict[str, Any]  # the parsed body, as sent to the engine
    body: bytes  # its bytes
    stream: bool
    headers: dict[bytes, bytes]  # the client's request headers (ASGI form)
    adapter: str | None = None  # the LoRA adapter requested, if any
    # The gateway asked the engine for a usage event the client did not ask for: drop it.
    strip_usage: bool = False
    span: Any = None  # the request's tracing span, when tracing is on
    # The reasoning policy is strip: no reasoning reaches the client (cluster.gateway.stream.reasoning).
    strip_reasoning: bool = False
    # Responses affinity (cluster.gateway.responses.conversations): the replica that must answer (it holds
    # previous_response_id), and the engine body per chosen replica (it carries the minted id).
    pin: str | None = None
    body_for: Callable[[Endpoint], bytes] | None = None
    # A stream that another replica continues if its engine dies (cluster.gateway.stream.resume):
    # the engine streams its token ids, which the client never sees.
    resume: bool = False
    harmony: bool = False  # gpt-oss: its chat and Responses streams are read as harmony (stream.harmony_chat)
    max_model_len: int | None = None  # the model's context, when the config sets it
    # A batch line (cluster.batch.runner.LineCall): the lowest priority class, idle engine slots only.
    batch: Any = None
    # An adapter candidate's request (cluster.gateway.rollout.version): (engine's bytes, client's) pairs the
    # relay replaces in the answer, so that it names the adapter the client asked for, not the candidate's LoRA.
    rename: tuple[tuple[bytes, bytes], ...] = ()


@dataclass
class Delivery:
    """What the forwarder did with a job, for metrics, logs and traces."""

    status: int = 0
    endpoint: Endpoint | None = None
    started: float = field(default_factory=time.perf_counter)
    retry_reasons: list[str] = field(default_factory=list)  # one per re-send to another replica
    decisions: list[float] = field(default_factory=list)  # seconds per routing decision
    plugin_timings: list[tuple[str, float]] = field(default_factory=list)  # (plugin, seconds), every decision
    ttft_s: float | None = None
    itl: list[float] = field(default_factory=list)  # seconds between token events
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # reasoning tokens included, as OpenAI counts them
    reasoning_tokens: int | None = None
    resumes: int = 0  # times a broken stream was continued on another replica
    version: str | None = None  # during a rollout: the version that answers (stable, candidate)

    @property
    def retries(self) -> int:
        return len(self.retry_reasons)

    def usage(self, usage: object) -> None:
        """The engine's usage report: chat and completions name the counts prompt/completion
        tokens, Responses input/output tokens; reasoning tokens are in their details."""
        if isinstance(usage, dict):
            self.prompt_tokens = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
            self.completion_tokens = _count(usage.get("completion_tokens", usage.get("output_tokens")))
            details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
            self.reasoning_tokens = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def first_of(a: asyncio.Future, b: asyncio.Future) -> None:
    """Until ``a`` or ``b`` is done: asyncio.wait's FIRST_COMPLETED without its per-call
    set, checks and extra task (on every request's path)."""
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_result(None)

    a.add_done_callback(wake)
    b.add_done_callback(wake)
    try:
        await waiter
    finally:
        a.remove_done_callback(wake)
        b.remove_done_callback(wake)
