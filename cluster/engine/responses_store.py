"""The bound on vLLM's Responses store, enforced inside the engine process.

vLLM 0.32 keeps every stored response (with VLLM_ENABLE_RESPONSES_API_STORE=1) in plain dicts
of its OpenAIServingResponses (`response_store`, `msg_store`, `event_store`) and never evicts.
owc installs ``StoreBound`` as a vLLM `--middleware` on engines whose model has
`responses_store.enabled`: on the first request it replaces those dicts with bounded ones —
at most `max_entries` responses, each kept `ttl_s` seconds, the oldest evicted first, its
messages and events with it. An evicted id answers vLLM's own 404 (retrieval, follow-up).

Settings come from the engine's environment (OWC_RESPONSES_STORE_MAX_ENTRIES,
OWC_RESPONSES_STORE_TTL_S), set by owc with VLLM_ENABLE_RESPONSES_API_STORE."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

MAX_ENV = "OWC_RESPONSES_STORE_MAX_ENTRIES"
TTL_ENV = "OWC_RESPONSES_STORE_TTL_S"
VLLM_STORE_ENV = "VLLM_ENABLE_RESPONSES_API_STORE"
MIDDLEWARE = "cluster.engine.responses_store.StoreBound"


class BoundedStore(MutableMapping):
    """A dict of at most ``max_entries`` keys, each kept ``ttl_s`` from its first insertion;
    oldest first out. ``on_evict(key)`` is told of each eviction; ``protected(key)`` keys
    are kept while an unprotected one can go instead (messages of a still-stored response)."""

    def __init__(self, max_entries: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic,
                 on_evict: Callable[[Any], None] | None = None, protected: Callable[[Any], bool] | None = None):
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._clock, self._on_evict, self._protected = clock, on_evict, protected
        self.evicted = 0

    def _expire(self) -> None:
        now = self._clock()
        while self._data:
            key, (born, _) = next(iter(self._data.items()))
            if now - born <= self.ttl_s:
                break
            self._evict(key)

    def _evict(self, key: Any) -> None:
        del self._data[key]
        self.evicted += 1
        if self._on_evict is not None:
            self._on_evict(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._expire()
        if key in self._data:  # an update (the response completed): it keeps its age and place
            self._data[key] = (self._data[key][0], value)
            return
        self._data[key] = (self._clock(), value)
        while len(self._data) > self.max_entries:
            victim = next((k for k in self._data if not (self._protected and self._protected(k))), None)
            if victim is None:
                victim = next(iter(self._data))
            self._evict(victim)

    def __getitem__(self, key: Any) -> Any:
        self._expire()
        return self._data[key][1]

    def __delitem__(self, key: Any) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[Any]:
        self._expire()
        return iter(list(self._data))

    def __len__(self) -> int:
        self._expire()
        return len(self._data)


def bound(serving: Any, max_entries: int, ttl_s: float) -> None:
    """Replace a vLLM OpenAIServingResponses' stores with bounded ones (their entries kept)."""
    if isinstance(getattr(serving, "response_store", None), BoundedStore):
        return
    msgs = BoundedStore(2 * max_entries, ttl_s, protected=lambda k: k in responses)
    events = BoundedStore(max_entries, ttl_s)

    def gone(key: Any) -> None:
        msgs.pop(key, None)
        events.pop(key, None)

    responses = BoundedStore(max_entries, ttl_s, on_evict=gone)
    for store, name in ((responses, "response_store"), (msgs, "msg_store"), (events, "event_store")):
        old = getattr(serving, name, None)
        if isinstance(old, dict):
            store.update(old)
            setattr(serving, name, store)


class StoreBound:
    """ASGI middleware: bounds the Responses store of the app it runs in, once."""

    def __init__(self, app: Any, *, max_entries: int | None = None, ttl_s: float | None = None):
        self.app = app
        self.max_entries = max_entries or int(os.environ.get(MAX_ENV, "1000"))
        self.ttl_s = ttl_s or float(os.environ.get(TTL_ENV, "3600"))
        self._done = False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not self._done and scope.get("type") == "http":
            app = scope.get("app")
            serving = getattr(getattr(app, "state", None), "openai_serving_responses", None)
            if serving is not None:
                bound(serving, self.max_entries, self.ttl_s)
                self._done = True
        await self.app(scope, receive, send)


def store_env(enabled: bool, max_entries: int, ttl_s: float) -> dict[str, str]:
    """The engine environment for a model's responses_store (nothing when it is off)."""
    if not enabled:
        return {}
    return {VLLM_STORE_ENV: "1", MAX_ENV: str(max_entries), TTL_ENV: repr(float(ttl_s))}
