"""Stream resume over real HTTP (fake engines, no Ray, no vLLM): an engine that dies in the
middle of its streams has them continued on the other replica, and each client reads one
uninterrupted stream with the whole text and the whole usage. With resume off (or for a
request that cannot be resumed) the stream ends with the SSE error event instead. The same
against real vLLM (SIGKILL, greedy text equal to an uninterrupted run) is in
tests/integration/test_stream_resume.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
import yaml

from tests.conftest import fake_engine_argv, gateway_argv, metric, server

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _config(tmp_path, **model) -> str:
    path = tmp_path / "owc.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"m": {"source": "external", "routing": {"policy": "round_robin"}, **model}},
        "gateway": {"api_keys_env": None, "routing_stats": {"period_s": 0.1, "stale_after_s": 1}},
    }))
    return str(path)


def _stream(url: str, route: str, *, max_tokens: int, **extra) -> list[str]:
    body = {"model": "m", "max_tokens": max_tokens, "stream": True, **extra}
    body.update({"messages": [{"role": "user", "content": "bonjour"}]} if route == CHAT else {"prompt": "one two"})
    with httpx.stream("POST", url + route, json=body, timeout=30) as r:
        assert r.status_code == 200
        return [e.removeprefix("data: ") for e in r.read().decode().split("\n\n") if e.startswith("data: ")]


def _text(events: list[str], route: str) -> str:
    out = []
    for e in events[:-1]:
        for c in orjson.loads(e).get("choices") or ():
            out.append(c["delta"].get("content") or "" if route == CHAT else c["text"])
    return "".join(out)


def _dying(n: int, how: str = "--die-after-tokens"):
    return server([*fake_engine_argv("m", itl_ms=20), how, str(n)])


# An engine process that dies (its connections break), and one whose engine core dies under
# the API server (vLLM then ends each stream with an error event and [DONE]).
@pytest.mark.parametrize("how", ["--die-after-tokens", "--error-after-tokens"])
@pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
def test_streams_on_a_dying_engine_are_resumed_on_the_other(route, how, tmp_path):
    with _dying(20, how) as dying, server(fake_engine_argv("m", itl_ms=20)) as good, \
            server(gateway_argv(f"m={dying.url}", f"m={good.url}", config=_config(tmp_path))) as gw:
        with ThreadPoolExecutor(6) as pool:  # round robin: 3 on the engine that dies after 20 tokens in all
            runs = list(pool.map(lambda _: _stream(gw.url, route, max_tokens=12,
                                                   stream_options={"include_usage": True}), range(6)))
        want = "".join(f" tok{i}" for i in range(12))
        for events in runs:
            assert events[-1] == "[DONE]"
            assert not any('"error"' in e for e in events), events
            assert _text(events, route) == want
            ids = {orjson.loads(e)["id"] for e in events[:-1]}
            assert len(ids) == 1  # one stream: the continuation wears the original's id
            assert not any("token_ids" in e for e in events)  # the engine's ids stay in the gateway
            usage = orjson.loads(events[-2])["usage"]
            assert usage["completion_tokens"] == 12 and usage["prompt_tokens"] >= 1
            assert usage["total_tokens"] == usage["prompt_tokens"] + 12
        resumed = metric(gw.metrics_url, "owc_stream_resumes_total", model="m", result="resumed")
        # 3 streams of 12 tokens on the engine that dies after 20: at least 2 were cut
        assert 2 <= resumed <= 3
        assert metric(gw.metrics_url, "owc_requests_total", code="200") == 6


@pytest.mark.parametrize("route", [CHAT, COMPLETIONS])
def test_an_engine_dying_inside_the_usage_event_leaves_no_partial_event(route, tmp_path):
    """Broken after its last token, half-way through the usage event (a replica stopped as its
    stream ended): the client gets the stream's end from the gateway, and not one byte of the
    broken event."""
    with server([*fake_engine_argv("m"), "--die-in-usage"]) as dying, \
            server(gateway_argv(f"m={dying.url}", config=_config(tmp_path))) as gw:
        events = _stream(gw.url, route, max_tokens=5, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]", events
    assert _text(events[:-1], route) == " tok0 tok1 tok2 tok3 tok4"
    parsed = [orjson.loads(e) for e in events[:-1]]  # every event whole
    assert not any("error" in e for e in parsed), parsed
    assert parsed[-1]["usage"]["completion_tokens"] == 5 and parsed[-1]["choices"] == []


def test_resume_off_or_not_resumable_ends_with_the_error_event(tmp_path):
    for model, extra in (({"resume_streams": False}, {}), ({}, {"stop": ["never"]})):
        with _dying(3) as dying, server(fake_engine_argv("m")) as good, \
                server(gateway_argv(f"m={dying.url}", f"m={good.url}", config=_config(tmp_path, **model))) as gw:
            with ThreadPoolExecutor(2) as pool:  # round robin: one of the two goes to `dying`
                runs = list(pool.map(lambda _, extra=extra: _stream(gw.url, CHAT, max_tokens=8, **extra), range(2)))
            ends = sorted(orjson.loads(r[-2]).get("error", {}).get("code", "") for r in runs)
            assert ends == ["", "engine_stream_broken"], (model, extra, runs)
            assert metric(gw.metrics_url, "owc_stream_resumes_total", model="m", result="resumed") == 0


def test_a_stream_with_no_replica_left_to_resume_on_ends_with_the_error_event(tmp_path):
    with _dying(3) as dying, server(gateway_argv(f"m={dying.url}", config=_config(tmp_path))) as gw:
        events = _stream(gw.url, CHAT, max_tokens=8)
        assert _text(events[:-1], CHAT) == " tok0 tok1 tok2"
        assert orjson.loads(events[-2])["error"]["code"] == "engine_stream_broken"
        assert metric(gw.metrics_url, "owc_stream_resumes_total", model="m", result="failed") == 1
