"""The engine-side bound on vLLM's Responses store (cluster.engine.responses_store) and how a
model's `responses_store` reaches the engine (its variable only when on, the middleware)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from cluster.config.schema import ModelConfig
from cluster.engine.args import engine_env, server_cli_args
from cluster.engine.responses_store import MIDDLEWARE, BoundedStore, StoreBound, bound


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_oldest_out_beyond_max_entries_and_updates_keep_their_place():
    s = BoundedStore(3, 100)
    for k in "abc":
        s[k] = k
    s["a"] = "a2"  # the response completing: no new entry
    s["d"] = "d"
    assert list(s) == ["b", "c", "d"] and s.evicted == 1 and "a" not in s


def test_ttl():
    clock = Clock()
    s = BoundedStore(10, 5, clock=clock)
    s["a"] = 1
    clock.t = 4
    s["b"] = 2
    clock.t = 6
    assert "a" not in s and s["b"] == 2 and len(s) == 1


def test_vllm_serving_stores_bounded_together():
    serving = SimpleNamespace(response_store={"old": 0}, msg_store={"old": []}, event_store={})
    bound(serving, 2, 100)
    r, m = serving.response_store, serving.msg_store
    assert isinstance(r, BoundedStore) and r["old"] == 0 and m["old"] == []
    for i in range(3):
        m[f"id{i}"] = [i]  # vLLM writes the messages first, the response when done
        r[f"id{i}"] = i
    assert sorted(r) == ["id1", "id2"] and "id0" not in m and "old" not in m  # evicted with their responses
    m["failed"] = []  # a request that never stored a response
    for i in range(3, 5):
        m[f"id{i}"] = [i]
        r[f"id{i}"] = i
    assert all(k in m for k in r)  # a stored response's messages are kept: vLLM indexes them without get()
    bound(serving, 5, 5)
    assert serving.response_store is r  # once


def test_middleware_installs_on_first_request():
    serving = SimpleNamespace(response_store={}, msg_store={}, event_store={})
    app = SimpleNamespace(state=SimpleNamespace(openai_serving_responses=serving))
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope["path"])

    mw = StoreBound(inner, max_entries=7, ttl_s=9)
    asyncio.run(mw({"type": "http", "path": "/v1/responses", "app": app}, None, None))
    assert seen == ["/v1/responses"] and serving.response_store.max_entries == 7


def test_store_reaches_the_engine_only_when_on():
    off = ModelConfig(source="external")
    on = ModelConfig(source="external", responses_store={"enabled": True, "max_entries": 50, "ttl_s": 60})
    assert "VLLM_ENABLE_RESPONSES_API_STORE" not in engine_env(off)
    env = engine_env(on)
    assert env["VLLM_ENABLE_RESPONSES_API_STORE"] == "1" and env["OWC_RESPONSES_STORE_MAX_ENTRIES"] == "50"
    args = lambda cfg: server_cli_args(model_path="/w", served_name="m", cfg=cfg, port=1)  # noqa: E731
    assert MIDDLEWARE not in args(off) and args(on)[-2:] == ["--middleware", MIDDLEWARE]
