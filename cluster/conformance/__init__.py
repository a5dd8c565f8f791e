"""`owc conformance`: the same calls, with the official `openai` client, against a bare
engine and through the gateway; a table of what matches (status codes, event-type
sequences, greedy text, tool-call arguments, parsed JSON) per feature — the check a
platform team runs on each vLLM upgrade. The cases are in cluster.conformance.cases."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from cluster.conformance.cases import CASES, Case, Settings


@dataclass
class Row:
    feature: str
    compares: str
    engine: dict[str, Any]
    gateway: dict[str, Any]
    seconds: float = 0.0
    differs: list[str] = field(default_factory=list)  # the observation keys that differ

    @property
    def match(self) -> bool:
        return not self.differs

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "compares": self.compares, "match": self.match, "differs": self.differs,
                "seconds": round(self.seconds, 2), "engine": self.engine, "gateway": self.gateway}


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """The paths (dotted keys) at which two observations differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [path or "value"]


def clients(*, engine: str, gateway: str, api_key: str | None, engine_key: str | None,
            timeout_s: float = 120) -> tuple[Any, Any]:
    """The official client for each side: the engine's with the engine credential header
    (cluster.gateway.upstream.engine_client.engine_headers), the gateway's with the tenant's key."""
    try:
        import openai
    except ImportError:  # not a dependency of the control plane
        raise SystemExit("owc conformance needs the openai package: pip install openai") from None
    from cluster.gateway.upstream.engine_client import engine_headers

    def base(url: str) -> str:
        url = url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    e = openai.OpenAI(base_url=base(engine), api_key="none", default_headers=engine_headers(engine_key),
                      max_retries=0, timeout=timeout_s)
    g = openai.OpenAI(base_url=base(gateway), api_key=api_key or "none", max_retries=0, timeout=timeout_s)
    return e, g


def first_model(client: Any) -> str:
    """The first model a server lists (a bare engine serves one)."""
    return client.models.list().data[0].id


def run(engine: Any, gateway: Any, *, model: str, engine_model: str, settings: Settings | None = None,
        cases: list[Case] | None = None, only: str | None = None, concurrency: int = 1) -> list[Row]:
    """Every case against both sides (``only``: the cases whose name contains it). With
    ``concurrency`` > 1 that many calls run at once, which the engine batches: faster, but
    greedy text is then only as batch-invariant as the engine's numerics."""
    from concurrent.futures import ThreadPoolExecutor

    settings = settings or Settings()
    chosen = [c for c in cases or CASES if not only or only in c.name]

    def side(job: tuple[Case, bool]) -> tuple[dict[str, Any], float]:
        case, through = job
        t0 = time.perf_counter()
        obs = case.run(gateway, model, settings) if through else case.run(engine, engine_model, settings)
        return obs, time.perf_counter() - t0

    jobs = [(c, through) for c in chosen for through in (False, True)]
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        done = list(pool.map(side, jobs))
    rows = []
    for i, case in enumerate(chosen):
        (a, ta), (b, tb) = done[2 * i], done[2 * i + 1]
        rows.append(Row(case.name, case.compares, a, b, ta + tb, differences(a, b)))
    return rows


def _summary(obs: dict[str, Any]) -> str:
    """A short, human view of one side's observation."""
    if "status" not in obs:  # several calls
        return ", ".join(f"{k}: {_summary(v) if isinstance(v, dict) else v}" for k, v in obs.items())
    parts = [str(obs["status"])]
    if obs.get("events"):
        parts.append(f"{len(obs['events'])} events")
    if obs.get("tool_calls"):
        parts.append("calls " + ",".join(c[0] for c in obs["tool_calls"]))
    elif obs.get("text"):
        parts.append(f"{len(obs['text'])} chars")
    if obs.get("reasoning") or obs.get("thinking"):  # the Messages API's thinking blocks
        parts.append("reasoning")
    return " ".join(parts)


def table(rows: list[Row], *, title: str = "owc conformance: bare engine vs gateway") -> Any:
    from rich.table import Table

    t = Table(title=title)
    for col in ("feature", "compared", "bare engine", "gateway", "match"):
        t.add_column(col, overflow="fold")
    for r in rows:
        verdict = "[green]yes[/green]" if r.match else f"[red]NO[/red] ({', '.join(r.differs)})"
        t.add_row(r.feature, r.compares, _summary(r.engine), _summary(r.gateway), verdict)
    return t


def markdown(doc: dict[str, Any]) -> str:
    """The README's table, from a `--json` file's contents."""
    lines = ["| feature | compared | bare vLLM | through owc | match |", "|---|---|---|---|---|"]
    for r in doc["rows"]:
        verdict = "yes" if r["match"] else f"**no** ({', '.join(r['differs'])})"
        lines.append(f"| {r['feature']} | {r['compares']} | {_summary(r['engine'])} | {_summary(r['gateway'])} | {verdict} |")
    return "\n".join(lines)


def write_json(rows: list[Row], path: str, **about: Any) -> None:
    doc = {**about, "rows": [r.as_dict() for r in rows], "all_match": all(r.match for r in rows)}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
