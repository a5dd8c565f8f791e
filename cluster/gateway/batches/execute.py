"""A batch line sent through the gateway's own admission, as an interactive request is (model
and adapter resolution, allow-lists, caps, tenancy, the fair queue, routing, retries, the access
log), marked as a batch line in the ASGI scope: its tenant is the batch's, it takes only idle
engine slots (cluster.gateway.flowcontrol.batch_class), it is charged to the daily and monthly
quotas only. The answer, whatever its status, is the line's result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson

from cluster.batch.runner import LineAnswer, LineCall
from cluster.gateway.admission.entry import BATCH_LINE

Asgi = Callable[[dict, Callable, Callable], Awaitable[None]]


def line_executor(admission: Asgi, *, on_tokens: Callable[[str, int], None] | None = None):
    """The runner's ``execute`` over ``admission``; ``on_tokens(tenant, tokens)`` per answered line."""

    async def execute(call: LineCall) -> LineAnswer:
        body = orjson.dumps(call.body)
        scope = {"type": "http", "method": "POST", "path": call.url, "raw_path": call.url.encode(),
                 "query_string": b"", "client": None, BATCH_LINE: call,
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        given = False
        never = asyncio.Event()

        async def receive() -> dict:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await never.wait()  # no client to leave: the line ends when its task is cancelled
            return {"type": "http.disconnect"}

        status, chunks = 0, []

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await admission(scope, receive, send)
        raw = b"".join(chunks)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            status = status if status >= 400 else 502
            answer = {"error": {"message": "the engine's answer was not JSON", "type": "server_error",
                                "param": None, "code": "bad_engine_answer"}}
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if on_tokens is not None and isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            on_tokens(call.tenant, usage["total_tokens"])
        return LineAnswer(status or 500, answer, call.request_id)

    return execute
