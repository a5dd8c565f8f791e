"""The resume ledger's byte-level read of token events (cluster.gateway.stream.token_events):
the same bytes and ledger state as its JSON path, on streams recorded from vLLM and on
the shapes it must leave to the JSON path."""

import json
from pathlib import Path

import pytest

from cluster.gateway.stream.resume import StreamLedger
from cluster.gateway.stream.token_events import token_event

RECORDED = json.loads((Path(__file__).parent / "data" / "vllm_streams_with_token_ids.json").read_text())
ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def _events(name):
    return [e.encode() for e in RECORDED[name]["sse"].split("\n\n") if e]


class _JsonOnly(StreamLedger):
    def _token_event(self, event, sep=b""):
        return None


@pytest.mark.parametrize("name", ["chat", "completions"])
def test_recorded_streams_read_as_bytes_equal_the_json_path(name):
    route, request = ROUTES[name], RECORDED[name]["request"]
    fast, slow = StreamLedger(route, request), _JsonOnly(route, request)
    read = 0
    for event in _events(name):
        read += fast._meta is not None and token_event(event, chat=name == "chat") is not None
        assert fast.take(event + b"\n\n") == slow.take(event + b"\n\n")
        assert (fast.delivered, fast.held, fast.finish_reason) == (slow.delivered, slow.held, slow.finish_reason)
    assert read >= len(_events(name)) - 3  # every token event but the first (the prompt's ids)
    assert b"token_ids" not in fast.take(_events(name)[1] + b"\n\n")


HEAD = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'


@pytest.mark.parametrize("event, chat, expected", [
    (HEAD + b'"delta":{"content":"P"},"logprobs":null,"finish_reason":null,"token_ids":[54]}]}', True,
     (HEAD + b'"delta":{"content":"P"},"logprobs":null,"finish_reason":null}]}', [54], True, None)),
    (HEAD + b'"delta":{"content":""},"logprobs":null,"finish_reason":null,"token_ids":[1,2]}]}', True,
     (HEAD + b'"delta":{"content":""},"logprobs":null,"finish_reason":null}]}', [1, 2], False, None)),
    (HEAD + b'"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":[]}]}', True,
     (HEAD + b'"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}', [], False, "stop")),
    # a quote inside the text is escaped: no key is read from it
    (HEAD + b'"delta":{"content":"\\",\\"token_ids\\":[9]}]}"},"logprobs":null,"finish_reason":null,"token_ids":[7]}]}', True,
     (HEAD + b'"delta":{"content":"\\",\\"token_ids\\":[9]}]}"},"logprobs":null,"finish_reason":null}]}', [7], True, None)),
    (HEAD + b'"text":"a","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_token_ids":null,"token_ids":[3]}]}', False,
     (HEAD + b'"text":"a","logprobs":null,"finish_reason":"length","stop_reason":null}]}', [3], True, "length")),
    # left to the JSON path
    (HEAD + b'"text":"a","finish_reason":null,"prompt_token_ids":[1,2],"token_ids":[3]}]}', False, None),
    (HEAD + b'"delta":{"reasoning_content":"x"},"finish_reason":null,"token_ids":[3]}]}', True, None),
    (HEAD + b'"delta":{"content":"a"},"finish_reason":null},{"index":1,"delta":{"content":"b"},"finish_reason":null,"token_ids":[3]}]}', True, None),
    (HEAD + b'"delta":{"content":"a"},"finish_reason":null,"token_ids":[3,x]}]}', True, None),
    (HEAD + b'"delta":{"content":"a"},"logprobs":null,"token_ids":[3]}]}', True, None),
    (HEAD + b'"text":5,"finish_reason":null,"token_ids":[3]}]}', False, None),
    (b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1}}', True, None),
    (b"data: [DONE]", True, None),
])
def test_token_event_shapes(event, chat, expected):
    assert token_event(event, chat=chat) == expected
    # The one event of a read, with its blank line: read the same, the kept event keeps it.
    whole = token_event(event + b"\n\n", chat=chat, sep=b"\n\n")
    assert whole == (None if expected is None else (expected[0] + b"\n\n", *expected[1:]))
    assert token_event(event + b"\n\n", chat=chat) is None  # a blank line it was not told of: not this shape


@pytest.mark.parametrize("ids", [b"[1,,2]", b"[,1]", b"[1,]", b"[1 ,2]", b"[-1]"])
def test_malformed_ids_are_left_to_the_json_path(ids):
    assert token_event(HEAD + b'"delta":{"content":"a"},"finish_reason":null,"token_ids":' + ids + b"}]}", chat=True) is None
