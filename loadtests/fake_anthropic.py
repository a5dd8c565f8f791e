"""The fake engine's Anthropic Messages API, as vLLM 0.32 serves it: `POST /v1/messages`
(a thinking block and a text block; streamed as vLLM's named events) and
`POST /v1/messages/count_tokens`; errors in vLLM's shapes (an unknown model: its Anthropic
error with type `NotFoundError`; a body it cannot take: its OpenAI-shaped 400)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

from aiohttp import web
from prometheus_client import Counter

from cluster.engine.guard import ENGINE_KEY_ENV


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


def _bad(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "Bad Request", "param": None, "code": 400}},
                             status=400)


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def add_anthropic_routes(app: web.Application, engine) -> None:
    """Serve the Messages API for ``engine`` (a loadtests.fake_engine.FakeEngine)."""
    # A client's credential reaching the engine: an x-api-key, or an Authorization header on an
    # engine that expects none (a keyed engine's guard refuses any but its own key).
    leaked = Counter("owc_fake_client_credentials", "Messages API requests that carried a client's credential.",
                     registry=engine.registry)
    keyless = not os.environ.get(ENGINE_KEY_ENV)

    async def body_of(request: web.Request) -> dict | web.Response:
        engine.served.inc()
        if "x-api-key" in request.headers or (keyless and "Authorization" in request.headers):
            leaked.inc()
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _bad("JSON decode error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _bad("messages: Field required")
        if body.get("model") != engine.model:
            return _error(404, "NotFoundError", f"The model `{body.get('model')}` does not exist.")
        fail = (body.get("metadata") or {}).get("fake_status") if isinstance(body.get("metadata"), dict) else None
        if isinstance(fail, int) and 400 <= fail < 600:  # the engine failing as asked (tests)
            return _error(fail, "InternalServerError" if fail >= 500 else "BadRequestError", f"failed with {fail}")
        return body

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        if isinstance(body, web.Response):
            return body
        n_out = body.get("max_tokens")
        if not isinstance(n_out, int) or isinstance(n_out, bool) or n_out < 1:
            return _bad("max_tokens: Field required (a positive integer)")
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            # vLLM 0.32 passes the budget on as thinking_token_budget, which an engine without a
            # reasoning_config refuses (gpt-oss's reasoning parser sets none up by itself).
            return _bad("thinking_token_budget is set but reasoning_config is not configured. Please set "
                        "--reasoning-parser and/or --reasoning-config to use thinking_token_budget.")
        n_out = min(n_out, engine.default_max_tokens)
        n_in = max(1, len(json.dumps(body["messages"]).split()))
        usage = {"input_tokens": n_in, "output_tokens": n_out}
        words = [f" tok{i}" for i in range(n_out)]
        await asyncio.sleep(engine.ttft_s)
        msg = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "model": engine.model,
               "content": [{"type": "thinking", "thinking": "hm", "signature": "sig"},
                           {"type": "text", "text": "".join(words)}], "stop_reason": "max_tokens", "usage": usage}
        if not body.get("stream"):
            return web.json_response(msg)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = {**msg, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 0}}
        await resp.write(_event("message_start", {"type": "message_start", "message": start}))
        blocks = [({"type": "thinking", "thinking": ""}, [{"type": "thinking_delta", "thinking": "hm"}]),
                  ({"type": "text", "text": ""}, [{"type": "text_delta", "text": w} for w in words])]
        for index, (block, deltas) in enumerate(blocks):
            await resp.write(_event("content_block_start", {"type": "content_block_start", "index": index,
                                                            "content_block": block}))
            for delta in deltas:
                await asyncio.sleep(engine.itl_s)
                if engine.die_after_tokens and engine._tokens_served >= engine.die_after_tokens:
                    os._exit(1)  # an engine killed mid-stream (--die-after-tokens)
                engine._tokens_served += 1
                await resp.write(_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                "delta": delta}))
            await resp.write(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        await resp.write(_event("message_delta", {"type": "message_delta", "usage": usage,
                                                  "delta": {"stop_reason": "max_tokens", "stop_sequence": None}}))
        await resp.write(_event("message_stop", {"type": "message_stop"}))
        await resp.write_eof()
        return resp

    async def count_tokens(request: web.Request) -> web.Response:
        body = await body_of(request)
        if isinstance(body, web.Response):
            return body
        n_in = max(1, len(json.dumps([body.get("system"), body["messages"], body.get("tools")]).split()))
        return web.json_response({"input_tokens": n_in})

    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
