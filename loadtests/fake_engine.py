"""A fake OpenAI engine: vLLM's wire format and metric names, configurable TTFT and
inter-token latency, a bounded batch (extra requests wait, as in vLLM), no model.

For fast tests and for gateway load tests at rates a CPU model cannot serve. Injectable as
an engine replica through `fake_launcher` (same seam as the vLLM launcher).

    python -m loadtests.fake_engine --port 8101 --model m --ttft-ms 20 --itl-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cluster.engine.guard import ENGINE_KEY_ENV, authorized, bearer, identity_headers
from cluster.engine.responses_store import store_env
from loadtests.fake_anthropic import add_anthropic_routes
from loadtests.fake_responses import FakeResponsesStore, context_tokens, tool_outputs
from cluster.process import Command, watch_parent

if TYPE_CHECKING:  # the engine process itself never reads an owc config: not imported there
    from cluster.config.schema import ModelConfig

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class FakeEngine:
    def __init__(self, *, model: str, ttft_s: float, itl_s: float, max_num_seqs: int, default_max_tokens: int = 16,
                 adapters: tuple[str, ...] = (), die_after_tokens: int = 0, die_in_usage: bool = False,
                 error_after_tokens: int = 0, auto_tool_choice: bool = True,
                 lora_ttft_s: dict[str, float] | None = None, done_linger_s: float = 0.0):
        self.model = model
        self.done_linger_s = done_linger_s  # a pause between a stream's [DONE] and its end (a busy engine's)
        self.lora_ttft_s = dict(lora_ttft_s or {})  # extra TTFT of a request naming this LoRA (a slow retrained adapter)
        # False: as vLLM started without --enable-auto-tool-choice (tool_choice "auto" is a 400)
        self.auto_tool_choice = auto_tool_choice
        self.die_after_tokens = die_after_tokens  # exit (as if SIGKILLed) after streaming this many tokens
        # vLLM when its engine core dies: an error event, [DONE], a cleanly ended stream
        self.error_after_tokens = error_after_tokens
        self.die_in_usage = die_in_usage  # exit half-way through a stream's usage event (after its last token)
        self._tokens_served = 0
        self.adapters = tuple(adapters)  # LoRA adapters "loaded": listed by /v1/models, accepted as model names
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.default_max_tokens = default_max_tokens
        self._slots = asyncio.Semaphore(max_num_seqs)
        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.running = Gauge("vllm:num_requests_running", "Requests in the batch.", labels, registry=self.registry)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting.", labels, registry=self.registry)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache use (0-1).", labels, registry=self.registry)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens.", labels, registry=self.registry)
        self.gen_tokens = Counter("vllm:generation_tokens", "Generated tokens.", labels, registry=self.registry)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "TTFT.", labels, buckets=TTFT_BUCKETS, registry=self.registry
        )
        self.aborted = Counter("owc_fake_aborted_requests", "Requests aborted by a client disconnect.", registry=self.registry)
        self.denied = Counter("owc_fake_denied_requests", "Requests refused without the engine credential.",
                              registry=self.registry)
        self.served = Counter("owc_fake_generation_requests", "Generation requests that reached the engine.",
                              registry=self.registry)
        self._labels = (model, "0")
        self.max_num_seqs = max_num_seqs
        self.store = FakeResponsesStore()  # vLLM's: on with VLLM_ENABLE_RESPONSES_API_STORE=1

    def _set_load(self, delta_running: int = 0, delta_waiting: int = 0) -> None:
        self.running.labels(*self._labels).inc(delta_running)
        self.waiting.labels(*self._labels).inc(delta_waiting)
        running = self.running.labels(*self._labels)._value.get()
        self.kv.labels(*self._labels).set(min(1.0, running / max(1, self.max_num_seqs)))

    def app(self) -> web.Application:
        middlewares = []
        key = os.environ.get(ENGINE_KEY_ENV)
        if key:  # the same door as a vLLM engine behind EngineGuard
            expected = bearer(key)

            @web.middleware
            async def guard(request: web.Request, handler):
                auth = request.headers.get("Authorization")
                if not authorized(request.path, auth.encode("latin-1") if auth else None, expected):
                    self.denied.inc()
                    return web.json_response({"error": {"message": "missing or wrong engine credential",
                                                        "type": "authentication_error", "code": "invalid_engine_key"}},
                                             status=401)
                return await handler(request)

            middlewares.append(guard)
        app = web.Application(client_max_size=8 << 20, middlewares=middlewares)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/metrics/", self.metrics)  # vLLM's prometheus_client mount (the filtered scrape)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/load_lora_adapter", self.load_lora)
        app.router.add_post("/v1/unload_lora_adapter", self.unload_lora)
        add_anthropic_routes(app, self)  # /v1/messages, /v1/messages/count_tokens
        self.store.add_routes(app)  # GET /v1/responses/{id}, POST .../cancel
        return app

    async def load_lora(self, request: web.Request) -> web.Response:
        """vLLM's run-time load: a path containing "fail" is not found (404), one containing
        "broken" fails to load (500, as vLLM answers an adapter whose files it cannot read)."""
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path", "")
        if name in self.adapters:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        if "fail" in path:
            return _error(404, f"Loading lora {name} failed: No adapter found for {path}")
        if "broken" in path:
            return _error(500, f"Error while reading the adapter's weights from {path}")
        self.adapters += (name,)
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(self, request: web.Request) -> web.Response:
        name = (await request.json()).get("lora_name")
        if name not in self.adapters:
            return _error(404, f"The lora adapter '{name}' cannot be found.")
        self.adapters = tuple(a for a in self.adapters if a != name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def health(self, _: web.Request) -> web.Response:
        # the model and version its engine replica set (as EngineGuard names an owc-started vLLM)
        return web.Response(status=200, headers={k.decode(): v.decode() for k, v in identity_headers(os.environ)})

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")

    async def models(self, _: web.Request) -> web.Response:
        cards = [{"id": self.model, "object": "model", "owned_by": "fake", "parent": None}]
        cards += [{"id": a, "object": "model", "owned_by": "fake", "parent": self.model} for a in self.adapters]
        return web.json_response({"object": "list", "data": cards})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False, responses=True)

    async def _generate(self, request: web.Request, *, chat: bool, responses: bool = False) -> web.StreamResponse:
        self.served.inc()
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "invalid JSON")
        if body.get("model") != self.model and body.get("model") not in self.adapters:
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        effort = body.get("reasoning_effort") if chat else reasoning.get("effort")
        if effort is not None and effort not in REASONING_EFFORTS:  # vLLM's request schema
            return _error(400, f"Input should be one of {', '.join(REASONING_EFFORTS)}")
        if not self.auto_tool_choice and body.get("tools") and body.get("tool_choice", "auto") == "auto":
            return _error(400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
        n_out = int(body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
                    or self.default_max_tokens)
        raw = body.get("prompt")
        # A prompt of token ids (a resumed stream's continuation): prompt ids are 1..n, the
        # k-th generated token is 1000+k (" tok{k}"), so a continuation picks up where the
        # ids it is given end, as greedy decoding on a real model would.
        ids_prompt = not chat and not responses and isinstance(raw, list) and all(isinstance(t, int) for t in raw)
        start = sum(1 for t in raw if t >= 1000) if ids_prompt else 0
        prompt = json.dumps(body.get("messages")) if chat else json.dumps(body.get("input")) if responses \
            else str(raw)
        n_in = len(raw) - start if ids_prompt else max(1, len(prompt.split()))
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        rid = ("chatcmpl-" if chat else "cmpl-") + rid
        stream = bool(body.get("stream"))
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        started = time.monotonic()
        self._set_load(delta_waiting=1)
        admitted = False
        try:
            async with self._slots:
                admitted = True
                self._set_load(delta_running=1, delta_waiting=-1)
                try:
                    if responses:
                        return await self._respond(request, body, n_in, n_out, started)
                    return await self._run(request, chat, rid, n_in, n_out, stream, body, usage, started, start)
                finally:
                    self._set_load(delta_running=-1)
        except (asyncio.CancelledError, ConnectionResetError):
            self.aborted.inc()
            raise
        finally:
            if not admitted:
                self._set_load(delta_waiting=-1)

    async def _run(self, request, chat, rid, n_in, n_out, stream, body, usage, started, start=0):
        self.prompt_tokens.labels(*self._labels).inc(n_in + start)
        await asyncio.sleep(self.ttft_s + self.lora_ttft_s.get(body.get("model"), 0.0))
        model = body["model"] if body.get("model") in self.adapters else self.model  # vLLM names the LoRA served
        self.ttft.labels(*self._labels).observe(time.monotonic() - started)
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not stream:
            await asyncio.sleep(self.itl_s * max(0, n_out - 1))
            self.gen_tokens.labels(*self._labels).inc(n_out)
            text = " ".join(f"tok{i}" for i in range(start, start + n_out))
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                if chat
                else {"index": 0, "text": text, "finish_reason": "length"}
            )
            return web.json_response({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage})
        ids = bool(body.get("return_token_ids"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"
        if chat:  # vLLM's first chat event: the role (and the prompt's ids when asked for)
            first = {"id": rid, "object": chunk_obj, "created": created, "model": model,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            if ids:
                first["prompt_token_ids"] = list(range(1, n_in + 1))
            await resp.write(_sse(first))
        for i in range(start, start + n_out):
            if i > start:
                await asyncio.sleep(self.itl_s)
            if self.die_after_tokens and self._tokens_served >= self.die_after_tokens:
                os._exit(1)  # an engine killed mid-stream: every open connection breaks
            if self.error_after_tokens and self._tokens_served >= self.error_after_tokens:
                await resp.write(_sse({"error": {"message": "EngineCore encountered an issue. See stack trace (above) "
                                                            "for the root cause.", "type": "InternalServerError",
                                                 "param": None, "code": 500}}))
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                return resp
            self._tokens_served += 1
            delta = {"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None} if chat else {"index": 0, "text": f" tok{i}", "finish_reason": None}
            if ids:
                delta["token_ids"] = [1000 + i]
                if not chat and i == start:
                    delta["prompt_token_ids"] = list(range(1, n_in + 1)) + [1000 + k for k in range(start)]
            if i == start + n_out - 1:
                delta["finish_reason"] = "length"
            await resp.write(_sse({"id": rid, "object": chunk_obj, "created": created, "model": model, "choices": [delta]}))
            self.gen_tokens.labels(*self._labels).inc()
        if (body.get("stream_options") or {}).get("include_usage"):
            event = _sse({"id": rid, "object": chunk_obj, "created": created, "model": model, "choices": [],
                          "usage": {**usage, "prompt_tokens": n_in + start, "total_tokens": n_in + start + n_out}})
            if self.die_in_usage:
                await resp.write(event[:len(event) // 2])
                await asyncio.sleep(0.05)  # on the wire first
                os._exit(1)
            await resp.write(event)
        await resp.write(b"data: [DONE]\n\n")
        if self.done_linger_s:
            await asyncio.sleep(self.done_linger_s)
        await resp.write_eof()
        return resp


    async def _respond(self, request, body, n_in, n_out, started):
        """/v1/responses as vLLM serves it: its own `resp_` id (not the X-Request-Id), the
        named events in vLLM's order when streamed, the usage in response.completed; kept in
        its store (loadtests.fake_responses) under the body's `request_id`, as vLLM does."""
        prev = self.store.previous(body)
        if isinstance(prev, web.Response):
            return prev
        n_in += context_tokens(prev)
        self.prompt_tokens.labels(*self._labels).inc(n_in)
        await asyncio.sleep(self.ttft_s)
        self.ttft.labels(*self._labels).observe(time.monotonic() - started)
        n_reason = min(2, n_out - 1) if body.get("reasoning") else 0
        rid = body.get("request_id") or f"resp_{uuid.uuid4().hex}"
        items = _response_items(body, n_reason, n_out - n_reason, quoted=tool_outputs(body, prev))
        usage = {"input_tokens": n_in, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n_out,
                 "output_tokens_details": {"reasoning_tokens": n_reason}, "total_tokens": n_in + n_out}
        shown = [i for i in items if i["type"] != "reasoning" or body.get("include_reasoning", True) is not False]
        final = {"id": rid, "object": "response", "created_at": int(time.time()), "model": self.model,
                 "status": "completed", "output": shown, "usage": usage}
        if not body.get("stream"):
            await asyncio.sleep(self.itl_s * max(0, n_out - 1))
            self.gen_tokens.labels(*self._labels).inc(n_out)
            self.store.keep(body, final)
            return web.json_response(final)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        seq = 0
        for kind, event in _response_events({**final, "status": "in_progress", "output": [], "usage": None}, shown, final):
            if kind == "delta":
                if seq:
                    await asyncio.sleep(self.itl_s)
                self.gen_tokens.labels(*self._labels).inc()
            await resp.write(b"event: %s\ndata: %s\n\n" % (event["type"].encode(), json.dumps(
                {**event, "sequence_number": seq}, separators=(",", ":")).encode()))
            seq += 1
        self.store.keep(body, final)
        await resp.write_eof()
        return resp


def _response_items(body: dict, n_reason: int, n_text: int, quoted: str = "") -> list[dict]:
    """The output items: reasoning (when asked for), then a function call (a named or
    required tool choice) or a message (``quoted``: tool outputs it answers, first)."""
    items = []
    if n_reason:
        items.append({"id": "rs_0", "type": "reasoning", "summary": [],
                      "content": [{"type": "reasoning_text", "text": " think" * n_reason}]})
    choice, tools = body.get("tool_choice"), body.get("tools") or []
    name = choice.get("name") if isinstance(choice, dict) else tools[0].get("name") if choice == "required" and tools else None
    if name:
        items.append({"id": "fc_0", "type": "function_call", "call_id": "call_0", "name": name,
                      "arguments": json.dumps({"n": n_text}), "status": "completed"})
    else:
        items.append({"id": "msg_0", "type": "message", "role": "assistant", "status": "completed", "content": [
            {"type": "output_text", "text": quoted + "".join(f" tok{i}" for i in range(n_text)), "annotations": []}]})
    return items


def _response_events(start: dict, items: list[dict], final: dict):
    """(kind, event) in vLLM's order; kind "delta" marks a token event."""
    yield "meta", {"type": "response.created", "response": start}
    yield "meta", {"type": "response.in_progress", "response": start}
    for index, item in enumerate(items):
        where = {"output_index": index, "item_id": item["id"]}
        if item["type"] == "function_call":
            yield "meta", {"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "arguments": "", "status": "in_progress"}}
            yield "delta", {"type": "response.function_call_arguments.delta", **where, "delta": item["arguments"]}
            yield "meta", {"type": "response.function_call_arguments.done", **where, "arguments": item["arguments"]}
        else:
            text = item["content"][0]["text"]
            kind = "reasoning_text" if item["type"] == "reasoning" else "output_text"
            part = {"type": kind, "text": ""}
            yield "meta", {"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "content": [], "status": "in_progress"}}
            yield "meta", {"type": "response.content_part.added", **where, "content_index": 0, "part": part}
            for piece in text.split(" ")[1:]:
                yield "delta", {"type": f"response.{kind}.delta", **where, "content_index": 0, "delta": " " + piece}
            yield "meta", {"type": f"response.{kind}.done", **where, "content_index": 0, "text": text}
            yield "meta", {"type": "response.content_part.done", **where, "content_index": 0,
                           "part": {**part, "text": text}}
        yield "meta", {"type": "response.output_item.done", "output_index": index, "item": item}
    yield "meta", {"type": "response.completed", "response": final}


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}, status=status)


def fake_launcher(served_name: str, cfg: ModelConfig, cache_dir: str, *, host: str = "127.0.0.1",
                  engine_key: str | None = None) -> Command:
    """Launcher seam: run the fake engine as this model's engine process (guarded like a
    vLLM engine when given the engine key)."""
    opts = {k: str(v) for k, v in cfg.engine_kwargs.items() if k in ("ttft_ms", "itl_ms", "max_num_seqs")}
    argv = [sys.executable, "-m", "loadtests.fake_engine", "--host", host, "--port", "{port}", "--model", served_name,
            "--parent-pid", str(os.getpid())]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", v]
    s = cfg.responses_store  # the same store switch the vLLM launcher sets
    env = {**store_env(s.enabled, s.max_entries, s.ttl_s), **cfg.engine_env}
    if engine_key:
        env[ENGINE_KEY_ENV] = engine_key
    return Command(argv=argv, env=env)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fake")
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=5.0)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--lora", action="append", default=[], help="a LoRA adapter name this engine has loaded")
    p.add_argument("--lora-ttft-ms", action="append", default=[], metavar="NAME=MS",
                   help="extra TTFT of the requests naming this LoRA adapter")
    p.add_argument("--die-after-tokens", type=int, default=0,
                   help="exit abruptly (as if SIGKILLed) after streaming this many tokens in all")
    p.add_argument("--error-after-tokens", type=int, default=0,
                   help="after streaming this many tokens in all, end each stream with vLLM's engine-dead error event")
    p.add_argument("--die-in-usage", action="store_true",
                   help="exit abruptly half-way through writing a stream's usage event")
    p.add_argument("--done-linger-ms", type=float, default=0.0,
                   help="pause between a stream's [DONE] and the end of its response")
    p.add_argument("--no-auto-tool-choice", action="store_true",
                   help='as vLLM without --enable-auto-tool-choice: tool_choice "auto" with tools is a 400')
    a = p.parse_args(argv)
    watch_parent(a.parent_pid)

    async def serve() -> None:
        engine = FakeEngine(model=a.model, ttft_s=a.ttft_ms / 1000, itl_s=a.itl_ms / 1000, max_num_seqs=a.max_num_seqs,
                            adapters=tuple(a.lora), die_after_tokens=a.die_after_tokens,
                            die_in_usage=a.die_in_usage, error_after_tokens=a.error_after_tokens,
                            auto_tool_choice=not a.no_auto_tool_choice, done_linger_s=a.done_linger_ms / 1000,
                            lora_ttft_s={n: float(ms) / 1000 for n, _, ms in (x.rpartition("=") for x in a.lora_ttft_ms)})
        # vLLM aborts a request whose client went away; aiohttp does so only when asked.
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
