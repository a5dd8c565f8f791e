"""cluster.batch.lines, table-driven: batch input lines, create-batch bodies, the file/endpoint
match and upload expiry; every refusal a 400 that names what is wrong (and the line)."""

from __future__ import annotations

import orjson
import pytest

from cluster.batch.errors import BatchApiError
from cluster.batch.lines import check_create, check_file_for_batch, check_input, expiry_seconds

CHAT = "/v1/chat/completions"


def line(cid="a", url=CHAT, method="POST", body=None, **extra) -> bytes:
    return orjson.dumps({"custom_id": cid, "method": method, "url": url, "body": body or {"model": "m"}, **extra})


GOOD = [
    ("one line", [line()], 1, {CHAT: 1}),
    ("trailing newline and blank lines skipped", [line() + b"\n", b"\n", b"  \n", line("b")], 2, {CHAT: 1}),
    ("mixed urls are summarised", [line("a"), line("b", "/v1/completions"), line("c", "/v1/responses")], 3,
     {CHAT: 1, "/v1/completions": 2, "/v1/responses": 3}),
]


@pytest.mark.parametrize("name,lines,count,urls", GOOD, ids=[g[0] for g in GOOD])
def test_valid_input(name, lines, count, urls):
    s = check_input(lines, max_lines=10)
    assert (s.lines, dict(s.urls)) == (count, urls)


@pytest.mark.parametrize("bodies, model", [
    ([{"model": "m"}], "m"),
    ([{"model": "m"}, {"model": "m"}], "m"),
    ([{"model": "m"}, {"model": "n"}], None),  # several: OpenAI's Batch `model` names one
    ([{"model": "m"}, {"prompt": "x"}], None),  # a line without one (the engine's 400 at run time)
    ([{"model": 3}], None),
    ([{"model": ["m"]}, {"model": {"a": 1}}], None),  # unhashable: still no 500
])
def test_the_model_every_line_names(bodies, model):
    lines = [line(f"c{i}", body=b) for i, b in enumerate(bodies)]
    assert check_input(lines, max_lines=10).model == model


BAD = [
    ("not json", [line(), b"{nope"], "line 2: not valid JSON"),
    ("not an object", [b"[1, 2]"], "line 1: not a JSON object"),
    ("missing fields", [b'{"custom_id": "a"}'], "line 1: missing body, method, url"),
    ("unknown field", [line(extra=1)], "line 1: unknown field(s) extra"),
    ("empty custom_id", [line("")], "line 1: custom_id must be"),
    ("custom_id not a string", [orjson.dumps({"custom_id": 3, "method": "POST", "url": CHAT, "body": {}})],
     "line 1: custom_id must be"),
    ("GET", [line(method="GET")], 'line 1: method must be "POST"'),
    ("unknown url", [line(url="/v1/embeddings")], "line 1: url must be one of"),
    ("body not an object", [orjson.dumps({"custom_id": "a", "method": "POST", "url": CHAT, "body": "x"})],
     "line 1: body must be a JSON object"),
    ("repeated custom_id", [line("a"), line("b"), line("a")], "line 3: custom_id 'a' repeats line 1"),
    ("too many lines", [line(str(i)) for i in range(4)], "more than 3 request lines"),
    ("no lines", [b"\n", b" "], "no request lines"),
    ("not utf-8", [b"\xff\xfe"], "line 1: not valid JSON"),
    ("a byte order mark", [b"\xef\xbb\xbf" + line(), line("b")], "line 1: starts with a UTF-8 byte order mark"),
]


@pytest.mark.parametrize("name,lines,message", BAD, ids=[b[0] for b in BAD])
def test_invalid_input_is_a_400_naming_the_line(name, lines, message):
    with pytest.raises(BatchApiError) as e:
        check_input(lines, max_lines=3)
    assert e.value.status == 400 and message in e.value.message, e.value.message
    assert e.value.param == "file"


OK_BODY = {"input_file_id": "file-x", "endpoint": CHAT, "completion_window": "24h"}
CREATE = [
    ("no object", [1], 400, None),
    ("unknown parameter", {**OK_BODY, "metdata": {"job": "nightly"}}, 400, "metdata"),
    ("model is not a batch parameter", {**OK_BODY, "model": "m1"}, 400, "model"),
    ("missing input_file_id", {"endpoint": CHAT, "completion_window": "24h"}, 400, "input_file_id"),
    ("missing endpoint", {"input_file_id": "f", "completion_window": "24h"}, 400, "endpoint"),
    ("endpoint not a string", {**OK_BODY, "endpoint": 3}, 400, "endpoint"),
    ("embeddings not run by owc", {**OK_BODY, "endpoint": "/v1/embeddings"}, 400, "endpoint"),
    ("48h", {**OK_BODY, "completion_window": "48h"}, 400, "completion_window"),
    ("metadata too many", {**OK_BODY, "metadata": {str(i): "v" for i in range(17)}}, 400, "metadata"),
    ("metadata value not a string", {**OK_BODY, "metadata": {"k": 1}}, 400, "metadata"),
    ("metadata key too long", {**OK_BODY, "metadata": {"k" * 65: "v"}}, 400, "metadata"),
    ("output expiry not an object", {**OK_BODY, "output_expires_after": 3600}, 400, "output_expires_after"),
    ("output expiry anchor", {**OK_BODY, "output_expires_after": {"anchor": "last_active_at", "seconds": 3600}},
     400, "output_expires_after.anchor"),
    ("output expiry no seconds", {**OK_BODY, "output_expires_after": {"anchor": "created_at"}},
     400, "output_expires_after.seconds"),
    ("output expiry no anchor", {**OK_BODY, "output_expires_after": {"seconds": 3600}},
     400, "output_expires_after.anchor"),
    ("output expiry under an hour", {**OK_BODY, "output_expires_after": {"anchor": "created_at", "seconds": 3599}},
     400, "output_expires_after.seconds"),
    ("output expiry over 30 days", {**OK_BODY, "output_expires_after": {"anchor": "created_at", "seconds": 2592001}},
     400, "output_expires_after.seconds"),
    ("output expiry seconds a string", {**OK_BODY, "output_expires_after": {"anchor": "created_at", "seconds": "3600"}},
     400, "output_expires_after.seconds"),
    ("output expiry seconds a bool", {**OK_BODY, "output_expires_after": {"anchor": "created_at", "seconds": True}},
     400, "output_expires_after.seconds"),
    ("output expiry seconds a float", {**OK_BODY, "output_expires_after": {"anchor": "created_at", "seconds": 3600.5}},
     400, "output_expires_after.seconds"),
    ("output expiry unknown key", {**OK_BODY, "output_expires_after": {"anchor": "created_at", "seconds": 3600,
                                                                        "x": 1}}, 400, "output_expires_after.x"),
]


@pytest.mark.parametrize("name,body,status,param", CREATE, ids=[c[0] for c in CREATE])
def test_create_batch_bodies_refused(name, body, status, param):
    with pytest.raises(BatchApiError) as e:
        check_create(body)
    assert (e.value.status, e.value.param) == (status, param)


def test_create_batch_body_accepted():
    r = check_create({**OK_BODY, "metadata": {"job": "nightly"}, "output_expires_after": None})
    assert (r.input_file_id, r.endpoint, r.completion_window, r.metadata) == ("file-x", CHAT, "24h", {"job": "nightly"})
    assert r.output_expires_s is None
    for seconds in (3600, 2592000):
        body = {**OK_BODY, "output_expires_after": {"anchor": "created_at", "seconds": seconds}}
        assert check_create(body).output_expires_s == seconds


def test_every_line_must_name_the_batch_endpoint():
    s = check_input([line("a"), line("b", "/v1/completions")], max_lines=5)
    with pytest.raises(BatchApiError) as e:
        check_file_for_batch(s, CHAT)
    assert "line 2: url '/v1/completions' differs from the batch's endpoint" in e.value.message
    check_file_for_batch(check_input([line("a")], max_lines=5), CHAT)
    with pytest.raises(BatchApiError):
        check_file_for_batch(None, CHAT)  # not a batch input file


@pytest.mark.parametrize("anchor,seconds,out", [
    (None, None, None), ("created_at", 3600, 3600), ("created_at", "2592000", 2592000),
    ("created_at", 3599, 400), ("created_at", 2592001, 400), ("last_active_at", 3600, 400), ("created_at", "x", 400),
])
def test_upload_expiry(anchor, seconds, out):
    if out == 400:
        with pytest.raises(BatchApiError):
            expiry_seconds(anchor, seconds)
    else:
        assert expiry_seconds(anchor, seconds) == out
