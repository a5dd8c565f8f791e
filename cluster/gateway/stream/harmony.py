"""gpt-oss's harmony format as the gateway reads it (``openai_harmony``, installed with vLLM;
the gateway never imports vLLM): an assistant turn's tokens parsed the way vLLM 0.32's
``HarmonyParser`` parses them (one segment per token: its channel, recipient and text delta,
or the message it completed), the bytes of tokens, and the tokens of a message rendered
again (a Responses stream's events carry no token ids).

Used by stream resume (cluster.gateway.stream.harmony_chat, .harmony_responses): the
continuation's tokens become the deltas and events vLLM would have sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ENCODING: list[Any] = []
# Recipients that are vLLM's built-in tools, never function calls (vLLM's harmony_utils).
BUILTIN_TOOLS = ("python", "browser", "container")


def available() -> bool:
    """openai_harmony can be imported (it comes with vLLM, not with owc's own dependencies)."""
    try:
        import openai_harmony  # noqa: F401
    except ImportError:
        return False
    return True


def encoding():
    """The harmony encoding (loaded once, offline: it ships in the wheel)."""
    if not _ENCODING:
        from openai_harmony import HarmonyEncodingName, load_harmony_encoding

        _ENCODING.append(load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS))
    return _ENCODING[0]


def ids(text: str) -> list[int]:
    """The tokens of ``text``, harmony's special tokens included."""
    return encoding().encode(text, allowed_special="all")


def token_bytes(tokens: list[int]) -> list[bytes]:
    """Each token's bytes (a special token's are its name, e.g. ``<|channel|>``)."""
    enc = encoding()
    return [bytes(enc._inner.decode_bytes([t])) for t in tokens]


def is_special(token: int) -> bool:
    return encoding().is_special_token(token)


def normalize(recipient: str | None) -> str | None:
    """vLLM's: a constrain format misparsed into the recipient is cut off."""
    if recipient is None:
        return None
    at = recipient.find("<|constrain|>")
    return recipient if at < 0 else (recipient[:at].rstrip() or None)


def is_function(recipient: str | None, names: frozenset[str] | None = None) -> bool:
    """A recipient that calls a function tool (vLLM's ``is_function_recipient``; ``names``:
    the Responses API's function tools, for bare names)."""
    if not recipient or recipient.startswith("<|") or recipient == "assistant":
        return False
    if recipient.startswith("functions."):
        return len(recipient) > len("functions.")
    if recipient.split(".", 1)[0] in BUILTIN_TOOLS:
        return False
    return names is None or recipient in names


def function_name(recipient: str) -> str:
    return recipient.removeprefix("functions.")


@dataclass
class Segment:
    """What one token did: its message's channel and recipient and the text it added, or the
    message it completed (``done``: channel, recipient, content type, text)."""

    channel: str | None
    recipient: str | None
    delta: str
    done: tuple[str | None, str | None, str | None, str] | None = None


class Reader:
    """The tokens of one assistant turn (what follows ``<|start|>assistant``), parsed."""

    def __init__(self) -> None:
        from openai_harmony import Role, StreamableParser

        self._parser = StreamableParser(encoding(), role=Role.ASSISTANT)
        self._seen = 0  # completed messages already reported
        self._message: list[int] = []  # the current message's tokens (vLLM's error recovery)
        self.reasoning_tokens = 0  # counted as vLLM counts them
        self.flushed = False  # the end of the turn closed a message (it was cut short)

    @classmethod
    def of(cls, tokens: list[int]) -> Reader:
        """A reader that has read ``tokens``."""
        reader = cls()
        reader.feed(tokens)
        return reader

    @property
    def recipient(self) -> str | None:
        return normalize(self._parser.current_recipient)

    @property
    def channel(self) -> str | None:
        return self._parser.current_channel

    @property
    def content(self) -> str:
        """The text of the message being written so far."""
        return self._parser.current_content or ""

    @property
    def in_content(self) -> bool:
        return str(self._parser.state).endswith("CONTENT")

    def feed(self, tokens: list[int]) -> list[Segment]:
        from openai_harmony import HarmonyError

        out = []
        for t in tokens:
            try:
                self._parser.process(t)
            except HarmonyError:
                continue
            channel, recipient = self._parser.current_channel, self.recipient
            delta = self._parser.last_content_delta or ""
            done = self._completed()
            if done is None:
                self._message.append(t)
            else:
                self._message = []
            if (channel == "analysis" or (channel == "commentary" and recipient is not None)) and not is_special(t):
                self.reasoning_tokens += 1
            out.append(Segment(channel, recipient, delta, done))
        return out

    def flush(self) -> list[Segment]:
        """The end of the turn (the engine finished): the message left open, as vLLM closes it."""
        from openai_harmony import HarmonyError

        try:
            self._parser.process_eos()
            done = self._completed()
        except HarmonyError:  # vLLM returns the open message's raw text as final content
            text = encoding().decode(self._message)
            self.flushed = True
            return [Segment("final", None, text), Segment("final", None, "", ("final", None, None, text))]
        self.flushed = done is not None
        return [] if done is None else [Segment(done[0], done[1], "", done)]

    def _completed(self):
        messages = self._parser.messages
        if len(messages) <= self._seen:
            return None
        m = messages[self._seen]
        self._seen += 1
        text = m.content[0].text if m.content else ""
        return m.channel, normalize(m.recipient), m.content_type, text
