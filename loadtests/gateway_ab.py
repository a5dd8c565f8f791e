"""Gateway A/B: the owc gateway at an old revision vs the working tree, on one vLLM engine.

    python -m loadtests.gateway_ab --old a0efd88 --rounds 6 --out loadtests/results/gateway-ab.json

The old revision is checked out in a temporary `git worktree` (removed at the end). One
vLLM OpenAI server (the embedded default's model and engine settings, as in
loadtests/overhead.py) is started once, and two gateway processes in front of it:
"old" runs `python -m cluster.gateway.main` from the worktree (its `cluster` package),
"new" the same command from this checkout (or, with --new REV, from a second worktree),
both with the same Python. Each round measures
both, in alternating order (old,new then new,old): TTFT p50 at concurrency 1 and output
tokens/s at concurrency 16 (closed loop, streaming, ignore_eos). Ratios are new/old,
paired per round, reported as median with min-max spread; each gateway's CPU seconds per
1k output tokens come from its process's CPU time over the round.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import psutil

from cluster.bench.stack import start_ready
from cluster.config.loader import load_config
from cluster.engine.launcher import vllm_launcher
from cluster.process import Command, ServerProcess, free_port
from loadtests.overhead import cpu_seconds

try:
    from cluster.bench.driver import run_closed_loop
except ImportError:  # before the move of loadtests/driver.py into cluster/bench/
    from loadtests.driver import run_closed_loop

REPO = Path(__file__).resolve().parents[1]
LOG_DIR = Path("/tmp/owc-gateway-ab")
DEFAULT_OLD = "a0efd88"
SIDES = ("old", "new")


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _new_tree() -> dict:
    """What "new" is: HEAD plus whatever the working tree changes (untracked files included)."""
    status = _git("status", "--porcelain")
    diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=REPO, capture_output=True, check=True).stdout
    return {"head": _git("rev-parse", "HEAD"), "dirty": bool(status), "changed_paths": len(status.splitlines()),
            "diff_sha256": hashlib.sha256(diff).hexdigest() if status else None}


def _spread(xs: list[float | None]) -> dict[str, float] | None:
    """Median and min-max of the rounds that produced a value (a side with only errors has none)."""
    xs = [x for x in xs if x is not None]
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _in_tree(tree: Path, argv: list[str]) -> list[str]:
    """argv run from ``tree`` (ServerProcess takes no cwd; `env -C` execs, so the pid stays)."""
    return ["env", "-C", str(tree), *argv]


def _check_imports(tree: Path) -> str:
    """The `cluster` a process started like the gateway imports: it must be ``tree``'s."""
    code = "import cluster, cluster.gateway.main as m; print(cluster.__file__); print(m.__file__)"
    r = subprocess.run(_in_tree(tree, [sys.executable, "-c", code]), capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(tree)})
    if r.returncode != 0:
        raise SystemExit(f"importing cluster.gateway.main from {tree} failed:\n{r.stderr[-2000:]}")
    files = r.stdout.split()
    if not all(Path(f).resolve().is_relative_to(tree.resolve()) for f in files):
        raise SystemExit(f"a gateway started in {tree} imports {files}, not {tree}'s cluster package")
    return files[0]


def _gateway(tree: Path, side: str, model: str, engine_url: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "cluster.gateway.main", "--upstream", f"{model}={engine_url}", "--port", str(port),
            "--parent-pid", str(os.getpid())]
    return ServerProcess(Command(_in_tree(tree, argv), env={"PYTHONPATH": str(tree)}),
                         log_path=LOG_DIR / f"gateway-{side}.log", port=port)


async def _measure(url: str, model: str, args: argparse.Namespace, label: str) -> dict:
    ttft = await run_closed_loop(url, model, requests=args.ttft_requests, concurrency=1, max_tokens=args.max_tokens,
                                 target=label)
    tput = await run_closed_loop(url, model, requests=args.tput_requests, concurrency=args.concurrency,
                                 max_tokens=args.max_tokens, target=label)
    return {"ttft_c1": asdict(ttft), "tput_c16": asdict(tput)}


def summarise(rounds: list[dict]) -> dict:
    def ttft(r: dict, side: str) -> float:
        return r["results"][side]["ttft_c1"]["ttft_p50_s"]

    def tput(r: dict, side: str) -> float:
        return r["results"][side]["tput_c16"]["output_tokens_per_s"]

    def cpu(r: dict, side: str) -> float:
        return r["results"][side]["cpu_s_per_1k_tokens"]

    out: dict = {}
    for side in SIDES:
        out[side] = {
            "ttft_p50_s": _spread([ttft(r, side) for r in rounds]),
            "output_tokens_per_s": _spread([tput(r, side) for r in rounds]),
            "cpu_s_per_1k_tokens": _spread([cpu(r, side) for r in rounds]),
            "errors": sum(r["results"][side][k]["errors"] for r in rounds for k in ("ttft_c1", "tput_c16")),
        }
    out["new_vs_old"] = {
        "ttft_p50_ratio": _spread([_ratio(ttft(r, "new"), ttft(r, "old")) for r in rounds]),  # < 1: new is faster
        "tput_ratio": _spread([_ratio(tput(r, "new"), tput(r, "old")) for r in rounds]),  # > 1: new is faster
        "cpu_per_token_ratio": _spread([_ratio(cpu(r, "new"), cpu(r, "old")) for r in rounds]),  # < 1: cheaper
    }
    return out


def _table(rounds: list[dict], summary: dict) -> str:
    lines = [f"{'round':>5} {'order':>8} | {'TTFT p50 old':>12} {'new':>8} {'new/old':>7} | "
             f"{'tok/s old':>9} {'new':>7} {'new/old':>7} | errors old/new"]

    def num(x: float | None, scale: float, width: int, prec: int, unit: str = "") -> str:
        return f"{'-' if x is None else f'{x * scale:.{prec}f}{unit}':>{width}}"

    for r in rounds:
        o, n = r["results"]["old"], r["results"]["new"]
        errs = [sum(x[k]["errors"] for k in ("ttft_c1", "tput_c16")) for x in (o, n)]
        t_old, t_new = o["ttft_c1"]["ttft_p50_s"], n["ttft_c1"]["ttft_p50_s"]
        p_old, p_new = o["tput_c16"]["output_tokens_per_s"], n["tput_c16"]["output_tokens_per_s"]
        lines.append(
            f"{r['round']:>5} {','.join(r['order']):>8} | {num(t_old, 1000, 12, 1, 'ms')} {num(t_new, 1000, 8, 1, 'ms')} "
            f"{num(_ratio(t_new, t_old), 1, 7, 3)} | {num(p_old, 1, 9, 0)} {num(p_new, 1, 7, 0)} "
            f"{num(_ratio(p_new, p_old), 1, 7, 3)} | {errs[0]}/{errs[1]}")
    ab = summary["new_vs_old"]

    def fmt(s: dict | None) -> str:
        return "-" if s is None else f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}, n={s['n']})"

    lines += [f"new/old TTFT p50 (c=1): {fmt(ab['ttft_p50_ratio'])}",
              f"new/old tok/s (c={rounds[0]['concurrency']}): {fmt(ab['tput_ratio'])}",
              f"new/old gateway CPU per token: {fmt(ab['cpu_per_token_ratio'])}",
              f"errors: old {summary['old']['errors']}, new {summary['new']['errors']}"]
    return "\n".join(lines)


def _on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=DEFAULT_OLD, help=f"git revision of the old gateway (default {DEFAULT_OLD})")
    p.add_argument("--new", help="git revision of the new gateway (default: this working tree, uncommitted "
                   "changes included)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--ttft-requests", type=int, default=32)
    p.add_argument("--tput-requests", type=int, default=192)
    p.add_argument("--concurrency", type=int, default=16, help="concurrency of the throughput phase")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--warmup-requests", type=int, default=16)
    p.add_argument("--config", help="owc config whose first model is the engine (default: embedded)")
    p.add_argument("--out", default="loadtests/results/gateway-ab.json")
    args = p.parse_args(argv)

    old_rev = _git("rev-parse", "--verify", f"{args.old}^{{commit}}")
    new_rev = _git("rev-parse", "--verify", f"{args.new}^{{commit}}") if args.new else None
    new_tree = {"head": new_rev, "dirty": False, "asked": args.new} if new_rev else _new_tree()
    cfg = load_config(args.config)
    model, mcfg = next(iter(cfg.models.items()))
    LOG_DIR.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="owc-gateway-ab-"))
    worktrees = {"old": (tmp / "old", old_rev), **({"new": (tmp / "new", new_rev)} if new_rev else {})}
    trees = {"old": tmp / "old", "new": tmp / "new" if new_rev else REPO}
    procs: list[ServerProcess] = []
    rounds: list[dict] = []
    load_before = os.getloadavg()
    try:
        for path, rev in worktrees.values():
            _git("worktree", "add", "--detach", str(path), rev)
        imported = {side: _check_imports(tree) for side, tree in trees.items()}
        print(f"old: {imported['old']}\nnew: {imported['new']}", file=sys.stderr)
        print(f"starting vLLM ({model}) …", file=sys.stderr)
        engine = start_ready(procs, ServerProcess(vllm_launcher(model, mcfg, cfg.model_cache_dir),
                                             log_path=LOG_DIR / "engine.log"), 600)
        gateways = {side: start_ready(procs, _gateway(trees[side], side, model, engine.url), 60) for side in SIDES}
        for side, gw in gateways.items():  # warm-up, not recorded
            asyncio.run(run_closed_loop(gw.url, model, requests=args.warmup_requests, concurrency=4,
                                        max_tokens=args.max_tokens, target=side))
        doc = {
            "benchmark": "gateway A/B (old revision vs working tree)",
            "command": "python -m loadtests.gateway_ab " + " ".join(argv if argv is not None else sys.argv[1:]),
            "created_unix": int(time.time()),
            "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "loadavg_1_5_15_before": list(load_before)},
            "old": {"rev": old_rev, "asked": args.old, "cluster_imported_from": imported["old"]},
            "new": {**new_tree, "cluster_imported_from": imported["new"]},
            "model": model,
            "engine": mcfg.model_dump(mode="json"),
            "settings": {"rounds": args.rounds, "ttft_requests": args.ttft_requests,
                         "tput_requests": args.tput_requests, "max_tokens": args.max_tokens,
                         "ttft_concurrency": 1, "tput_concurrency": args.concurrency,
                         "warmup_requests": args.warmup_requests, "warmup_concurrency": 4,
                         "order": "alternating: old,new in odd rounds, new,old in even rounds"},
        }
        for r in range(1, args.rounds + 1):
            order = list(SIDES) if r % 2 else list(reversed(SIDES))
            results: dict[str, dict] = {}
            for side in order:
                gw = gateways[side]
                before = cpu_seconds(gw.pid)
                results[side] = asyncio.run(_measure(gw.url, model, args, side))
                tokens = results[side]["tput_c16"]["output_tokens"] + results[side]["ttft_c1"]["output_tokens"]
                results[side]["cpu_s_per_1k_tokens"] = 1000 * (cpu_seconds(gw.pid) - before) / max(tokens, 1)
                print(f"round {r}/{args.rounds} {side}: ttft_p50={results[side]['ttft_c1']['ttft_p50_s'] * 1000:.1f}ms "
                      f"tok/s={results[side]['tput_c16']['output_tokens_per_s']:.0f}", file=sys.stderr)
            rounds.append({"round": r, "order": order, "concurrency": args.concurrency, "results": results})
        summary = summarise(rounds)
        doc["machine"]["loadavg_1_5_15_after"] = list(os.getloadavg())
        doc["summary"] = summary
        doc["rounds"] = rounds
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(_table(rounds, summary))
        print(f"raw results: {out}", file=sys.stderr)
        return 0
    finally:
        # A second Ctrl-C must not leave processes or the worktree behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in reversed(procs):
            proc.stop(grace_s=30)
        for path, _rev in worktrees.values():
            if path.exists():
                r = subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO,
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"could not remove the worktree {path}: {r.stderr.strip()}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
