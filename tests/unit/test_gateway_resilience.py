"""Resilience of the routed token path, over real HTTP, with the fake engine and a
misbehaving one (no Ray, no vLLM): a replica that dies before its first byte is retried
invisibly, a stream broken mid-way ends with an SSE error event, slow engines hit the
per-request timeout, full queues give 429 with Retry-After, and a replica that goes away
leaves routing and comes back. Each shows in the gateway's metrics. The same against real
vLLM (SIGKILL under load) is in tests/integration/test_routing.py."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
import yaml

from cluster.process import free_port
from tests.conftest import fake_engine_argv, gateway_argv, metric, server, wait_for

CHAT = "/v1/chat/completions"
METRICS_TEXT = (b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0\n"
                b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 0\n")


class BadEngine:
    """An engine that answers its stats scrapes but fails generation requests in ``mode``:
    ``die`` closes the connection before any response byte, ``break`` sends a stream's first
    event then closes, ``hang`` never answers."""

    def __init__(self, mode: str):
        self.mode = mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.posts = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BadEngine:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if head.startswith(b"GET"):
                    body = METRICS_TEXT if b"/metrics" in head.split(b"\r\n")[0] else b'{"data": []}'
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                self.posts += 1
                if self.mode == "break":
                    event = orjson.dumps({"id": "x", "object": "chat.completion.chunk", "model": "m",
                                          "choices": [{"index": 0, "delta": {"content": "Bon"}}]})
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    data = b"data: " + event + b"\n\n"
                    if b" /v1/responses " in head.split(b"\r\n")[0]:  # the Responses API's named events
                        data = (b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
                                b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                                b'"delta":"Bon","sequence_number":1}\n\n')
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                    await asyncio.sleep(0.2)
                elif self.mode == "hang":
                    await asyncio.sleep(3600)
                writer.close()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def _config(tmp_path, timeout_s: float = 30, fair_sharing: bool = True, **routing) -> str:
    path = tmp_path / "owc.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"m": {"source": "external", "routing": {"policy": "round_robin", **routing}}},
        "gateway": {"api_keys_env": None, "limits": {"request_timeout_s": timeout_s},
                    "routing_stats": {"period_s": 0.1, "stale_after_s": 1},
                    "fair_sharing": {"enabled": fair_sharing}},
    }))
    return str(path)


def _chat(url: str, stream: bool = False, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(url + CHAT, json={"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": max_tokens, "stream": stream}, timeout=30)


def _refused_probe(url: str):
    """A probe for queue_full. The gateway sees the engine's queue one scrape late, so a probe can
    be admitted and queue behind the others: it gives up after 1 s (its client leaving cancels it
    on the engine) instead of waiting out the whole queue, and the next probe sees the queue."""

    def probe():
        try:
            r = httpx.post(url + CHAT, json={"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 4}, timeout=1.0)
        except httpx.TimeoutException:
            return None
        return r.status_code == 429 and r

    return probe


@pytest.fixture(scope="module")
def good():
    with server(fake_engine_argv("m", itl_ms=1)) as e:
        yield e


def test_replica_dying_before_its_first_byte_is_retried_invisibly(good, tmp_path):
    with BadEngine("die") as bad, server(gateway_argv(f"m={bad.url}", f"m={good.url}", config=_config(tmp_path))) as gw:
        for stream in (False, True, False, True):
            r = _chat(gw.url, stream=stream)
            assert r.status_code == 200, r.text
            assert "tok3" in r.text and "error" not in r.text
        assert bad.posts >= 1
        assert metric(gw.metrics_url, "owc_retries_total", model="m", reason="engine_lost") == bad.posts
        assert metric(gw.metrics_url, "owc_requests_total", code="200") == 4


def test_stream_broken_mid_way_ends_with_an_sse_error_event(tmp_path):
    with BadEngine("break") as bad, server(gateway_argv(f"m={bad.url}", config=_config(tmp_path))) as gw:
        t0 = time.monotonic()
        r = _chat(gw.url, stream=True)
        assert r.status_code == 200 and time.monotonic() - t0 < 5
        events = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
        assert "Bon" in events[0]
        assert events[-1] == "data: [DONE]"
        err = orjson.loads(events[-2].removeprefix("data: "))["error"]
        assert err["code"] == "engine_stream_broken"
        # a broken stream is not retried: the client had its first token already
        assert bad.posts == 1 and metric(gw.metrics_url, "owc_requests_total", code="502") == 1


def test_responses_stream_broken_mid_way_ends_with_the_specs_error_event(tmp_path):
    with BadEngine("break") as bad, server(gateway_argv(f"m={bad.url}", config=_config(tmp_path))) as gw:
        r = httpx.post(gw.url + "/v1/responses", json={"model": "m", "input": "hi", "stream": True}, timeout=30)
        assert r.status_code == 200
        events = [e for e in r.text.split("\n\n") if e]
        assert "Bon" in events[1]
        name, data = events[-1].split("\n")
        err = orjson.loads(data.removeprefix("data: "))
        # ResponseErrorEvent numbered after the last event relayed, with the error object beside it
        assert name == "event: error" and err["type"] == "error" and err["sequence_number"] == 2
        assert err["code"] == err["error"]["code"] == "engine_stream_broken" and err["param"] is None


def test_per_request_timeout_is_a_504(tmp_path):
    with BadEngine("hang") as bad, server(gateway_argv(f"m={bad.url}", config=_config(tmp_path, timeout_s=2))) as gw:
        t0 = time.monotonic()
        r = _chat(gw.url)
        assert r.status_code == 504 and r.json()["error"]["code"] == "engine_timeout"
        assert 1.5 < time.monotonic() - t0 < 5


def test_full_queues_are_a_429_with_retry_after(tmp_path):
    # Routing's queue bound, without the fair queue: with it, once the gateway has learned the
    # replica's batch (1) from a scrape, a request beyond batch + dispatch_margin waits in the
    # gateway's own queue (up to max_wait_s) instead of reaching this bound, and whether a probe
    # got there first depended on the scrapes' timing (it failed that way in a fresh-clone CI).
    cfg = _config(tmp_path, fair_sharing=False, params={"queue_bound": {"max_queue_per_replica": 2}})
    with server(fake_engine_argv("m", itl_ms=40, max_num_seqs=1)) as slow, \
            server(gateway_argv(f"m={slow.url}", config=cfg)) as gw:
        with ThreadPoolExecutor(4) as pool:
            busy = []
            for n in range(3):  # 1 running, then 2 queued: ~7 s of work at 60 tokens x 40 ms each
                busy.append(pool.submit(_chat, gw.url, False, 60))
                wait_for(lambda n=n: metric(slow.url, "vllm:num_requests_running") + metric(
                    slow.url, "vllm:num_requests_waiting") == n + 1, 10, "the engine queue")
            r = wait_for(_refused_probe(gw.url), 6, "a 429")
            assert r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"] == "1"
            assert all(f.result().status_code == 200 for f in busy)
        assert metric(gw.metrics_url, "owc_rejections_total", model="m", reason="queue_full") >= 1
        assert _chat(gw.url).status_code == 200  # queue drained: admitted again


def test_replica_that_goes_away_leaves_routing_and_comes_back(good, tmp_path):
    port = free_port()
    cfg = _config(tmp_path)
    other = server(fake_engine_argv("m", itl_ms=1), port=port)
    other.__enter__()
    url = f"http://127.0.0.1:{port}"
    with server(gateway_argv(f"m={good.url}", f"m={url}", config=cfg)) as gw:
        routable = lambda n: metric(gw.metrics_url, "owc_engine_replicas_routable", model="m") == n  # noqa: E731
        wait_for(lambda: routable(2), 5, "both replicas routable")
        other.__exit__(None, None, None)
        wait_for(lambda: routable(1), 5, "the stopped replica out of routing")
        assert all(_chat(gw.url).status_code == 200 for _ in range(4))  # none sent to the dead one
        assert metric(gw.metrics_url, "owc_retries_total", model="m") == 0
        with server(fake_engine_argv("m", itl_ms=1), port=port):
            wait_for(lambda: routable(2), 5, "the restarted replica back in routing")


def test_model_scaled_to_zero_is_ready_and_a_request_waits_for_its_first_replica(good, tmp_path):
    """A request for a model at zero replicas is held (counted in flight, which is what the
    controller wakes the model on) until a replica registers, then served."""
    from cluster.discovery.sources import write_endpoints_file
    from cluster.discovery.endpoints import Endpoint

    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"m": {"source": "external", "replicas": {"min": 0, "max": 2},
                         "autoscaling": {"enabled": True, "wake_timeout_s": 20}}},
        "gateway": {"api_keys_env": None},
    }))
    eps = str(tmp_path / "endpoints.json")
    write_endpoints_file(eps, [])
    argv = [*gateway_argv(config=str(cfg)), "--endpoints-file", eps]
    with server(argv) as gw, ThreadPoolExecutor(1) as pool:
        r = httpx.get(gw.url + "/ready")
        assert r.status_code == 200 and r.json()["models"]["m"] == {"replicas": 0, "scaled_to_zero": True}
        held = pool.submit(_chat, gw.url)
        wait_for(lambda: metric(gw.metrics_url, "owc_requests_in_flight", model="m") == 1, 5, "the request held")
        time.sleep(0.5)
        assert not held.done()
        write_endpoints_file(eps, [Endpoint("m", "r1", good.url)])
        assert held.result().status_code == 200


def test_a_held_request_ends_when_its_client_leaves_or_the_wake_timeout_passes(tmp_path):
    """While a model at zero is held for, a client that hangs up stops counting in flight (it
    would otherwise keep the model awake until the wake timeout) and is logged as 499; a
    request nobody wakes the model for gets a 503 after ``wake_timeout_s``, and is not left
    counted in flight either."""
    from cluster.discovery.sources import write_endpoints_file

    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"m": {"source": "external", "replicas": {"min": 0, "max": 2},
                         "autoscaling": {"enabled": True, "wake_timeout_s": 30}},
                   "n": {"source": "external", "replicas": {"min": 0, "max": 2},
                         "autoscaling": {"enabled": True, "wake_timeout_s": 1}}},
        "gateway": {"api_keys_env": None},
    }))
    eps = str(tmp_path / "endpoints.json")
    write_endpoints_file(eps, [])
    argv = [*gateway_argv(config=str(cfg)), "--endpoints-file", eps]
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    with server(argv) as gw:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(gw.url + CHAT, json=body, timeout=1.5)  # the client gives up and hangs up
        wait_for(lambda: metric(gw.metrics_url, "owc_requests_total", model="m", code="499") == 1, 5, "the 499 recorded")
        assert metric(gw.metrics_url, "owc_requests_in_flight", model="m") == 0
        assert time.monotonic() - t0 < 10  # not the 30 s wake timeout
        r = httpx.post(gw.url + CHAT, json={**body, "model": "n"}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_replica"
        assert r.headers["retry-after"] == "10"
        assert metric(gw.metrics_url, "owc_requests_in_flight", model="n") == 0
        assert metric(gw.metrics_url, "owc_requests_queued", model="n") == 0


def test_lora_request_goes_to_the_replica_with_the_adapter_loaded(tmp_path):
    cfg = tmp_path / "owc.yaml"
    cfg.write_text(yaml.safe_dump({
        "models": {"m": {"source": "external", "adapters": ["fr-legal"], "routing": {"policy": "affinity"}}},
        "gateway": {"api_keys_env": None, "routing_stats": {"period_s": 0.1}},
    }))
    with server(fake_engine_argv("m")) as plain, server([*fake_engine_argv("m"), "--lora", "fr-legal"]) as lora, \
            server(gateway_argv(f"m={plain.url}", f"m={lora.url}", config=str(cfg))) as gw:
        time.sleep(0.5)  # the first stats scrape reads each engine's /v1/models
        for _ in range(6):
            r = httpx.post(gw.url + CHAT, json={"model": "fr-legal", "messages": [{"role": "user", "content": "x"}],
                                                "max_tokens": 2}, timeout=30)
            assert r.status_code == 200 and r.json()["model"] == "fr-legal"  # as vLLM names the LoRA it served
        assert metric(lora.url, "vllm:generation_tokens_total") == 12
        assert metric(plain.url, "vllm:generation_tokens_total") == 0
