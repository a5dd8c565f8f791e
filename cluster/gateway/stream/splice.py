"""Where a harmony stream (gpt-oss) continues, and how its continuation's tokens join what
the client has: shared by chat (cluster.gateway.stream.harmony_chat) and Responses
(cluster.gateway.stream.harmony_responses) stream resume.

The continuation generates after the prompt's tokens and the output's tokens so far. Where
the original was constrained by a grammar, the engine's own sampling parameters (vLLM's
render endpoint, asked of the replica that continues: `/v1/chat/completions/render`,
`/v1/responses/render`) carry it: the continuation gets what is left of it
(cluster.gateway.stream.grammar) and goes to vLLM's token-in endpoint
(`/inference/v1/generate`; both need the engine started with `--enable-scale-out`). Inside
JSON the continuation starts at the JSON's beginning and the text the client already has
is checked and dropped (``Splice.segments``); a continuation that writes something else
ends the stream (``Diverged``)."""

from __future__ import annotations

from typing import Any

import orjson

from cluster.gateway.stream import harmony
from cluster.gateway.stream.grammar import Unsupported, remainder
from cluster.gateway.upstream.engine_client import EngineError

GENERATE = "/inference/v1/generate"
START_ASSISTANT = (200006, 173781)  # <|start|>assistant: a harmony prompt's last tokens


class Diverged(EngineError):
    """The continuation did not write again what the client already has."""


def harmony_prompt(prompt: list[int] | None) -> bool:
    return bool(prompt) and tuple(prompt[-2:]) == START_ASSISTANT


def read_rendered(body: bytes) -> dict[str, Any] | None:
    """vLLM's render answer (prompt ``token_ids`` and ``sampling_params``), or None."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("token_ids"), list) \
            or not isinstance(data.get("sampling_params"), dict):
        return None
    return data


def structural_tag(rendered: dict[str, Any] | None) -> str | None:
    so = (rendered or {}).get("sampling_params", {}).get("structured_outputs") or {}
    if any(so.get(k) not in (None, False) for k in ("json", "regex", "choice", "grammar", "json_object")):
        raise Unsupported("a constraint that is not a structural tag")
    return so.get("structural_tag")


def generate_body(rendered: dict[str, Any], tokens: list[int], *, max_tokens: int | None, tag: str | None) -> bytes:
    """The token-in request that continues after ``tokens`` (prompt and output so far)."""
    params = dict(rendered["sampling_params"])
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if params.get("min_tokens"):
        params["min_tokens"] = max(0, params["min_tokens"] - (len(tokens) - len(rendered["token_ids"])))
    so = params.get("structured_outputs")
    params["structured_outputs"] = {**so, "structural_tag": tag} if so and tag else None
    body = {k: rendered[k] for k in ("model", "reasoning_ended", "reasoning_parser_kwargs", "cache_salt", "priority")
            if rendered.get(k) is not None}
    body.update(token_ids=tokens, sampling_params=params, stream=True, stream_options={"include_usage": True})
    return orjson.dumps(body)


def continuation_chunk(obj: dict[str, Any]) -> tuple[list[int], str | None, Any, dict | None]:
    """(token ids, finish reason, stop reason, usage) of one event of a continuation
    (`/v1/completions` or `/inference/v1/generate`: both carry ``choices[].token_ids``)."""
    tokens: list[int] = []
    finish = stop = None
    for choice in obj.get("choices") or ():
        tokens += choice.get("token_ids") or []
        finish = choice.get("finish_reason") or finish
        stop = choice.get("stop_reason") if choice.get("stop_reason") is not None else stop
    return tokens, finish, stop, obj.get("usage") if isinstance(obj.get("usage"), dict) else None


class Splice:
    """The continuation of ``output`` (the turn's tokens so far): where it starts (``cut``,
    at most ``restart``: where the open message began, when its header must be written
    again), the grammar it keeps (``tag``), and its tokens read as harmony segments."""

    def __init__(self, output: list[int], rendered: dict[str, Any] | None, *, restart: int | None = None):
        self.cut, self.tag = len(output) if restart is None else restart, None
        tag = structural_tag(rendered)
        if tag:
            self.tag, self.cut = remainder(tag, harmony.token_bytes(output[:self.cut]))
        self.reader = harmony.Reader()
        self.before = self.reader.feed(output[:self.cut])  # what the client has, as segments
        self._skip = ""  # text the client has that the continuation writes again
        self._recipient: str | None = None  # ... in a message to this recipient
        if self.cut < len(output):
            whole = harmony.Reader.of(output)
            self._skip, self._recipient = whole.content, whole.recipient

    @property
    def skipping(self) -> bool:
        """The continuation has not yet written again all the client has."""
        return bool(self._skip)

    def segments(self, tokens: list[int], *, finished: bool) -> list[harmony.Segment]:
        """The continuation's ``tokens`` as segments, the text the client has left out."""
        out = self.reader.feed(tokens)
        if finished:
            out += self.reader.flush()
        if not self._skip:
            return out
        for seg in out:
            if seg.done is not None and self._skip:
                raise Diverged("the continuation ended a message the client has more of")
            if not seg.delta or not self._skip:
                continue
            if seg.recipient != self._recipient:
                raise Diverged("the continuation wrote to another recipient than the client has")
            n = min(len(seg.delta), len(self._skip))
            if seg.delta[:n] != self._skip[:n]:
                raise Diverged("the continuation wrote other text than the client has")
            seg.delta, self._skip = seg.delta[n:], self._skip[n:]
        return out
