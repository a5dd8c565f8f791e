"""The Files and Batches routes through a gateway process (fake engine behind it), driven by the
official `openai` SDK: upload, list, retrieve, content, delete; create a batch, retrieve, list
with pagination, cancel; malformed files and lines are 400 (never a 5xx); another tenant's ids
are 404 and its lists hold only its own. The runner is off here (batch.run: false), so a
created batch stays `validating` (shown as it is) and a cancel ends it `cancelled` at once; batches
that run are test_batch_execution's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import jsonschema
import openai
import orjson
import pytest
import yaml

from cluster.gateway.auth.keys import hash_key
from tests.conftest import fake_engine_argv, gateway_argv, server

KEYS = {"sk-alpha": "alpha", "sk-beta": "beta"}
CHAT = "/v1/chat/completions"
MAX_FILE, MAX_LINES = 64 * 1024, 50


def jsonl(n: int, url: str = CHAT, prefix: str = "r") -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"{prefix}{i}", "method": "POST", "url": url,
                                  "body": {"model": "m1", "messages": [{"role": "user", "content": f"q{i}"}]}}) + b"\n"
                    for i in range(n))


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    d = tmp_path_factory.mktemp("batchapi")
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key(k): t for k, t in KEYS.items()}))
    cfg = {"models": {"m1": {"source": "external"}},
           "gateway": {"api_keys_env": None, "admin_keys_env": None, "api_keys_file": str(d / "keys.yaml"),
                       "access_log": {"enabled": False}},
           "batch": {"store_dir": str(d / "store"), "max_file_bytes": MAX_FILE, "max_lines": MAX_LINES,
                     "max_tenant_bytes": 256 * 1024, "run": False}}
    (d / "owc.yaml").write_text(yaml.safe_dump(cfg))
    with server(fake_engine_argv("m1")) as engine, \
            server(gateway_argv(f"m1={engine.url}", config=str(d / "owc.yaml"))) as proc:
        proc.store = d / "store"
        yield proc


def client(gw, key="sk-alpha") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def on_disk(gw) -> set[str]:
    files = gw.store / "files"
    return set(os.listdir(files)) if files.exists() else set()


def test_files_upload_list_retrieve_content_delete(gw):
    c = client(gw)
    data = jsonl(3)
    f = c.files.create(file=("../secret/../in put.jsonl", data), purpose="batch")
    assert f.object == "file" and f.id.startswith("file-") and f.purpose == "batch" and f.bytes == len(data)
    assert f.filename == "in put.jsonl" and f.status == "processed"
    assert f.expires_at - f.created_at == 30 * 86400
    assert f.id in on_disk(gw)  # named by owc's id, never the client's name
    assert not any("put" in n for n in on_disk(gw))
    assert c.files.retrieve(f.id).model_dump() == f.model_dump()
    assert c.files.content(f.id).content == data
    assert f.id in [x.id for x in c.files.list()]
    short = c.files.create(file=("b.jsonl", jsonl(1)), purpose="batch",
                           expires_after={"anchor": "created_at", "seconds": 3600})
    assert short.expires_at - short.created_at == 3600
    page = c.files.list(limit=1)
    assert [x.id for x in page.data] == [short.id] and page.has_more
    assert [x.id for x in c.files.list(limit=1, after=short.id).data] == [f.id]
    assert [x.id for x in c.files.list(order="asc")][-2:] == [f.id, short.id]
    gone = c.files.delete(f.id)
    assert (gone.id, gone.object, gone.deleted) == (f.id, "file", True)
    assert f.id not in on_disk(gw)
    for call in (lambda: c.files.retrieve(f.id), lambda: c.files.content(f.id), lambda: c.files.delete(f.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    c.files.delete(short.id)


def test_batches_create_retrieve_list_cancel(gw):
    c = client(gw)
    f = c.files.create(file=("in.jsonl", jsonl(4)), purpose="batch")
    made = [c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h", metadata={"n": str(i)})
            for i in range(3)]
    b = made[0]
    assert (b.object, b.endpoint, b.input_file_id, b.completion_window) == ("batch", CHAT, f.id, "24h")
    # No runner here (batch.run off): the batch waits, and says so.
    assert b.status == "validating" and b.output_file_id is None and b.error_file_id is None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (4, 0, 0)
    assert b.expires_at - b.created_at == 86400 and b.metadata == {"n": "0"} and b.in_progress_at is None
    assert b.model == "m1"  # the model every line names (OpenAI's Batch `model`)
    assert c.batches.retrieve(b.id).model_dump() == b.model_dump()
    first = c.batches.list(limit=2)
    assert [x.id for x in first.data] == [made[2].id, made[1].id] and first.has_more
    assert [x.id for x in first.get_next_page().data] == [made[0].id]
    assert [x.id for x in c.batches.list(limit=2)] == [m.id for m in reversed(made)]  # auto-pagination
    cancelled = c.batches.cancel(made[1].id)
    assert cancelled.status == "cancelled" and cancelled.cancelling_at and cancelled.cancelled_at
    assert c.batches.cancel(made[1].id).status == "cancelled"
    assert c.batches.retrieve(made[1].id).status == "cancelled"
    assert c.batches.retrieve(made[0].id).status == "validating"


BAD_FILES = [
    ("not json", b'{"custom_id": "a"\n', "line 1"),
    ("missing fields", b'{"custom_id": "a", "method": "POST"}\n', "missing body, url"),
    ("repeated custom_id", jsonl(2) + jsonl(1), "line 3: custom_id 'r0' repeats line 1"),
    ("GET line", jsonl(1).replace(b'"POST"', b'"GET"'), 'method must be "POST"'),
    ("unknown url", jsonl(1, "/v1/embeddings"), "url must be one of"),
    ("too many lines", jsonl(MAX_LINES + 1), f"more than {MAX_LINES} request lines"),
    ("empty", b"", "empty or missing"),
    ("binary", bytes(range(256)), "line 1"),
]


@pytest.mark.parametrize("name,data,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_malformed_files_are_400(gw, name, data, message):
    before = on_disk(gw)
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).files.create(file=("x.jsonl", data), purpose="batch")
    err = e.value.body
    assert message in err["message"] and err["type"] == "invalid_request_error" and err["param"] == "file", err
    assert on_disk(gw) == before and not os.listdir(gw.store / "tmp")


def test_other_refusals_are_4xx_never_5xx(gw):
    c = client(gw)
    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("x.jsonl", jsonl(1)), purpose="fine-tune")
    assert e.value.body["param"] == "purpose"
    with pytest.raises(openai.APIStatusError) as e:
        c.files.create(file=("x.jsonl", jsonl(1) * (MAX_FILE // len(jsonl(1)) + 1)), purpose="batch")
    assert e.value.status_code == 413
    f = c.files.create(file=("in.jsonl", jsonl(2)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as e:  # the lines' url is not the batch's endpoint
        c.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    assert "differs from the batch's endpoint" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    for bad, param in [({"anchor": "created_at", "seconds": 60}, "output_expires_after.seconds"),
                       ({"anchor": "now", "seconds": 3600}, "output_expires_after.anchor"), ("1h", "output_expires_after")]:
        with pytest.raises(openai.BadRequestError) as e:
            c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h", output_expires_after=bad)
        assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"
    c.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                     output_expires_after={"anchor": "created_at", "seconds": 3600})
    h = {"Authorization": "Bearer sk-alpha"}
    for method, path, kw in [
        ("POST", "/v1/files", {"content": b"not multipart", "headers": {**h, "Content-Type": "text/plain"}}),
        ("POST", "/v1/files", {"content": b"--x\r\ngarbage", "headers": {**h, "Content-Type": "multipart/form-data; boundary=x"}}),
        ("POST", "/v1/files", {"files": {"file": ("a.jsonl", jsonl(1))}, "headers": h}),  # no purpose
        ("POST", "/v1/batches", {"content": b"{nope", "headers": h}),
        ("POST", "/v1/batches", {"json": {"input_file_id": f.id}, "headers": h}),
        ("GET", "/v1/batches?limit=0", {"headers": h}), ("GET", "/v1/batches?limit=x", {"headers": h}),
        ("GET", "/v1/files?order=sideways", {"headers": h}), ("GET", "/v1/files?limit=10001", {"headers": h}),
    ]:
        r = httpx.request(method, gw.url + path, timeout=10, **kw)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_another_tenants_ids_are_404_and_lists_hold_only_ones_own(gw):
    alpha, beta = client(gw), client(gw, "sk-beta")
    f = alpha.files.create(file=("in.jsonl", jsonl(1)), purpose="batch")
    b = alpha.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    mine = beta.files.create(file=("mine.jsonl", jsonl(1)), purpose="batch")
    for call in (lambda: beta.files.retrieve(f.id), lambda: beta.files.content(f.id), lambda: beta.files.delete(f.id),
                 lambda: beta.batches.retrieve(b.id), lambda: beta.batches.cancel(b.id),
                 lambda: beta.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [x.id for x in beta.files.list()] == [mine.id]
    assert list(beta.batches.list()) == []
    assert alpha.files.retrieve(f.id).id == f.id and alpha.batches.retrieve(b.id).status == "validating"


SPEC = json.loads((Path(__file__).resolve().parents[1] / "specs" / "openai-openapi-files-batches.json").read_text())


def _present(v):
    """Nulls taken as absent (OpenAI's own examples send them where the spec types a string)."""
    if isinstance(v, dict):
        return {k: _present(x) for k, x in v.items() if x is not None}
    return [_present(x) for x in v] if isinstance(v, list) else v


def conforms(obj: dict, schema: str) -> None:
    """``obj`` valid against the vendored spec's ``schema``, every field of it one the spec names."""
    jsonschema.validate(_present(obj), {"$ref": f"#/components/schemas/{schema}", "components": SPEC["components"]})
    props = SPEC["components"]["schemas"][schema]["properties"]
    assert set(obj) <= set(props), set(obj) - set(props)
    item = {"ListFilesResponse": "OpenAIFile", "ListBatchesResponse": "Batch"}.get(schema)
    for x in obj.get("data", []) if item else []:
        conforms(x, item)


def test_the_objects_match_openais_spec(gw):
    h = {"Authorization": "Bearer sk-alpha"}
    f = httpx.post(gw.url + "/v1/files", files={"file": ("in.jsonl", jsonl(2))}, data={"purpose": "batch"}, headers=h)
    conforms(f.json(), "OpenAIFile")
    fid = f.json()["id"]
    conforms(httpx.get(gw.url + f"/v1/files/{fid}", headers=h).json(), "OpenAIFile")
    conforms(httpx.get(gw.url + "/v1/files", headers=h).json(), "ListFilesResponse")
    b = httpx.post(gw.url + "/v1/batches", json={"input_file_id": fid, "endpoint": CHAT, "completion_window": "24h",
                                                 "metadata": {"k": "v"}}, headers=h).json()
    conforms(b, "Batch")
    conforms(httpx.get(gw.url + f"/v1/batches/{b['id']}", headers=h).json(), "Batch")
    conforms(httpx.get(gw.url + "/v1/batches?limit=1", headers=h).json(), "ListBatchesResponse")
    conforms(httpx.post(gw.url + f"/v1/batches/{b['id']}/cancel", headers=h).json(), "Batch")
    conforms(httpx.delete(gw.url + f"/v1/files/{fid}", headers=h).json(), "DeleteFileResponse")
