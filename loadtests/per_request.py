"""What the gateway's per-request CPU is made of: CPU microseconds per request of short
streams (2 output tokens, so that the per-request part dominates) through owc gateway
processes with each default feature turned off in turn, all of them off, and vllm-router, all
in front of one fake engine (a Python process, not profiled) in the same run, interleaved;
and the HTTP floor (loadtests.http_floor): the same server, engine client and stream writes
with none of owc's own work.

    python -m loadtests.per_request --rounds 5 --out loadtests/results/per-request.json
    python -m loadtests.per_request --old-tree DIR --only owc   # and `owc` from another source tree

Each target is a process of its own, started once: `owc` is the overhead benchmark's gateway
(a tenant with its key and limits, fair sharing, stream resume, access log, metrics); the
others differ from it by one setting (or all four). A round sends ``--requests`` requests at
concurrency 16 through each target in rotated order and reads the target process's CPU time
around it. Reported: each target's median (min-max) microseconds per request and its ratio to
vllm-router's in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.bench.driver import run_closed_loop
from cluster.bench.stack import BENCH_KEY, gateway_config, router_bin
from cluster.process import free_port
from loadtests.gateway_profile import _wait
from loadtests.overhead import cpu_seconds

MODEL = "m"
# Each variant: the overhead benchmark's gateway config with these features off.
VARIANTS: dict[str, tuple[str, ...]] = {
    "owc": (), "owc-no-access-log": ("access_log",), "owc-no-fair-sharing": ("fair_sharing",),
    "owc-no-resume": ("resume",), "owc-no-tenant-limits": ("tenants",),
    "owc-all-four-off": ("access_log", "fair_sharing", "resume", "tenants"),
}


def variant_config(off: tuple[str, ...]) -> dict:
    cfg = gateway_config(MODEL, resume="resume" not in off)
    if "access_log" in off:
        cfg["gateway"]["access_log"] = {"enabled": False}
    if "fair_sharing" in off:
        cfg["gateway"]["fair_sharing"] = {"enabled": False}
    if "tenants" in off:  # the key still names tenant `bench`; it has no limits
        del cfg["gateway"]["tenants"]
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=1500, help="requests per target per round")
    p.add_argument("--max-tokens", type=int, default=2)
    p.add_argument("--old-tree", default=None, help="a source tree (e.g. `git archive REV | tar -x -C DIR`) whose "
                   "default gateway runs too, as `owc-old`")
    p.add_argument("--only", default=None, help="comma-separated variants to run (the floor and vllm-router always run)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="owc-per-request-"))
    procs: list[subprocess.Popen] = []
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}

    def start(argv: list[str], log: str, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=(work / log).open("wb"), stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        engine_port = free_port()
        start([sys.executable, "-m", "loadtests.fake_engine", "--port", str(engine_port), "--model", MODEL,
               "--ttft-ms", "1", "--itl-ms", "1", "--max-num-seqs", "256"], "engine.log")
        _wait(f"http://127.0.0.1:{engine_port}/health")
        targets: dict[str, tuple[str, int]] = {}
        env = {**os.environ, "OWC_API_KEYS": f"{BENCH_KEY}=bench"}
        variants = {n: (off, None) for n, off in VARIANTS.items() if not args.only or n in args.only.split(",")}
        if args.old_tree:
            variants["owc-old"] = ((), str(Path(args.old_tree).resolve()))
        for name, (off, tree) in variants.items():
            path, port = work / f"{name}.json", free_port()
            path.write_text(json.dumps(variant_config(off)))
            proc = start([sys.executable, "-m", "cluster.gateway.main", "--upstream",
                          f"{MODEL}=http://127.0.0.1:{engine_port}", "--port", str(port), "--config", str(path)],
                         f"{name}.log", {**env, "PYTHONPATH": tree} if tree else env, cwd=tree)
            targets[name] = (f"http://127.0.0.1:{port}", proc.pid)
        port = free_port()
        floor = start([sys.executable, "-m", "loadtests.http_floor", str(port), str(engine_port)], "floor.log")
        targets["http-floor"] = (f"http://127.0.0.1:{port}", floor.pid)
        port = free_port()
        router = start([router_bin(), "--host", "127.0.0.1", "--port", str(port), "--worker-urls",
                        f"http://127.0.0.1:{engine_port}", "--policy", "round_robin", "--log-level", "warning"],
                       "router.log")
        targets["vllm-router"] = (f"http://127.0.0.1:{port}", router.pid)
        for url, _ in targets.values():
            _wait(url + "/health", 60)
            asyncio.run(run_closed_loop(url, MODEL, requests=200, concurrency=16, max_tokens=args.max_tokens,
                                        headers=headers))  # warm: connections, first-call costs
        names = list(targets)
        rounds: list[dict[str, float]] = []
        errors = 0
        for r in range(args.rounds):
            row = {}
            for name in names[r % len(names):] + names[:r % len(names)]:
                url, pid = targets[name]
                before = cpu_seconds(pid)
                out = asyncio.run(run_closed_loop(url, MODEL, requests=args.requests, concurrency=16,
                                                  max_tokens=args.max_tokens, headers=headers))
                row[name] = 1e6 * (cpu_seconds(pid) - before) / max(out.ok, 1)
                errors += out.errors
            rounds.append(row)
            print(f"round {r}: " + ", ".join(f"{n} {v:.0f}" for n, v in row.items()), file=sys.stderr, flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def spread(xs: list[float], nd: int) -> dict:
        return {"median": round(statistics.median(xs), nd), "min": round(min(xs), nd), "max": round(max(xs), nd),
                "n": len(xs)}

    summary = {name: {"cpu_us_per_request": spread([row[name] for row in rounds], 1),
                      "vs_router": spread([row[name] / row["vllm-router"] for row in rounds], 3)} for name in names}
    result = {
        "what": "gateway CPU microseconds per request, 2-token streams at concurrency 16, fake engine",
        "command": "python -m loadtests.per_request " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created_unix": int(time.time()), "max_tokens": args.max_tokens, "requests_per_round": args.requests,
        "variants": {name: list(off) for name, (off, _) in variants.items()}, "old_tree": args.old_tree,
        "errors": errors,
        "rounds": rounds, "summary": summary,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps(summary, indent=1))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
