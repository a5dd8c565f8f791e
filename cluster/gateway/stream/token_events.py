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
_NULL_PROMPT_IDS = b',"prompt_token_ids":null'
_FINISH = b'"finish_reason":'
_ABSENT = object()


def token_event(event: bytes, *, chat: bool) -> tuple[bytes, list[int], bool, str | None] | None:
    """(the event as the client gets it, its token ids, whether it carried text, its finish
    reason), or None when the event is not of the shape read here."""
    if not event.endswith(b"]}]}"):
        return None
    at = event.rfind(_IDS_KEY)
    if at < 0:
        return None
    ids_text = event[at + len(_IDS_KEY):-4]
    if ids_text.replace(b",", b"").isdigit():
        ids = [int(i) for i in ids_text.split(b",")]
    elif not ids_text:
        ids = []
    else:
        return None
    head = event[:at]
    if head.endswith(_NULL_PROMPT_IDS):
        head = head[:-len(_NULL_PROMPT_IDS)]
    if b'"prompt_t' in head or head.count(b'"index":') != 1 or b'"reasoning' in head:
        return None
    finish = _value(head, _FINISH)
    text = _value(head, b'"content":' if chat else b'"text":')
    if finish is _ABSENT or (text is _ABSENT and not chat):  # a chat delta may hold no content
        return None
    return head + b"}]}", ids, bool(text) and text is not _ABSENT, finish


def _value(event: bytes, key: bytes):
    """``key``'s value as far as the ledger needs it: None for null, "" for an empty
    string, True for another string (the finish reason: its text, which has no escapes);
    _ABSENT when the key is missing or holds anything else."""
    at = event.find(key)
    if at < 0:
        return _ABSENT
    at += len(key)
    if event.startswith(b"null", at):
        return None
    if not event.startswith(b'"', at):
        return _ABSENT
    if event.startswith(b'""', at):
        return ""
    if key == _FINISH:
        end = event.find(b'"', at + 1)
        return event[at + 1:end].decode() if end > 0 else _ABSENT
    return True
