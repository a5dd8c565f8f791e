"""What the gateways' stats scrapes cost an engine, by number of gateway processes, with the
scrape shared through Redis (gateway.routing_stats.share_across_gateways) and without.

    python -m loadtests.scrape_load --rounds 3 --window 30 --out loadtests/results/scrape-load.json

One vLLM OpenAI server (the embedded default's model and engine settings, as loadtests.overhead
starts it) and one local redis-server; no traffic. First one /metrics render is timed from a
client (wall ms) and by the engine's own CPU time over ``--renders`` back-to-back renders, and
the same for the filtered read the gateways make (only routing's families). Then
each round measures, for every mode (shared, per-process; the order alternates by round) and N
in ``--gateways``, ``--window`` seconds of the engine process's CPU time (psutil, process and
children) with N gateway processes (`python -m cluster.gateway.main --upstream`) in front of
it, and once per round with none (the idle engine). Gateways are started for the largest N and
stopped down to each smaller one (a settle time after each change). /metrics requests are the
gateways' own count of the rounds they scraped (owc_routing_stats_rounds_total{source="scraped"}
on each process's metrics port; one engine, so one request each): vLLM does not count
requests to its /metrics, and owc starts it without an access log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

import httpx
import psutil

from cluster.bench.stack import LOG_DIR, start_ready
from cluster.config.loader import load_config
from cluster.engine.launcher import vllm_launcher
from cluster.gateway.upstream.stats_poller import FILTERED_METRICS
from cluster.process import Command, ServerProcess, free_port
from cluster.tenancy.local_redis import LocalRedis
from loadtests.overhead import _spread, cpu_seconds

MODES = ("shared", "per-process")


def time_renders(url: str, pid: int, n: int, path: str = "/metrics") -> dict:
    """``n`` sequential GETs of ``path``: each one's wall ms, and the engine's CPU ms per render."""
    walls = []
    with httpx.Client(timeout=10) as c:
        c.get(url + path).raise_for_status()
        size = len(c.get(url + path).content)
        cpu0 = cpu_seconds(pid)
        for _ in range(n):
            t0 = time.perf_counter()
            c.get(url + path).raise_for_status()
            walls.append((time.perf_counter() - t0) * 1000)
        cpu = cpu_seconds(pid) - cpu0
    return {"renders": n, "wall_ms": _spread(walls), "engine_cpu_ms_per_render": 1000 * cpu / n, "bytes": size,
            "path": path}


def gateway_config(model: str, redis_url: str, shared: bool) -> Path:
    path = LOG_DIR / f"scrape-load-{'shared' if shared else 'local'}.json"
    path.write_text(json.dumps({
        "models": {model: {"source": "external"}},
        "gateway": {"fair_sharing": {"store_url": redis_url}, "routing_stats": {"share_across_gateways": shared}},
    }))
    return path


class Gateways:
    """Gateway processes in front of the engine, each with its own metrics port."""

    def __init__(self, model: str, engine_url: str, config: Path):
        self._argv = [sys.executable, "-m", "cluster.gateway.main", "--upstream", f"{model}={engine_url}",
                      "--config", str(config)]
        self.procs: list[tuple[ServerProcess, int]] = []

    def start(self, n: int) -> None:
        new = []
        for i in range(n):
            mport = free_port()
            p = ServerProcess(Command(self._argv + ["--port", "{port}", "--metrics-port", str(mport)]),
                              log_path=LOG_DIR / f"scrape-load-gateway-{i}.log")
            self.procs.append((p, mport))
            new.append(p)
            p.start()

        async def ready():
            await asyncio.gather(*(p.wait_ready(120) for p in new))
        asyncio.run(ready())

    def keep(self, n: int) -> None:
        while len(self.procs) > n:
            p, _ = self.procs.pop()
            p.stop(grace_s=10)

    def scraped(self) -> tuple[float, dict[str, int]]:
        """Rounds scraped so far over the live processes, and how many are in each mode."""
        total, modes = 0.0, {}
        for _, mport in self.procs:
            text = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
            for line in text.splitlines():
                if line.startswith('owc_routing_stats_rounds_total{source="scraped"}'):
                    total += float(line.rsplit(" ", 1)[1])
                elif line.startswith("owc_routing_stats_mode{") and line.endswith(" 1.0"):
                    m = line.split('"')[1]
                    modes[m] = modes.get(m, 0) + 1
        return total, modes


def window(pid: int, gateways: Gateways | None, seconds: float) -> dict:
    r0 = gateways.scraped()[0] if gateways else 0.0
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    r1, modes = gateways.scraped() if gateways else (0.0, {})
    return {"engine_cpu_s": c1 - c0, "seconds": t1 - t0, "metrics_requests": r1 - r0,
            "metrics_per_s": (r1 - r0) / (t1 - t0), "modes": modes}


def table(doc: dict) -> str:
    """The docs' table (docs/benchmarks.md), from the JSON."""
    def cell(s: dict, f: str) -> str:
        return f"{s['median']:{f}} ({s['min']:{f}}–{s['max']:{f}})"
    idle = doc["idle_engine_cpu_per_s"]
    r = doc["render"]
    rows = ["| gateway processes | scrape | /metrics requests per s | engine CPU (cores) | above the idle engine |",
            "|---|---|---|---|---|"]
    for s in sorted(doc["summary"].values(), key=lambda s: (s["mode"] != "shared", s["gateways"])):
        cpu = s["engine_cpu_per_s"]
        rows.append(f"| {s['gateways']} | {s['mode']} | {cell(s['metrics_per_s'], '.1f')} | {cell(cpu, '.3f')} | "
                    f"{cpu['median'] - idle['median']:+.3f} |")
    st = doc["settings"]
    return "\n".join(rows) + (
        f"\n\nIdle engine (no gateway): {cell(idle, '.3f')} cores. One /metrics render "
        f"({r['bytes']:,} bytes): {r['wall_ms']['median']:.1f} ms wall at the client (median of {r['renders']}), "
        f"{r['engine_cpu_ms_per_render']:.1f} ms of the engine's CPU" + (
            f"; the gateways' filtered read (`/metrics/?name[]=…`, {f['path'].count('name')} families, "
            f"{f['bytes']:,} bytes): {f['wall_ms']['median']:.1f} ms "
            f"wall, {f['engine_cpu_ms_per_render']:.2f} ms of the engine's CPU" if (f := doc.get("filtered_render")) else ""
        ) + f". {st['rounds']} interleaved rounds of "
        f"{st['window_s']:g} s per point, median (min–max); period {doc['period_s']:g} s; {doc['date']}; "
        f"`{doc['command']}`.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="owc config of the engine (default: the embedded default)")
    ap.add_argument("--gateways", default="1,4,8", help="gateway process counts, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=float, default=30.0, help="seconds measured per point")
    ap.add_argument("--settle", type=float, default=4.0, help="seconds after starting or stopping gateways")
    ap.add_argument("--renders", type=int, default=200, help="back-to-back /metrics renders timed")
    ap.add_argument("--out", help="write the raw JSON here")
    ap.add_argument("--table", metavar="JSON", help="print the docs' table of a run's JSON and exit")
    a = ap.parse_args()
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return
    counts = sorted({int(x) for x in a.gateways.split(",")}, reverse=True)
    cfg = load_config(a.config)
    model, mcfg = next(iter(cfg.models.items()))
    LOG_DIR.mkdir(exist_ok=True)
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    redis = LocalRedis.ensure(redis_url)
    procs: list[ServerProcess] = []
    points: list[dict] = []
    try:
        print(f"starting vLLM ({model}) …", file=sys.stderr)
        engine = start_ready(procs, ServerProcess(vllm_launcher(model, mcfg, cfg.model_cache_dir),
                                                  log_path=LOG_DIR / "scrape-load-engine.log"), 600)
        time.sleep(a.settle)
        render = time_renders(engine.url, engine.pid, a.renders)
        print(f"render: {render['wall_ms']['median']:.2f} ms wall, {render['engine_cpu_ms_per_render']:.2f} ms engine CPU",
              file=sys.stderr)
        filtered = time_renders(engine.url, engine.pid, a.renders, FILTERED_METRICS)
        print(f"filtered render: {filtered['wall_ms']['median']:.2f} ms wall, "
              f"{filtered['engine_cpu_ms_per_render']:.2f} ms engine CPU", file=sys.stderr)
        for rnd in range(a.rounds):
            order = MODES if rnd % 2 == 0 else MODES[::-1]
            for i, mode in enumerate(order):
                if i == 1:  # the idle engine, between the modes
                    time.sleep(a.settle)
                    points.append({"round": rnd, "mode": "none", "gateways": 0, **window(engine.pid, None, a.window)})
                    print(f"round {rnd} idle: {points[-1]['engine_cpu_s']:.2f} CPU-s", file=sys.stderr)
                gws = Gateways(model, engine.url, gateway_config(model, redis_url, mode == "shared"))
                try:
                    gws.start(counts[0])
                    for n in counts:
                        gws.keep(n)
                        time.sleep(a.settle)
                        p = {"round": rnd, "mode": mode, "gateways": n, **window(engine.pid, gws, a.window)}
                        points.append(p)
                        print(f"round {rnd} {mode} N={n}: {p['engine_cpu_s']:.2f} CPU-s, {p['metrics_per_s']:.1f} "
                              f"/metrics per s, modes {p['modes']}", file=sys.stderr)
                finally:
                    gws.keep(0)
    finally:
        for proc in reversed(procs):
            proc.stop(grace_s=30)
        redis.stop()

    idle = [p["engine_cpu_s"] / p["seconds"] for p in points if p["mode"] == "none"]
    summary = {}
    for mode in MODES:
        for n in counts:
            ps = [p for p in points if p["mode"] == mode and p["gateways"] == n]
            summary[f"{mode} N={n}"] = {
                "mode": mode, "gateways": n,
                "engine_cpu_per_s": _spread([p["engine_cpu_s"] / p["seconds"] for p in ps]),
                "metrics_per_s": _spread([p["metrics_per_s"] for p in ps]),
            }
    result = {
        "benchmark": "scrape_load",
        "command": " ".join(["python -m loadtests.scrape_load", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"platform": platform.platform(), "cpus": psutil.cpu_count()},
        "model": model, "engine_settings": mcfg.model_dump(mode="json"),
        "period_s": cfg.gateway.routing_stats.period_s,
        "settings": {"rounds": a.rounds, "window_s": a.window, "settle_s": a.settle, "gateways": counts},
        "render": render,
        "filtered_render": filtered,
        "idle_engine_cpu_per_s": _spread(idle),
        "summary": summary,
        "points": points,
    }
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
