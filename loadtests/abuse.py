"""Hostile clients against a gateway, from their own process (so that their work does not
share the measuring client's event loop):

    python -m loadtests.abuse --url http://127.0.0.1:8000 --mode slowloris --connections 1000 --hold-s 20

Modes: ``slowloris`` (request headers at 1 byte/s, never finished), ``idle`` (connect,
send nothing), ``body`` (complete headers with a valid key, then the body at 1 byte/s),
``big-headers`` (``--header-bytes`` of one header, never finished). Each connection is
held until the server closes it or ``--hold-s`` passes. Prints one JSON line: how many
were opened, closed by the server, the seconds each lasted (max, median) and the status
lines the server answered with."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
from urllib.parse import urlsplit


async def _read_status(reader: asyncio.StreamReader) -> str | None:
    try:
        line = await reader.readline()
    except (ConnectionError, OSError):
        return None
    return line.decode("latin-1").strip() or None


async def _trickle(writer: asyncio.StreamWriter, data: bytes, answered: asyncio.Future, end: float) -> None:
    """``data`` at one byte per second, until the server answers or ``end`` passes."""
    for byte in data:
        if answered.done() or time.monotonic() > end:
            return
        writer.write(bytes([byte]))
        await asyncio.wait({answered}, timeout=1.0)


async def _one(host: str, port: int, mode: str, args: argparse.Namespace, out: dict, *,
               connecting: asyncio.Semaphore) -> None:
    try:
        async with connecting:
            reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        out["connect_failed"] += 1
        return
    out["opened"] += 1
    t0 = time.monotonic()
    status_task = asyncio.ensure_future(_read_status(reader))
    end = t0 + args.hold_s
    try:
        if mode == "slowloris":
            await _trickle(writer, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000,
                           status_task, end)
        elif mode == "body":
            body = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 1000 + b'"}]}'
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + args.key.encode() + b"\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            await _trickle(writer, body, status_task, end)
        elif mode == "big-headers":
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"b" * 65536
            sent = 0
            while sent < args.header_bytes and not status_task.done():
                writer.write(chunk[: args.header_bytes - sent])
                sent += min(len(chunk), args.header_bytes - sent)
                await writer.drain()
        await asyncio.wait({status_task}, timeout=max(0.0, end - time.monotonic()))
    except (ConnectionError, OSError):  # reset while sending: the server closed it; read what it said
        await asyncio.wait({status_task}, timeout=2.0)
    if status_task.done():
        status = status_task.result()
        out["closed_by_server"] += 1
        out["lifetimes"].append(time.monotonic() - t0)
        if status:
            out["statuses"][status] = out["statuses"].get(status, 0) + 1
    else:
        status_task.cancel()
    writer.close()


async def attack(url: str, mode: str, args: argparse.Namespace) -> dict:
    parts = urlsplit(url)
    out = {"mode": mode, "opened": 0, "connect_failed": 0, "closed_by_server": 0, "lifetimes": [], "statuses": {}}
    connecting = asyncio.Semaphore(200)  # connection attempts in progress at once
    await asyncio.gather(*(_one(parts.hostname, parts.port, mode, args, out, connecting=connecting)
                           for _ in range(args.connections)))
    lifetimes = out.pop("lifetimes")
    out["lifetime_max_s"] = round(max(lifetimes), 3) if lifetimes else None
    out["lifetime_median_s"] = round(statistics.median(lifetimes), 3) if lifetimes else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="loadtests.abuse")
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=["slowloris", "idle", "body", "big-headers"], required=True)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--hold-s", type=float, default=30.0)
    p.add_argument("--key", default="")
    p.add_argument("--header-bytes", type=int, default=1 << 20)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(attack(args.url, args.mode, args))), flush=True)


if __name__ == "__main__":
    main()
