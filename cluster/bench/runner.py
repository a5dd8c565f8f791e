"""Run a load scenario against one target, or compare targets side by side.

    owc bench chat-multilingual --target http://127.0.0.1:8000 --model tiny-llama
    owc bench shared-prefix --compare --runs 5      # bare vLLM vs owc gateway vs vllm-router

Each run writes `<name>.json` (scenario, settings, summaries, per-run raw numbers), a
Markdown summary and PNG plots (latency CDFs; latency and throughput vs load for sweeps).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict
from typing import Any

import aiohttp

from cluster.bench.driver import SLO, RequestResult, RunSummary, one_request, summarise
from cluster.bench.scenario import Scenario


async def run_scenario(
    sc: Scenario, url: str, model: str, *, headers: dict[str, str] | None = None, target: str = ""
) -> tuple[RunSummary, list[RequestResult]]:
    """One run of a scenario (no sweep) against one target."""
    results: list[RequestResult] = []
    starts = sc.arrival.start_times(sc.conversations)
    chat = sc.endpoint == "chat"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()

        async def conversation(i: int) -> None:
            prompt: Any = sc.first_messages(i) if chat else sc.completion_prompt(i)
            for turn in range(sc.prompts.turns):
                began = time.perf_counter() - t0
                r = await one_request(session, url, model, prompt, sc.prompts.max_tokens, chat=chat,
                                      headers=headers, stream=sc.stream)
                r.started_s = began
                results.append(r)
                if not r.ok or turn + 1 == sc.prompts.turns:
                    return
                follow = sc.next_turn(i, turn + 1)
                if chat:
                    prompt = [*prompt, {"role": "assistant", "content": r.text}, {"role": "user", "content": follow}]
                else:
                    prompt = f"{prompt}{r.text}\n\n{follow}"

        if starts is None:
            pending = iter(range(sc.conversations))

            async def worker() -> None:
                for i in pending:
                    await conversation(i)

            await asyncio.gather(*(worker() for _ in range(sc.arrival.concurrency)))
        else:
            async def at(i: int, offset: float) -> None:
                await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
                await conversation(i)

            await asyncio.gather(*(at(i, off) for i, off in enumerate(starts)))
        duration = time.perf_counter() - t0
    concurrency = sc.arrival.concurrency if starts is None else 0
    summary = summarise(target or url, concurrency, results, duration, slo=SLO(sc.slo.ttft_s, sc.slo.itl_s))
    return summary, results


def load_points(sc: Scenario) -> list[tuple[float | None, Scenario]]:
    """(sweep value, scenario) pairs: one point without a sweep."""
    return [(v, sc.at(v)) for v in sc.sweep] if sc.sweep else [(None, sc)]


def _thin(xs: list[float], most: int) -> list[float]:
    """Evenly spaced order statistics: the same CDF from at most ``most`` points."""
    xs = sorted(round(x, 6) for x in xs)
    if len(xs) <= most:
        return xs
    return [xs[round(i * (len(xs) - 1) / (most - 1))] for i in range(most)]


def spread(xs: list[float]) -> dict[str, float] | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


METRICS = ("ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "e2e_p50_s", "e2e_p99_s",
           "output_tokens_per_s", "requests_per_s", "goodput")


async def run_single(sc: Scenario, url: str, model: str, *, headers: dict[str, str] | None = None) -> dict:
    points = []
    for value, point in load_points(sc):
        summary, results = await run_scenario(point, url, model, headers=headers, target=url)
        points.append({"load": value, "summary": asdict(summary),
                       "ttft_s": _thin([r.ttft_s for r in results if r.ok], 2000),
                       "itl_s": _thin([x for r in results if r.ok for x in r.itl_s], 2000)})
    return {"mode": "single", "target": url, "model": model, "points": points}


async def run_compare(sc: Scenario, targets: dict[str, str], model: str, *, runs: int, baseline: str,
                      headers: dict[str, str] | None = None) -> dict:
    """Every target at every load point, `runs` times, rotating the order each run; ratios
    are paired per run against ``baseline``."""
    names = list(targets)
    points = []
    for value, point in load_points(sc):
        per_run: list[dict[str, dict]] = []
        samples: dict[str, dict[str, list[float]]] = {n: {"ttft_s": [], "itl_s": []} for n in names}
        for r in range(runs):
            order = names[r % len(names):] + names[: r % len(names)]
            run: dict[str, dict] = {}
            for name in order:
                summary, results = await run_scenario(point, targets[name], model, headers=headers, target=name)
                run[name] = asdict(summary)
                samples[name]["ttft_s"] += [x.ttft_s for x in results if x.ok]
                samples[name]["itl_s"] += [x for res in results if res.ok for x in res.itl_s]
            per_run.append(run)
        stats: dict[str, dict] = {}
        for name in names:
            entry = {m: spread([run[name][m] for run in per_run]) for m in METRICS}
            entry["errors"] = sum(run[name]["errors"] for run in per_run)
            if name != baseline:
                for m in ("ttft_p50_s", "ttft_p99_s", "itl_p50_s", "output_tokens_per_s"):
                    entry[f"{m}_ratio"] = spread([
                        run[name][m] / run[baseline][m] for run in per_run if run[name][m] and run[baseline][m]
                    ])
            stats[name] = entry
        for name in names:  # keep the report small: CDFs need a few thousand points at most
            samples[name] = {k: _thin(v, 2000) for k, v in samples[name].items()}
        points.append({"load": value, "stats": stats, "runs": per_run, "samples": samples})
    return {"mode": "compare", "targets": targets, "baseline": baseline, "model": model, "runs": runs, "points": points}
