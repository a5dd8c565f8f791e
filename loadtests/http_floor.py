"""The gateway's HTTP floor (loadtests.per_request): the same server (uvicorn, httptools,
uvloop), the same engine client and the same direct stream writes as an owc gateway process,
and nothing else — no auth, validation, routing, limits, metrics or logs. What a request
costs here is what any gateway built on this stack pays before its own work.

    python -m loadtests.http_floor PORT ENGINE_PORT
"""

from __future__ import annotations

import sys

import uvicorn

from cluster.gateway.edge.client_writer import client_writer
from cluster.gateway.upstream.engine_client import EngineClient


def app_for(engine_port: int):
    client = EngineClient(connect_timeout_s=5)
    engine = ("127.0.0.1", engine_port)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        resp = await client.post(*engine, scope["path"], body, {"Content-Type": "application/json"})
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(b"content-type", b"text/event-stream")]})
        writer = client_writer(send)
        async for chunk in resp.chunks():
            writer.write(chunk)
        resp.release()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


if __name__ == "__main__":
    uvicorn.run(app_for(int(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
                access_log=False, log_level="warning")
