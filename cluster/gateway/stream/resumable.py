"""Which streams can be resumed (cluster.gateway.stream.resume): a pure reading of the request,
at admission. A continuation cannot reproduce ``n`` > 1, log probabilities, tools, structured
outputs, stop strings, echo/suffix/best_of or a batch of prompts; gpt-oss's harmony streams
have their own list (cluster.gateway.stream.harmony_chat, harmony_responses)."""

from __future__ import annotations

from typing import Any

from cluster.gateway.context import CHAT, COMPLETIONS, RESPONSES

# Parameters whose output a continuation cannot reproduce.
_BLOCKING = {
    "tools": "tools", "functions": "tools", "response_format": "structured outputs",
    "structured_outputs": "structured outputs", "logprobs": "logprobs", "top_logprobs": "logprobs",
    "stop": "stop strings", "echo": "echo", "suffix": "suffix", "return_tokens_as_token_ids": "token-id text",
}


# Responses parameters whose stream a harmony continuation cannot reproduce.
_RESPONSES_BLOCKING = {
    "previous_response_id": "previous_response_id", "conversation": "conversation", "background": "background",
    "stop": "stop strings", "top_logprobs": "logprobs", "enable_response_messages": "response messages",
}


def not_resumable(route: str, data: dict[str, Any], *, parsed_chat: bool, harmony: bool = False) -> str | None:
    """Why a stream of this request cannot be resumed; None when it can. ``parsed_chat``:
    the model's chat output goes through a parser (reasoning, harmony); ``harmony``: the
    model is gpt-oss."""
    if harmony and route in (CHAT, RESPONSES):
        return _harmony_blocking(route, data)
    if route not in (CHAT, COMPLETIONS):
        return "route"
    if route == CHAT and parsed_chat:
        return "parsed output"
    if (data.get("n") or 1) > 1 or (data.get("best_of") or 1) > 1:
        return "n > 1"
    for name, why in _BLOCKING.items():
        if data.get(name) not in (None, False, [], ""):
            return why
    if route == COMPLETIONS:
        p = data.get("prompt")
        if not (isinstance(p, str) or (isinstance(p, list) and p and all(isinstance(t, int) for t in p))):
            return "batch of prompts"
    return None


def _harmony_blocking(route: str, data: dict[str, Any]) -> str | None:
    if route == RESPONSES:
        for name, why in _RESPONSES_BLOCKING.items():
            if data.get(name) not in (None, False, [], ""):
                return why
        if any(not isinstance(t, dict) or t.get("type") != "function" for t in data.get("tools") or ()):
            return "built-in tools"
        return None
    if (data.get("n") or 1) > 1:
        return "n > 1"
    for name in ("logprobs", "top_logprobs", "stop", "functions"):
        if data.get(name) not in (None, False, [], ""):
            return _BLOCKING[name]
    if data.get("include_reasoning") is False:
        return "hidden reasoning"  # vLLM then sends no token ids
    return None
