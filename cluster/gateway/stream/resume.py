"""Stream resume: a chat or completions stream whose engine dies after its first byte is
continued on another replica, and the client sees one uninterrupted stream.

The engine is asked for the token ids of what it streams (vLLM's ``return_token_ids``;
the client never sees them). A ``StreamLedger`` reads each event on the way: the prompt's
ids (the chat template applied, from the first event), the ids whose text reached the
client, and the ids whose text the engine still held back (an incomplete UTF-8 character).
When the engine's connection breaks, the continuation is a ``/v1/completions`` stream from
prompt + the delivered ids with what is left of ``max_tokens``; its events are rewritten
into the original stream's shape (its id, created time and model; a chat delta for a chat
stream) and its usage into the whole request's. Resuming from ids, not text: text
re-tokenises differently. Under greedy decoding the client's text is the uninterrupted
run's.

Not resumable (``cluster.gateway.stream.resumable.not_resumable`` says why; such a stream ends with the SSE error event):
``n`` > 1, log probabilities, tools, structured outputs, stop strings (vLLM holds back text
that may start one, so the ids run ahead of the text), ``echo``/``suffix``/``best_of``, a
batch of prompts, and chat on a model whose output another reasoning parser reads.

gpt-oss (harmony) streams have ledgers of their own: chat with reasoning, tools and
structured outputs (cluster.gateway.stream.harmony_chat) and the Responses API
(cluster.gateway.stream.harmony_responses); ``ledger_for`` picks a stream's.
"""

from __future__ import annotations

from typing import Any

import orjson

from cluster.gateway.context import CHAT, COMPLETIONS, RESPONSES, Job
from cluster.gateway.errors import OpenAIError
from cluster.gateway.stream.splice import harmony_prompt
from cluster.gateway.stream.token_events import TokenFrame, token_event

# Sampling parameters a continuation keeps (as /v1/completions takes them).
_CARRIED = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
            "repetition_penalty", "logit_bias", "ignore_eos", "skip_special_tokens", "stop_token_ids",
            "include_stop_str_in_output", "spaces_between_special_tokens", "priority", "cache_salt")
def ledger_for(job: Job):
    """The ledger that reads a resumable stream of ``job`` (``job.resume``)."""
    if job.harmony and job.route == CHAT:
        from cluster.gateway.stream.harmony_chat import HarmonyChatLedger

        return HarmonyChatLedger(job.data, max_model_len=job.max_model_len)
    if job.harmony and job.route == RESPONSES:
        from cluster.gateway.stream.harmony_responses import ResponsesLedger

        return ResponsesLedger(job.data, max_model_len=job.max_model_len)
    return StreamLedger(job.route, job.data, max_model_len=job.max_model_len)


TOKENIZE = "/tokenize"


def context_request(model: Any) -> tuple[str, bytes]:
    """vLLM's /tokenize answers with the engine's max_model_len."""
    return TOKENIZE, orjson.dumps({"model": model, "prompt": "."})


def context_length(body: bytes) -> int:
    try:
        n = orjson.loads(body)["max_model_len"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        n = None
    if not isinstance(n, int) or n <= 0:
        raise ValueError("the engine's /tokenize answer has no max_model_len")
    return n


def rendered(ledger, resp, first: bytes) -> None:
    """Hand a harmony ledger the engine's render answer (``resp``, its body ``first``)."""
    resp.release() if resp.status < 400 else resp.close()
    if resp.status >= 400:  # 403: an engine started without --enable-scale-out
        raise OpenAIError(502, f"the engine's {ledger.render[0]} answered {resp.status}", code="engine_render_failed")
    try:
        ledger.rendered(first)
    except ValueError as e:
        raise OpenAIError(502, str(e), code="engine_render_failed") from None


def continuation(ledger) -> bytes:
    """The ledger's continuation body; OpenAIError when there is none (no grammar remainder)."""
    try:
        return ledger.continuation()
    except ValueError as e:
        raise OpenAIError(502, f"the stream cannot be continued: {e}", code="engine_stream_broken") from None


def engine_failure(obj: dict) -> str | None:
    """The message of an engine's server-side error event (no choices, an error with a 5xx
    code, as vLLM writes when generation fails mid-stream); None for any other event."""
    err = obj.get("error")
    if not isinstance(err, dict) or obj.get("choices"):
        return None
    code = err.get("code")
    return str(err.get("message") or "engine error") if isinstance(code, int) and code >= 500 else None


def _max_tokens(route: str, data: dict[str, Any]) -> int | None:
    if route == CHAT:
        return data.get("max_completion_tokens") or data.get("max_tokens")
    return data.get("max_tokens") or 16  # vLLM's (and OpenAI's) completions default


class StreamLedger:
    """What one stream delivered, read from its events; the continuation it resumes from."""

    continuation_route = COMPLETIONS

    def __init__(self, route: str, data: dict[str, Any], *, max_model_len: int | None = None):
        self.route = route
        self._data = data
        self._max_model_len = max_model_len
        self.prompt_ids: list[int] | None = None
        self.delivered: list[int] = []  # ids whose text the client has
        self.held: list[int] = []  # ids whose text the engine has not sent yet
        self.finish_reason: str | None = None
        self.base = 0  # ids delivered before the current continuation (its usage starts there)
        self.continuing = False
        self.resumes = 0
        self._meta: dict[str, Any] | None = None  # id, object, created, model of the stream
        # The engine's own error event (vLLM writes one when its engine core dies under the
        # stream, e.g. a replica stopped by its drain timeout): the stream broke; what came
        # before it still goes to the client, the relay then resumes (cluster.gateway.stream.relay).
        self.failed: str | None = None
        self._frame: TokenFrame | None = None
        self._learn = 8  # tries left

    # --- reading events -------------------------------------------------------------
    def take(self, chunk: bytes) -> bytes:
        """Whole SSE events from the engine (the original stream or a continuation), as the
        client gets them: the ids recorded and removed, a continuation's in the original shape."""
        fast = self._meta is not None and not self.continuing
        if fast and chunk.find(b"\n\n") == len(chunk) - 2:  # one event, the common read
            if self._frame is not None and (read := self._frame.read(chunk)) is not None:
                kept, tid, text = read  # the stream's plain token event (token_events.TokenFrame)
                if text or self.finish_reason:
                    if self.held:
                        self.delivered += self.held
                        self.held = []
                    self.delivered.append(tid)
                else:
                    self.held.append(tid)
                return kept
            kept = self._token_event(chunk, b"\n\n")
            if kept is not None:
                return kept
        out = []
        for event in chunk.split(b"\n\n"):
            if not event or self.failed is not None:
                continue
            if fast:
                kept = self._token_event(event)
                if kept is not None:
                    out.append(kept)
                    continue
            if not event.startswith(b"data: {"):
                out.append(event)  # [DONE]
                continue
            try:
                obj = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                out.append(event)
                continue
            if (failed := engine_failure(obj)) is not None:
                self.failed = failed
                continue
            obj = self._continued(obj) if self.continuing else self._original(obj)
            out.append(b"data: " + orjson.dumps(obj))
        return b"".join(e + b"\n\n" for e in out)

    def _token_event(self, event: bytes, sep: bytes = b"") -> bytes | None:
        """The common event of an original stream, without a JSON parse and re-dump
        (cluster.gateway.stream.token_events); None: the slow path reads it."""
        read = token_event(event, chat=self.route == CHAT, sep=sep)
        if read is None:
            return None
        kept, ids, text, finish = read
        if finish:
            self.finish_reason = finish
        elif sep and text and self._frame is None and self._learn > 0:  # learnt from the stream's own event
            self._learn -= 1
            self._frame = TokenFrame.learn(event, kept, ids, chat=self.route == CHAT)
        if text or self.finish_reason:
            self.delivered += self.held + ids
            self.held = []
        else:
            self.held += ids
        return kept

    def _original(self, obj: dict) -> dict:
        if self._meta is None and "id" in obj:
            self._meta = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        ids = obj.pop("prompt_token_ids", None)
        obj.pop("prompt_text", None)  # vLLM's, with return_token_ids: not asked for by the client
        for choice in obj.get("choices") or ():
            ids = choice.pop("prompt_token_ids", None) or ids
            self._record(choice, text=self._text(choice))
        if ids is not None and self.prompt_ids is None:
            self.prompt_ids = list(ids)
        return obj

    def _continued(self, obj: dict) -> dict:
        meta = self._meta or {}
        out = {**meta}
        if "usage" in obj and not obj.get("choices"):
            out["choices"] = []
            out["usage"] = self.usage(obj["usage"])
            return out
        choices = []
        for choice in obj.get("choices") or ():
            choice.pop("prompt_token_ids", None)
            text = choice.get("text") or ""
            self._record(choice, text=text)
            c: dict[str, Any] = {"index": 0}
            if self.route == CHAT:
                c["delta"] = {"content": text}
            else:
                c["text"] = text
            c["logprobs"] = None
            c["finish_reason"] = choice.get("finish_reason")
            if choice.get("stop_reason") is not None:
                c["stop_reason"] = choice["stop_reason"]
            choices.append(c)
        out["choices"] = choices
        if obj.get("usage"):
            out["usage"] = self.usage(obj["usage"])
        return out

    def _text(self, choice: dict) -> str:
        if self.route == CHAT:
            delta = choice.get("delta") or {}
            return delta.get("content") or ""
        return choice.get("text") or ""

    def _record(self, choice: dict, *, text: str) -> None:
        ids = choice.pop("token_ids", None) or []
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        if text or self.finish_reason:
            self.delivered += self.held + list(ids)
            self.held = []
        else:
            self.held += ids

    # --- resuming -------------------------------------------------------------------
    @property
    def render(self) -> tuple[str, bytes] | None:
        """What to ask the replica that continues first: its context length, when neither the
        request nor the config bounds the output (/v1/completions' own default is 16 tokens)."""
        if _max_tokens(self.route, self._data) is None and self._max_model_len is None:
            return context_request(self._data.get("model"))
        return None

    def rendered(self, body: bytes) -> None:
        self._max_model_len = context_length(body)

    @property
    def resumable(self) -> bool:
        """The stream broke where a continuation can pick it up."""
        return self.prompt_ids is not None and self._meta is not None and self.remaining() != 0 \
            and not harmony_prompt(self.prompt_ids)  # gpt-oss served under another name: not plain text

    def remaining(self) -> int | None:
        """Tokens the request may still generate (None: up to the context, vLLM's bound)."""
        limit = _max_tokens(self.route, self._data)
        if limit is None:
            if self._max_model_len is None or self.prompt_ids is None:
                return None
            limit = self._max_model_len - len(self.prompt_ids)
        return max(0, limit - len(self.delivered))

    def continuation(self) -> bytes:
        """The /v1/completions body that continues the stream from what the client has."""
        assert self.prompt_ids is not None
        body: dict[str, Any] = {"model": self._data.get("model"), "prompt": self.prompt_ids + self.delivered,
                                "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}
        for k in _CARRIED:
            if self._data.get(k) is not None:
                body[k] = self._data[k]
        # None: up to the context, as the chat request had it (/v1/completions' own default is 16)
        body["max_tokens"] = self.remaining()
        if self._data.get("min_tokens"):
            body["min_tokens"] = max(0, self._data["min_tokens"] - len(self.delivered))
        return orjson.dumps(body)

    def resumed(self) -> None:
        """A continuation's stream starts: what it generates comes after what was delivered."""
        self.held = []
        self.base = len(self.delivered)
        self.continuing = True
        self.failed = None
        self.resumes += 1

    def usage(self, cont: dict | None = None) -> dict:
        """The whole request's usage: its prompt, everything delivered (or, from a
        continuation's usage, what it generated after ``base``)."""
        prompt = len(self.prompt_ids or ())
        completion = self.base + cont["completion_tokens"] if cont and "completion_tokens" in cont \
            else len(self.delivered)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def epilogue(self, *, include_usage: bool) -> bytes:
        """The end of a stream whose engine broke after its last token: the usage event
        (when asked for) and [DONE]."""
        end = b""
        if include_usage:
            end += b"data: " + orjson.dumps({**(self._meta or {}), "choices": [], "usage": self.usage()}) + b"\n\n"
        return end + b"data: [DONE]\n\n"
