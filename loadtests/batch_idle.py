"""Batch lines on idle capacity only (docs/batch.md): interactive traffic at about 70 % of the
engine's capacity through two gateway processes (as `owc serve` runs them, sharing a local
redis-server), with and without a 500-line batch running, interleaved, several runs.

    python -m loadtests.batch_idle --engine-url http://127.0.0.1:8000 --model M --slots 8 \\
        --runs 3 --out loadtests/results/batch-idle.json
    python -m loadtests.batch_idle --fake --runs 3      # a fake engine (the gateway's side only)

The engine is one you started (vLLM, its max_num_seqs given as --slots) or, with --fake, the fake
engine. The engine's capacity C (requests/s) is measured first in a closed loop at 2 x slots
through the gateways; each run then measures, in rotated order, `alone` (interactive Poisson
arrivals at --load x C for --seconds, streamed, TTFT to the first text chunk) and `batch` (the
same, with a --lines-line batch created just before; the batch's lines run only on slots the
interactive traffic leaves idle). Reported per phase: TTFT p50/p95, statuses, the engine's mean
running requests and busy fraction (running / slots, sampled every 0.1 s); per run the ratio of
TTFT p95 with the batch to without (target <= 1.25), the batch's lines done during the phase and
its time to complete. Not run yet: no committed figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import orjson
import yaml

from cluster.bench.driver import percentile
from cluster.gateway.auth.keys import hash_key
from cluster.engine.launcher import vllm_launcher
from cluster.process import Command, ServerProcess, free_port
from cluster.tenancy.local_redis import LocalRedis
from loadtests.fairness import default_model
from loadtests.fairness_load import KEYS, Occupancy, body, capacity, engine_idle, poisson

TARGET = 1.25
KEY = "sk-bench"


def gateway_config(d: Path, model: str, slots: int, store_url: str, keep_free: float,
                   batch_extra: dict | None = None) -> Path:
    cfg = {"models": {model: {"source": "external", "engine_kwargs": {"max_num_seqs": slots}}},
           "gateway": {"api_keys_env": None, "api_keys_file": str(d / "keys.yaml"), "access_log": {"enabled": False},
                       "fair_sharing": {"store_url": store_url}},
           "batch": {"store_dir": str(d / "batch"), "store_url": store_url, "poll_period_s": 0.2,
                     "keep_free": keep_free, **(batch_extra or {})}}
    # capacity() sends with fairness_load's key of B: a tenant of its own
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key(KEY): "bench", hash_key(KEYS["B"]): "probe"}))
    (d / "owc.yaml").write_text(yaml.safe_dump(cfg))
    return d / "owc.yaml"


def start_batch(url: str, model: str, lines: int, max_tokens: int, tag: str) -> str:
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=2)
    data = b"".join(orjson.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": body(model, max_tokens, stream=False)}) + b"\n" for i in range(lines))
    f = c.files.create(file=("bench.jsonl", data), purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def batch_state(url: str, batch_id: str):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=2).batches.retrieve(batch_id)


class Paced(threading.Thread):
    """Each gateway process's batch lines allowed (the TTFT pacer's limit) and in flight, summed
    over the processes, sampled every ``period_s`` from their metrics ports while a phase runs."""

    def __init__(self, metrics_urls: list[str], period_s: float = 0.5):
        super().__init__(daemon=True)
        self.urls, self.period_s = metrics_urls, period_s
        self.samples: list[tuple[float, float, float]] = []  # (s since start, allowed, in flight)
        self._stop_event = threading.Event()

    def run(self) -> None:
        import httpx

        t0 = time.monotonic()
        with httpx.Client(timeout=2.0) as c:
            while not self._stop_event.wait(self.period_s):
                allowed = in_flight = 0.0
                for url in self.urls:
                    try:
                        text = c.get(url).text
                    except httpx.HTTPError:
                        continue
                    for line in text.splitlines():
                        if line.startswith("owc_batch_lines_allowed{"):
                            allowed += float(line.split()[-1])
                        elif line.startswith("owc_batch_lines_in_flight{"):
                            in_flight += float(line.split()[-1])
                self.samples.append((round(time.monotonic() - t0, 2), allowed, in_flight))

    def stop(self) -> list[tuple[float, float, float]]:
        self._stop_event.set()
        self.join(timeout=5)
        return self.samples


def phase(name: str, urls: list[str], *, a: argparse.Namespace, rate: float, seed: int,
          metrics_urls: list[str] = ()) -> dict:
    batch_id = start_batch(urls[0], a.model, a.lines, a.max_tokens, f"r{seed}") if name == "batch" else None
    paced = Paced(list(metrics_urls))
    paced.start()
    with Occupancy(a.engine_url) as occ:
        got = asyncio.run(poisson(urls, KEY, body(a.model, a.max_tokens, stream=True), rate=rate,
                                  seconds=a.seconds, seed=seed, streamed=True))
    lines = paced.stop()
    ttfts = [t for s, t, _ in got if s == 200 and t is not None]
    statuses: dict[str, int] = {}
    for s, _, _ in got:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    out = {"n": len(got), "statuses": statuses, "ttft_p50_s": percentile(ttfts, 50),
           "ttft_p95_s": percentile(ttfts, 95), "engine": occ.summary(a.slots)}
    if name == "batch" and lines:  # the pacer's limit and the lines running, over the gateway processes
        out["batch_lines_allowed_mean"] = round(statistics.fmean(x[1] for x in lines), 2)
        out["batch_lines_in_flight_mean"] = round(statistics.fmean(x[2] for x in lines), 2)
        out["batch_lines_timeline"] = lines
    if out["engine"]:
        out["engine"]["busy_fraction"] = round(out["engine"]["running_mean"] / a.slots, 3)
    if batch_id is not None:
        b = batch_state(urls[0], batch_id)
        out["batch_lines_done_in_phase"] = b.request_counts.completed + b.request_counts.failed
        t0 = time.monotonic()
        while (b := batch_state(urls[0], batch_id)).status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(1)
        out["batch_status"], out["batch_completed"] = b.status, b.request_counts.completed
        out["batch_rest_s"] = round(time.monotonic() - t0, 1)  # the rest of it on the idle engine
    asyncio.run(engine_idle(a.engine_url))
    return out


def start_engine(slots: int, cores: str, log: Path) -> tuple[str, ServerProcess]:
    """The embedded default's model on vLLM with ``slots`` max_num_seqs (not started yet)."""
    model, mcfg, cache = default_model()
    cfg = mcfg.model_copy(update={"engine_kwargs": {**mcfg.engine_kwargs, "max_num_seqs": slots}})
    cmd = vllm_launcher(model, cfg, cache)
    if cores:
        cmd = Command(["taskset", "-c", cores, *cmd.argv], env=cmd.env)
    return model, ServerProcess(cmd, log_path=log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine-url", help="an engine you started; neither this nor --fake: the embedded default's "
                    "model on vLLM, started here with max_num_seqs --slots")
    ap.add_argument("--model", default="m")
    ap.add_argument("--slots", type=int, default=8, help="the engine's max_num_seqs")
    ap.add_argument("--engine-cores", default="",
                    help="run the engine started here on these cores only (taskset -c, e.g. 0), as on a GPU host "
                         "where the engine's compute does not share the CPU with the gateways (loadtests.fairness)")
    ap.add_argument("--fake", action="store_true", help="start a fake engine (ttft 50 ms, itl 20 ms) instead")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--load", type=float, default=0.7, help="interactive rate as a share of the capacity")
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--keep-free", type=float, default=0.25, help="batch.keep_free")
    ap.add_argument("--batch-set", action="append", default=[], metavar="KEY=VALUE",
                    help="another batch: setting (YAML value), e.g. lines_in_flight=1")
    ap.add_argument("--out", type=Path, default=Path("loadtests/results/batch-idle.json"))
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="owc-batch-idle-"))
    procs: list[ServerProcess] = []
    store = f"redis://127.0.0.1:{free_port()}/0"
    redis = LocalRedis.ensure(store)
    try:
        if a.fake:
            port = free_port()
            procs.append(ServerProcess(Command([sys.executable, "-m", "loadtests.fake_engine", "--port", str(port),
                                                "--model", a.model, "--ttft-ms", "50", "--itl-ms", "20",
                                                "--max-num-seqs", str(a.slots)]), port=port))
            a.engine_url = f"http://127.0.0.1:{port}"
        elif a.engine_url is None:
            a.model, engine = start_engine(a.slots, a.engine_cores, tmp / "engine.log")
            procs.append(engine)
            engine.start()
            asyncio.run(engine.wait_ready(600))
            a.engine_url = engine.url
        extra = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.batch_set)}
        cfg = gateway_config(tmp, a.model, a.slots, store, a.keep_free, extra)
        urls, metrics_urls = [], []
        for _ in range(2):  # owc serve's two gateway processes
            port, mport = free_port(), free_port()
            procs.append(ServerProcess(Command([sys.executable, "-m", "cluster.gateway.main", "--port", str(port),
                                                "--metrics-port", str(mport), "--config", str(cfg),
                                                "--upstream", f"{a.model}={a.engine_url}"]), port=port))
            urls.append(f"http://127.0.0.1:{port}")
            metrics_urls.append(f"http://127.0.0.1:{mport}/metrics")
        for p in procs:
            p.start()
            asyncio.run(p.wait_ready(120))
        cap = asyncio.run(capacity(urls[0], a.model, concurrency=2 * a.slots, max_tokens=a.max_tokens, seconds=20))
        rate = a.load * cap
        runs = []
        for r in range(a.runs):
            order = ["alone", "batch"] if r % 2 == 0 else ["batch", "alone"]
            run = {p: phase(p, urls, a=a, rate=rate, seed=100 * r + i, metrics_urls=metrics_urls)
                   for i, p in enumerate(order)}
            run["ratio_p95"] = run["batch"]["ttft_p95_s"] / run["alone"]["ttft_p95_s"]
            runs.append(run)
            print(json.dumps({"run": r, "ratio_p95": round(run["ratio_p95"], 3),
                              "busy": [run[p]["engine"].get("busy_fraction") for p in ("alone", "batch")]}))
        ratios = [x["ratio_p95"] for x in runs]
        summary = {"keep_free": a.keep_free, "batch_settings": extra, "engine_cores": a.engine_cores or "all", "capacity_rps": round(cap, 3), "rate_rps": round(rate, 3), "slots": a.slots, "lines": a.lines,
                   "ratio_p95_median": round(statistics.median(ratios), 3), "ratio_p95_min": round(min(ratios), 3),
                   "ratio_p95_max": round(max(ratios), 3), "target": TARGET,
                   "busy_alone_median": statistics.median(x["alone"]["engine"].get("busy_fraction", 0) for x in runs),
                   "busy_batch_median": statistics.median(x["batch"]["engine"].get("busy_fraction", 0) for x in runs),
                   "batches_completed": sum(x["batch"].get("batch_status") == "completed" for x in runs)}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"summary": summary, "runs": runs, "fake_engine": a.fake}, indent=1) + "\n")
        print(json.dumps(summary))
        return 0 if summary["ratio_p95_median"] <= TARGET else 1
    finally:
        for p in reversed(procs):
            p.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
