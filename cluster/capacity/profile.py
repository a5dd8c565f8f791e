"""Measure an engine profile for the simulator against a real vLLM OpenAI server:

    python -m cluster.capacity.profile --out loadtests/results/engine-profile.json

starts one engine of the config's first model (the embedded default: the CPU demo
model), then measures its start-up time, its prefill rate (TTFT of long prompts minus that
of a short one, one at a time) and its decode step time at batch sizes 1…max_num_seqs
(mean inter-token gap of that many concurrent streams), fitted as base + per_seq × batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import httpx

from cluster.config.loader import load_config
from cluster.engine.launcher import vllm_launcher
from cluster.process import ServerProcess

WORDS = "the cluster serves open weight models to many tenants with low latency and high throughput".split()


async def _stream(session: aiohttp.ClientSession, url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, list[float]]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "temperature": 0}
    t0 = time.perf_counter()
    ttft, gaps, last = None, [], 0.0
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"engine answered {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            now = time.perf_counter()
            if ttft is None:
                ttft = now - t0
            else:
                gaps.append(now - last)
            last = now
    return ttft or 0.0, gaps


async def measure(url: str, model: str, max_num_seqs: int, max_model_len: int) -> dict:
    async with aiohttp.ClientSession() as s:
        await _stream(s, url, model, "warm up", 8)
        short = [(await _stream(s, url, model, "hello", 1))[0] for _ in range(5)]
        words = 600
        while True:  # the longest prompt that fits the context with room to answer
            long_prompt = " ".join(WORDS[i % len(WORDS)] for i in range(words))
            tok = await s.post(f"{url}/tokenize", json={"model": model, "prompt": long_prompt})
            n_tokens = (await tok.json())["count"]
            if n_tokens <= 0.8 * max_model_len:
                break
            words = int(words * 0.8 * max_model_len / n_tokens) - 1
        long = [(await _stream(s, url, model, long_prompt, 1))[0] for _ in range(5)]
        prefill = n_tokens / max(1e-6, statistics.median(long) - statistics.median(short))
        points = []
        for batch in sorted({1, max(1, max_num_seqs // 4), max(1, max_num_seqs // 2), max_num_seqs}):
            runs = await asyncio.gather(*(_stream(s, url, model, f"count {i}", 64) for i in range(batch)))
            points.append((batch, statistics.mean(g for _, gaps in runs for g in gaps)))
    xs, ys = [b for b, _ in points], [g for _, g in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    per_seq = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var) if var else 0.0
    return {"prefill_tokens_per_s": prefill, "decode_step_base_s": max(1e-5, my - per_seq * mx),
            "decode_step_per_seq_s": per_seq, "decode_points": points, "prompt_tokens": n_tokens}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cluster.capacity.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--config")
    p.add_argument("--out", default="loadtests/results/engine-profile.json")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    model, mcfg = next(iter(cfg.models.items()))
    max_num_seqs = int(mcfg.engine_kwargs.get("max_num_seqs", 256))
    proc = ServerProcess(vllm_launcher(model, mcfg, cfg.model_cache_dir), log_path=Path("/tmp/owc-profile-engine.log"))
    t0 = time.perf_counter()
    proc.start()
    try:
        asyncio.run(proc.wait_ready(mcfg.startup_timeout_s))
        startup = time.perf_counter() - t0
        m = asyncio.run(measure(proc.url, model, max_num_seqs, mcfg.max_model_len or 2048))
        info = httpx.get(f"{proc.url}/metrics").text
        blocks = block = 0
        for line in info.splitlines():
            if line.startswith("vllm:cache_config_info{"):
                block = int(line.split('block_size="')[1].split('"')[0])
                blocks = int(float(line.split('num_gpu_blocks="')[1].split('"')[0]))
    finally:
        proc.stop(grace_s=10)
    out = {"max_num_seqs": max_num_seqs, "startup_s": startup, "kv_capacity_tokens": blocks * block, **m,
           "measured": f"{model} ({mcfg.source}) on this machine: `python -m cluster.capacity.profile`"}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
