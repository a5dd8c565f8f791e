"""The conformance gate of a rollout in `owc serve`: `owc conformance`'s cases against one
stable and one candidate engine replica, both bare (with the engine credential), compared on
the API surface only (cluster.conformance.surface). Runs before step 1: a candidate that fails
it is aborted before it serves a request."""

from __future__ import annotations

import logging
import time
from typing import Any

from cluster.conformance import run
from cluster.conformance.cases import Settings
from cluster.conformance.surface import failed_rows

log = logging.getLogger(__name__)


def replica_urls(snapshot: list[Any], model: str) -> dict[str, str]:
    """version -> the URL of one replica of that version taking requests."""
    out: dict[str, str] = {}
    for e in snapshot:
        if e.model == model and not e.draining:
            out.setdefault(e.version, e.url)
    return out


def serve_conformance(model: str, *, engine_key: str | None, wait_s: float = 600, max_tokens: int = 16) -> list[str]:
    """The failed rows (features) of ``model``'s candidate against stable on the local Ray Serve."""
    from ray import serve

    registry = serve.get_deployment_handle("owc-registry", app_name="owc")
    deadline = time.monotonic() + wait_s
    while len(urls := replica_urls(registry.snapshot.remote().result(), model)) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no replica of each version after {wait_s:.0f}s: {sorted(urls)}")
        time.sleep(1)

    return compare_versions(urls, model, engine_key=engine_key, max_tokens=max_tokens)


def compare_versions(urls: dict[str, str], model: str, *, engine_key: str | None, max_tokens: int = 16) -> list[str]:
    """The failed rows of the cases against ``urls["stable"]`` and ``urls["candidate"]``
    (bare engines, with the engine credential); `owc serve` and `owc controller` alike."""
    import openai

    from cluster.gateway.upstream.engine_client import engine_headers

    def client(url: str) -> Any:
        return openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key="none", default_headers=engine_headers(engine_key),
                             max_retries=0, timeout=120)

    t0 = time.monotonic()
    rows = run(client(urls["stable"]), client(urls["candidate"]), model=model, engine_model=model,
               settings=Settings(max_tokens=max_tokens))
    failed = failed_rows(rows)
    log.warning("rollout of %s: conformance gate, %d rows in %.0fs: %s", model, len(rows), time.monotonic() - t0,
                "failed " + ", ".join(failed) if failed else "all match")
    return failed
