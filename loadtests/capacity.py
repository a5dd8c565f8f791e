"""Gateway capacity on the fake engine: a stepped request-rate sweep finds the highest rate
at which (p99 through the proxy - p99 direct to the fake engines) stays within a budget
(10 ms), for the owc gateway and for vllm-router on the same fake backends, in one run.

    python -m loadtests.capacity --rates 50,100,200,300,400 --step-s 4 --out loadtests/results

Open-loop Poisson arrivals, non-streamed completions of 8 tokens (the fake answers after
TTFT + 7 x ITL). At every step each target gets the same arrival schedule, in rotated
order. The load generator shares this machine's CPUs with the proxies: the achieved rate
is recorded next to the offered one, and a step where the generator itself fell behind
(achieved < 90 % of offered) says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from cluster.process import Command, ServerProcess, free_port
from cluster.bench.driver import one_request, percentile
from cluster.bench.stack import LOG_DIR, router_bin

MODEL = "fake"


async def open_loop(urls: list[str], rate: float, duration_s: float, seed: int, max_tokens: int) -> dict:
    rng = random.Random(seed)
    offsets, t = [], 0.0
    while t < duration_s:
        offsets.append(t)
        t += rng.expovariate(rate)
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()

        async def fire(i: int, off: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, t0 + off - time.perf_counter()))
            r = await one_request(session, urls[i % len(urls)], MODEL, "x", max_tokens, chat=False, stream=False, timeout_s=30)
            if r.ok:
                lat.append(r.e2e_s)
            else:
                errors += 1

        await asyncio.gather(*(fire(i, off) for i, off in enumerate(offsets)))
        took = time.perf_counter() - t0
    return {"offered_rps": rate, "sent": len(offsets), "achieved_rps": len(offsets) / took, "errors": errors,
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="50,100,200,300,400")
    p.add_argument("--step-s", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats per step; deltas are their median")
    p.add_argument("--budget-ms", type=float, default=10.0)
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=2.0)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--out", default="loadtests/results")
    a = p.parse_args(argv)
    rates = [float(x) for x in a.rates.split(",")]
    LOG_DIR.mkdir(exist_ok=True)
    procs: list[ServerProcess] = []

    def start(proc: ServerProcess) -> ServerProcess:
        procs.append(proc)
        proc.start()
        asyncio.run(proc.wait_ready(60))
        return proc

    try:
        engines = [start(ServerProcess(Command([
            sys.executable, "-m", "loadtests.fake_engine", "--port", "{port}", "--model", MODEL,
            "--ttft-ms", str(a.ttft_ms), "--itl-ms", str(a.itl_ms), "--max-num-seqs", "100000"]))) for _ in range(a.engines)]
        urls = [e.url for e in engines]
        gw_port = free_port()
        gateway = start(ServerProcess(Command(
            [sys.executable, "-m", "cluster.gateway.main", "--port", str(gw_port)] + [x for u in urls for x in ("--upstream", f"{MODEL}={u}")]),
            port=gw_port, log_path=LOG_DIR / "capacity-gateway.log"))
        r_port = free_port()
        router = start(ServerProcess(Command(
            [router_bin(), "--host", "127.0.0.1", "--port", str(r_port), "--policy", "round_robin", "--log-level", "warning",
             "--worker-urls", *urls]), port=r_port, log_path=LOG_DIR / "capacity-router.log"))
        targets = {"direct": urls, "owc-gateway": [gateway.url], "vllm-router": [router.url]}
        names = list(targets)
        for name in names:  # warm-up
            asyncio.run(open_loop(targets[name], 20, 1.0, 0, a.max_tokens))
        steps = []
        for k, rate in enumerate(rates):
            reps: list[dict[str, dict]] = []
            for j in range(a.repeats):
                shift = (k + j) % len(names)
                order = names[shift:] + names[:shift]
                # The same seeded arrival schedule for every target within a repeat.
                reps.append({name: asyncio.run(open_loop(targets[name], rate, a.step_s, seed=1000 * k + j,
                                                         max_tokens=a.max_tokens)) for name in order})
            step: dict = {"repeats": reps}
            for name in names:
                p99s = [r[name]["p99_s"] for r in reps if r[name]["p99_s"] is not None]
                step[name] = {
                    "p99_s": statistics.median(p99s) if p99s else None,
                    "errors": sum(r[name]["errors"] for r in reps),
                    "achieved_rps": statistics.median(r[name]["achieved_rps"] for r in reps),
                }
            for name in ("owc-gateway", "vllm-router"):
                deltas = [(r[name]["p99_s"] - r["direct"]["p99_s"]) * 1000 for r in reps
                          if r[name]["p99_s"] is not None and r["direct"]["p99_s"] is not None]
                step[name]["p99_minus_direct_ms"] = statistics.median(deltas) if deltas else None
                step[name]["p99_minus_direct_ms_range"] = [min(deltas), max(deltas)] if deltas else None
            step["generator_fell_behind"] = any(step[n]["achieved_rps"] < 0.9 * rate for n in names)
            steps.append(step)
            print(f"rate {rate:g}/s: " + ", ".join(
                f"{n} p99={step[n]['p99_s'] * 1000:.1f}ms" + (f" (Δ {step[n]['p99_minus_direct_ms']:+.1f})" if n != "direct" else "")
                for n in names if step[n]["p99_s"]), file=sys.stderr)
    finally:
        for proc in reversed(procs):
            proc.stop(grace_s=5)

    def capacity(name: str) -> float | None:
        best = None
        for rate, step in zip(rates, steps):
            delta = step[name]["p99_minus_direct_ms"]
            if delta is None or delta > a.budget_ms or step[name]["errors"]:
                break
            best = rate
        return best

    doc = {
        "benchmark": "gateway capacity on the fake engine",
        "command": "python -m loadtests.capacity " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created_unix": int(time.time()),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "settings": vars(a),
        "rates": rates,
        "steps": steps,
        "capacity_rps": {"owc-gateway": capacity("owc-gateway"), "vllm-router": capacity("vllm-router")},
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "capacity.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "capacity.md").write_text(markdown(doc) + "\n")
    plot(doc, out / "capacity.png")
    print(json.dumps(doc["capacity_rps"]))
    return 0


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [
        "# Gateway capacity on the fake engine", "",
        f"{s['engines']} fake engines (TTFT {s['ttft_ms']} ms, ITL {s['itl_ms']} ms, {s['max_tokens']} tokens, non-streamed); "
        f"Poisson arrivals, {s['step_s']} s per step, {s['repeats']} interleaved repeats per step (same seeded schedule "
        f"for every target within a repeat); budget: median over repeats of (p99 through the proxy − p99 direct) "
        f"≤ {s['budget_ms']} ms, and no errors, at this step and every lower one.",
        f"Command: `{doc['command']}`", "",
        f"**Highest rate within budget: owc gateway {doc['capacity_rps']['owc-gateway']} req/s, "
        f"vllm-router {doc['capacity_rps']['vllm-router']} req/s.**", "",
        "| offered req/s | direct p99 ms | owc p99 ms (Δ median, range) | vllm-router p99 ms (Δ median, range) | achieved req/s (direct / owc / router) | errors | generator fell behind |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate, st in zip(doc["rates"], doc["steps"]):
        def cell(n: str, st: dict = st) -> str:
            p99 = st[n]["p99_s"]
            if p99 is None:
                return "—"
            delta, rng = st[n].get("p99_minus_direct_ms"), st[n].get("p99_minus_direct_ms_range")
            if delta is None:
                return f"{p99 * 1000:.1f}"
            return f"{p99 * 1000:.1f} ({delta:+.1f}, {rng[0]:+.1f}…{rng[1]:+.1f})"

        achieved = " / ".join(f"{st[n]['achieved_rps']:.0f}" for n in ("direct", "owc-gateway", "vllm-router"))
        errs = sum(st[n]["errors"] for n in ("direct", "owc-gateway", "vllm-router"))
        lines.append(f"| {rate:g} | {cell('direct')} | {cell('owc-gateway')} | {cell('vllm-router')} | {achieved} | {errs} | "
                     f"{'yes' if st['generator_fell_behind'] else 'no'} |")
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("direct", "owc-gateway", "vllm-router"):
        ys = [(st[name]["p99_s"] or 0) * 1000 for st in doc["steps"]]
        ax.plot(doc["rates"], ys, marker="o", label=name)
    ax.set_xlabel("offered requests/s")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("gateway capacity on the fake engine")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
