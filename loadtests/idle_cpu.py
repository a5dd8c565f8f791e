"""An idle gateway process's CPU: what its own timers cost with no request in flight.

    python -m loadtests.idle_cpu --old-tree DIR --rounds 5 --out loadtests/results/idle-cpu.json

One fake engine; one default gateway process (the benchmark's config: every default feature
on) from this checkout, and one from DIR (e.g. `git archive REV | tar -x -C DIR`) when given,
started in turn, in alternating order per round. Each is left idle for ``--seconds`` after its
first health answer (and 2 s to settle) and its CPU time read from /proc. In a benchmark the
idle cost is paid per second whatever the load: at ~2,000 output tokens a second, 0.001 of a
core is 0.5 us a token per gateway process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from cluster.bench.stack import BENCH_KEY, gateway_config
from cluster.process import free_port
from loadtests.gateway_profile import _wait

REPO = Path(__file__).resolve().parents[1]


def idle_cores(tree: Path, engine_port: int, config: Path, seconds: float) -> float:
    port = free_port()
    env = dict(os.environ, OWC_API_KEYS=f"{BENCH_KEY}=bench", PYTHONPATH=str(tree))
    proc = subprocess.Popen([sys.executable, "-m", "cluster.gateway.main", "--upstream", f"m=http://127.0.0.1:{engine_port}",
                             "--port", str(port), "--config", str(config)], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"http://127.0.0.1:{port}/health")
        time.sleep(2.0)
        p = psutil.Process(proc.pid)
        c0 = sum(p.cpu_times()[:2])
        time.sleep(seconds)
        return (sum(p.cpu_times()[:2]) - c0) / seconds
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-tree", default=None, help="another source tree, measured as `old`")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    trees = {"new": REPO, **({"old": Path(args.old_tree).resolve()} if args.old_tree else {})}
    work = Path(tempfile.mkdtemp(prefix="owc-idle-cpu-"))
    config = work / "gateway.json"
    config.write_text(json.dumps(gateway_config("m")))
    engine_port = free_port()
    engine = subprocess.Popen([sys.executable, "-m", "loadtests.fake_engine", "--port", str(engine_port), "--model", "m"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rounds: list[dict[str, float]] = []
    try:
        _wait(f"http://127.0.0.1:{engine_port}/health")
        for r in range(args.rounds):
            names = list(trees) if r % 2 == 0 else list(trees)[::-1]
            rounds.append({n: round(idle_cores(trees[n], engine_port, config, args.seconds), 5) for n in names})
            print(f"round {r + 1}/{args.rounds}: {rounds[-1]}", flush=True)
    finally:
        engine.terminate()
        engine.wait(30)
    summary = {n: {"median": statistics.median(x[n] for x in rounds), "min": min(x[n] for x in rounds),
                   "max": max(x[n] for x in rounds)} for n in trees}
    if "old" in trees:
        ratios = [x["new"] / x["old"] for x in rounds if x["old"] > 0]
        summary["new_over_old"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    doc = {"what": "CPU cores of one idle default gateway process (fake engine), from /proc over each window",
           "command": "python -m loadtests.idle_cpu " + " ".join(argv if argv is not None else sys.argv[1:]),
           "created_unix": int(time.time()), "seconds": args.seconds, "rounds": rounds, "summary": summary}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
