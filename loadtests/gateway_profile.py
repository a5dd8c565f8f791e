"""Where the gateway's CPU goes under load: py-spy samples of one gateway process in front of
the fake engine (so that nothing but the gateway is profiled), with the overhead benchmark's
owc set-up (a tenant with its key and limits, defaults otherwise), at a given source tree.

    python -m loadtests.gateway_profile --out loadtests/results/gateway-profile.json \\
        [--old-tree DIR]   # e.g. `git archive REV | tar -x -C DIR`: the same profile of that revision

Reports each profile's top functions by own samples and by inclusive samples (shares of the
gateway's samples), the CPU seconds per 1k output tokens over the profiled window and the
tokens/s. Sampling (200 Hz, py-spy --nonblocking) adds its own cost: compare profiles with
each other, and take CPU figures from `loadtests/overhead.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from cluster.bench.driver import run_closed_loop
from cluster.bench.stack import BENCH_KEY, gateway_config
from cluster.process import free_port

REPO = Path(__file__).resolve().parents[1]


def _wait(url: str, timeout_s: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def _names(frame: str) -> str:
    fn, _, loc = frame.strip().partition(" (")
    loc = loc.rstrip(")").rsplit(":", 1)[0]
    for prefix in (str(REPO) + "/", "site-packages/"):
        if prefix in loc:
            loc = loc.split(prefix, 1)[1]
    return f"{fn} ({loc})" if loc else fn


def summarise(raw: str, top: int) -> dict:
    """Top functions by own and by inclusive samples, from py-spy's raw (collapsed) output."""
    own, incl, total = collections.Counter(), collections.Counter(), 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [_names(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)

    def share(c: collections.Counter) -> list[list]:
        return [[name, round(n / total, 4)] for name, n in c.most_common(top)]

    return {"samples": total, "own": share(own), "inclusive": share(incl)}


def profile(tree: Path, *, seconds: int, max_tokens: int, top: int) -> dict:
    ep, gp = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="owc-profile-"))
    cfg = work / "gateway.json"
    cfg.write_text(json.dumps(gateway_config("m")))
    env = dict(os.environ, OWC_API_KEYS=f"{BENCH_KEY}=bench", PYTHONPATH=str(tree))
    engine = subprocess.Popen([sys.executable, "-m", "loadtests.fake_engine", "--port", str(ep), "--model", "m",
                               "--ttft-ms", "5", "--itl-ms", "4"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway = subprocess.Popen([sys.executable, "-m", "cluster.gateway.main", "--upstream", f"m=http://127.0.0.1:{ep}",
                                "--port", str(gp), "--config", str(cfg)], cwd=tree, env=env,
                               stdout=(work / "access.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{ep}/health")
        _wait(f"http://127.0.0.1:{gp}/health")
        url, headers = f"http://127.0.0.1:{gp}", {"Authorization": f"Bearer {BENCH_KEY}"}
        asyncio.run(run_closed_loop(url, "m", requests=64, concurrency=16, max_tokens=max_tokens, headers=headers))
        out = work / "profile.txt"
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(gateway.pid), "-d",
                                str(seconds), "-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        proc = psutil.Process(gateway.pid)
        cpu0, t0, tokens = sum(proc.cpu_times()[:2]), time.monotonic(), 0
        while time.monotonic() - t0 < seconds - 2:
            r = asyncio.run(run_closed_loop(url, "m", requests=128, concurrency=16, max_tokens=max_tokens, headers=headers))
            tokens += r.output_tokens
        cpu, wall = sum(proc.cpu_times()[:2]) - cpu0, time.monotonic() - t0
        spy.wait(seconds + 30)
        doc = summarise(out.read_text(), top)
        return {"tree": str(tree), "cpu_s_per_1k_tokens": round(1000 * cpu / max(tokens, 1), 4),
                "output_tokens_per_s": round(tokens / wall), **doc}
    finally:
        for p in (gateway, engine):
            p.terminate()
        for p in (gateway, engine):
            p.wait(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-tree", help="a source tree of another revision, profiled the same way first")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", default="loadtests/results/gateway-profile.json")
    a = p.parse_args(argv)
    doc = {"command": "python -m loadtests.gateway_profile " + " ".join(argv if argv is not None else sys.argv[1:]),
           "created_unix": int(time.time()), "max_tokens": a.max_tokens, "seconds": a.seconds, "profiles": {}}
    if a.old_tree:
        doc["profiles"]["old"] = profile(Path(a.old_tree), seconds=a.seconds, max_tokens=a.max_tokens, top=a.top)
    doc["profiles"]["new"] = profile(REPO, seconds=a.seconds, max_tokens=a.max_tokens, top=a.top)
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    for name, prof in doc["profiles"].items():
        print(f"{name}: {prof['cpu_s_per_1k_tokens']} CPU s / 1k tokens, {prof['output_tokens_per_s']} tok/s")
        for fn, share in prof["own"][:10]:
            print(f"  {share * 100:5.1f}%  {fn}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
