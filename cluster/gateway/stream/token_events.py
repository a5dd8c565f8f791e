"""A resumable stream's token events read as bytes: the ledger needs each event's token
ids, whether it carried text and its finish reason, and the client gets the event without
the ids. Parsing and re-dumping the JSON of every token cost the gateway ~10 us per event
(issue 34's profile); these few searches cost a fraction of it.

Only the shape vLLM writes for a single-choice stream is read here: one choice whose last
key is ``token_ids`` (after a null ``prompt_token_ids`` on completions). Anything else
(the first event with the prompt's ids, usage, several choices, reasoning) is left to the
ledger's JSON path, which returns the same bytes for this shape. A key cannot be matched
inside a JSON string: a quote there is escaped.
"""

from __future__ import annotations

_IDS_KEY = b',"token_ids":['
_IDS_AT = len(_IDS_KEY)
_NULL_PROMPT_IDS = b',"prompt_token_ids":null'
_FINISH = b'"finish_reason":'
_FINISH_AT = len(_FINISH)
_CONTENT = b'"content":'
_TEXT = b'"text":'
# By what follows the event's JSON (``sep``): how it must end, and how the kept event ends.
_END = {b"": b"]}]}", b"\n\n": b"]}]}\n\n"}
_CLOSE = {b"": b"}]}", b"\n\n": b"}]}\n\n"}


def token_event(event: bytes, *, chat: bool, sep: bytes = b"") -> tuple[bytes, list[int], bool, str | None] | None:
    """(the event as the client gets it, its token ids, whether it carried text, its finish
    reason), or None when the event is not of the shape read here. ``sep``: b"\\n\\n" when
    ``event`` is a whole SSE event with its blank line (the one event of a read), kept on it.

    Every streamed token passes here: the reads are inlined (no helper call per key) and one
    id, the common event, is read without a split (issue 34: the ledger's per-token cost)."""
    if not event.endswith(_END[sep]):
        return None
    at = event.rfind(_IDS_KEY)
    if at < 0:
        return None
    ids_text = event[at + _IDS_AT:-4 - len(sep)]
    if ids_text.isdigit():
        ids = [int(ids_text)]
    elif not ids_text:
        ids = []
    elif ids_text.replace(b",", b"").isdigit() and b",," not in ids_text and ids_text[0] != 44 and ids_text[-1] != 44:
        ids = [int(i) for i in ids_text.split(b",")]
    else:
        return None
    head = event[:at]
    if head.endswith(_NULL_PROMPT_IDS):
        head = head[:-len(_NULL_PROMPT_IDS)]
    if b'"prompt_t' in head or b'"reasoning' in head or head.count(b'"index":') != 1:
        return None
    # The finish reason: null, or a string (its text has no escapes).
    f = head.find(_FINISH)
    if f < 0:
        return None
    f += _FINISH_AT
    if head.startswith(b"null", f):
        finish = None
    elif head.startswith(b'"', f):
        end = head.find(b'"', f + 1)
        if end < 0:
            return None
        finish = head[f + 1:end].decode()
    else:
        return None
    # Whether it carried text: a non-empty string under the route's key (a chat delta may
    # hold no content; a completion's text must be there).
    t = head.find(_CONTENT if chat else _TEXT)
    if t < 0:
        if not chat:
            return None
        text = False
    else:
        t += len(_CONTENT) if chat else len(_TEXT)
        if head.startswith(b'"', t):
            text = not head.startswith(b'""', t)
        elif head.startswith(b"null", t) or chat:
            text = False
        else:
            return None
    return head + _CLOSE[sep], ids, text, finish


class TokenFrame:
    """A stream's plain token event, learned from one of its own: every such event of a stream
    is ``prefix`` (the same id, created, model and keys up to the text), the text, ``mid`` (the
    same keys up to the ids, finish_reason null) and one id. Reading the next one is a match of
    both ends and one search (issue 34: a third of ``token_event``'s cost); anything else, a text
    with a quote included, is left to ``token_event``. Only the one event of a read, with its
    blank line (``sep`` b"\\n\\n")."""

    __slots__ = ("prefix", "mid", "tail", "_at", "_ids_at")

    def __init__(self, prefix: bytes, mid: bytes, tail: bytes):
        self.prefix, self.mid, self.tail = prefix, mid, tail  # tail: the kept event's bytes after the text
        self._at, self._ids_at = len(prefix), len(mid)

    @classmethod
    def learn(cls, event: bytes, kept: bytes, ids: list[int], *, chat: bool) -> TokenFrame | None:
        """The frame of ``event`` (a whole event with its blank line, read by ``token_event`` as
        ``kept`` and ``ids``, with text and no finish reason), or None: not a plain event, or
        one this frame would not read the same (the frame checks itself on it)."""
        key = b'"delta":{"content":"' if chat else b'"text":"'
        start = event.find(key)
        if start < 0 or len(ids) != 1:
            return None
        start += len(key)
        end = start - 1
        while True:  # the text's end: the first quote after it not escaped (an even run of backslashes before it)
            end = event.find(b'"', end + 1)
            back = end
            while back > start and event[back - 1] == 92:
                back -= 1
            if (end - back) % 2 == 0:
                break
        at = event.rfind(_IDS_KEY)
        if end <= start or at < end:
            return None
        frame = cls(event[:start], event[end:at + _IDS_AT], kept[end:])
        return frame if b'"finish_reason":null' in frame.mid and frame.read(event) == (kept, ids[0], True) else None

    def read(self, event: bytes) -> tuple[bytes, int, bool] | None:
        """(the event as the client gets it, its one token id, whether it carried text), or None."""
        at = self._at
        if not event.startswith(self.prefix) or not event.endswith(b"]}]}\n\n"):
            return None
        m = event.rfind(self.mid)  # after it: the ids alone, no quote
        if m < at or event.find(b'"', at, m) >= 0:
            return None
        ids_text = event[m + self._ids_at:-6]
        if not ids_text.isdigit():
            return None
        return event[:m] + self.tail, int(ids_text), m > at
