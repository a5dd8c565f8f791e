"""Anthropic's Messages API in `owc conformance`: the same calls with the official `anthropic`
SDK (as coding agents send them: the key as `x-api-key`) against the bare engine and through
the gateway, reduced to what must agree — status, content block types, greedy text, thinking,
tool calls with their input, stop reason, usage; streamed, the event-type sequence too. Ids
and thinking signatures differ per call by design and are left out.

The SDK is built from the side's OpenAI client (its base URL, key and the engine credential
header), so a case takes the same arguments as the OpenAI ones."""

from __future__ import annotations

from typing import Any

Observation = dict[str, Any]
NO_SDK = {"status": "needs the anthropic package: pip install anthropic"}


def sdk(client: Any) -> Any:
    """An ``anthropic.Anthropic`` for the server ``client`` (an ``openai.OpenAI``) talks to."""
    import anthropic

    base = str(client.base_url).rstrip("/").removesuffix("/v1")
    headers = dict(getattr(client, "_custom_headers", {}) or {})  # the engine credential, on the bare engine
    return anthropic.Anthropic(base_url=base, api_key=client.api_key, default_headers=headers, max_retries=0,
                               timeout=client.timeout)


def observe(client: Any, call) -> Observation:
    """The call's observation with the side's SDK, or its HTTP status and the error's shape
    (its type names are not compared: owc answers Anthropic's canonical ones, vLLM its own)."""
    try:
        import anthropic
    except ImportError:
        return dict(NO_SDK)
    try:
        return {"status": 200, **call(sdk(client))}
    except anthropic.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {"status": e.status_code, "type": body.get("type"), "error": sorted(body.get("error") or ())}
    except anthropic.APIError as e:  # an error event in a stream
        return {"status": "stream error", "error": type(e).__name__}
    except anthropic.APIConnectionError as e:
        return {"status": "no connection", "error": str(e)[:80]}


def _message(m: Any) -> Observation:
    blocks = m.content or []
    return {"blocks": [b.type for b in blocks], "text": "".join(b.text for b in blocks if b.type == "text"),
            "thinking": "".join(b.thinking for b in blocks if b.type == "thinking") or None,
            "tool_calls": [[b.name, b.input] for b in blocks if b.type == "tool_use"] or None,
            "stop": m.stop_reason, "usage": {"in": m.usage.input_tokens, "out": m.usage.output_tokens}}


def create(**kwargs: Any):
    """A non-streamed message (greedy: temperature 0 through extra_body, as the SDK has no argument)."""
    return lambda c: _message(c.messages.create(extra_body={"temperature": 0}, **kwargs))


def stream(**kwargs: Any):
    """A streamed message: its event types in order (deltas collapsed) and the final message."""
    def call(c: Any) -> Observation:
        events: list[str] = []
        with c.messages.stream(extra_body={"temperature": 0}, **kwargs) as s:
            for e in s:
                if e.type in ("message_start", "content_block_start", "content_block_delta", "content_block_stop",
                              "message_delta", "message_stop") and (not events or events[-1] != e.type):
                    events.append(e.type)
            return {"events": events, **_message(s.get_final_message())}
    return call


def count_tokens(**kwargs: Any):
    return lambda c: {"input_tokens": c.messages.count_tokens(**kwargs).input_tokens}
