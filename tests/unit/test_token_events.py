"""The resume ledger's byte-level read of token events (cluster.gateway.stream.token_events):
the same bytes and ledger state as its JSON path, on streams recorded from vLLM and on
the shapes it must leave to the JSON path."""

import json
from pathlib import Path

import pytest

from cluster.gateway.stream.resume import StreamLedger
from cluster.gateway.stream.token_events import TokenFrame, token_event

RECORDED = json.loads((Path(__file__).parent / "data" / "vllm_streams_with_token_ids.json").read_text())
ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
HEAD = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'


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
    assert fast._frame is not None  # the stream's plain events were read by its learnt frame


@pytest.mark.parametrize("name", ["chat", "completions"])
def test_the_learnt_frame_reads_each_event_as_token_event_does_or_not_at_all(name):
    chat = name == "chat"
    events = [e + b"\n\n" for e in _events(name)]
    frames = [TokenFrame.learn(e, r[0], r[1], chat=chat) for e in events
              if (r := token_event(e, chat=chat, sep=b"\n\n")) and r[2] and r[3] is None]
    frame = next(f for f in frames if f is not None)
    read = 0
    for event in events:
        got, want = frame.read(event), token_event(event, chat=chat, sep=b"\n\n")
        if got is not None:
            read += 1
            assert want is not None and got == (want[0], *want[1], want[2]) and want[3] is None
    assert read >= len(events) - 5  # all but the first, the last with its finish reason, usage, [DONE]


P = HEAD + b'"delta":{"content":"'
MID = b'"},"logprobs":null,"finish_reason":null,"token_ids":['


@pytest.mark.parametrize("event, expected", [
    (P + b'hi' + MID + b'12]}]}\n\n', (P + b'hi"},"logprobs":null,"finish_reason":null}]}\n\n', 12, True)),
    (P + MID + b'7]}]}\n\n', (P + b'"},"logprobs":null,"finish_reason":null}]}\n\n', 7, False)),  # no text yet
    (P + b'a\\n' + MID + b'7]}]}\n\n', (P + b'a\\n"},"logprobs":null,"finish_reason":null}]}\n\n', 7, True)),
    # left to token_event: a quote in the text, several ids, a finish reason, another stream's id, no blank line
    (P + b'\\"' + MID + b'7]}]}\n\n', None),
    (P + b'say \\"' + MID + b'9]}' + b'"' + MID + b'7]}]}\n\n', None),
    (P + b'a' + MID + b'7,8]}]}\n\n', None),
    (P + b'a"},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":[7]}]}\n\n', None),
    (HEAD.replace(b'"c"', b'"d"') + b'"delta":{"content":"a' + MID + b'7]}]}\n\n', None),
    (P + b'a' + MID + b'7]}]}', None),
    (P + b'a' + MID + b']}]}\n\n', None),
])
def test_frame_reads(event, expected):
    learnt = P + b'x' + MID + b'1]}]}\n\n'
    frame = TokenFrame.learn(learnt, token_event(learnt, chat=True, sep=b"\n\n")[0], [1], chat=True)
    assert frame.read(event) == expected
    if expected is not None:  # what token_event reads from it
        assert token_event(event, chat=True, sep=b"\n\n") == (expected[0], [expected[1]], expected[2], None)


@pytest.mark.parametrize("event, learnt", [
    (P + b'a\\nb\\\\' + MID + b'1]}]}\n\n', True),  # escapes, an escaped backslash last: its end is read
    (P + b'a\\"b' + MID + b'1]}]}\n\n', False),  # a quote in the text: the frame would not read it
    (P + b'a' + MID + b'1,2]}]}\n\n', False),  # several ids
    (HEAD + b'"delta":{"role":"assistant","content":"a' + MID + b'1]}]}\n\n', False),  # not the frame's keys
])
def test_a_frame_is_learnt_from_plain_events_only(event, learnt):
    read = token_event(event, chat=True, sep=b"\n\n")
    assert read is not None and read[2]
    frame = TokenFrame.learn(event, read[0], read[1], chat=True)
    assert (frame is not None) == learnt
    if learnt:
        assert frame.read(event) == (read[0], read[1][0], True)
        assert frame.read(P + b'z' + MID + b'5]}]}\n\n') == (P + b'z"},"logprobs":null,"finish_reason":null}]}\n\n', 5, True)



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
