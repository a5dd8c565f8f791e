"""The stats poller's reads of an engine (cluster.gateway.upstream.scrape_fetch.EngineFetch)
against a real socket server: the body and status, the engine credential sent, one kept-alive
connection for consecutive scrapes, an engine that refuses (Unreachable), one that never
answers (TimeoutError, its connection dropped) and one that cuts its answer short."""

from __future__ import annotations

import asyncio

import pytest

from cluster.gateway.upstream.scrape_fetch import EngineFetch, Unreachable
from cluster.process import free_port

METRICS = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 2.0\n"


class Engine:
    """Answers each request with ``mode``: ok (200 + METRICS), silent (no answer), cut (a
    Content-Length longer than the body, then the connection closed)."""

    def __init__(self):
        self.mode = "ok"
        self.connections = 0
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                if self.mode == "silent":
                    await asyncio.sleep(10)
                if self.mode == "cut":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                    await writer.drain()
                    break
                status = b"200 OK" if b"/metrics" in head else b"404 Not Found"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(METRICS), METRICS))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def fetches():
    """EngineFetch(**kw), each closed at the test's end."""
    made: list[EngineFetch] = []

    def make(**kw) -> EngineFetch:
        made.append(EngineFetch(**kw))
        return made[-1]

    yield make
    for f in made:
        await f.aclose()


@pytest.fixture
async def engine():
    e = Engine()
    server = await asyncio.start_server(e.handle, "127.0.0.1", 0)
    e.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield e
    server.close()


async def test_reads_status_and_body_on_one_kept_alive_connection(engine, fetches):
    fetch = fetches(timeout_s=1, engine_key="ek")
    assert await fetch.get(engine.url, "/metrics") == (200, METRICS)
    assert await fetch.get(engine.url, "/metrics") == (200, METRICS)
    assert (await fetch.get(engine.url, "/v1/models"))[0] == 404
    assert engine.connections == 1
    assert all(h.startswith(b"GET ") and b"Authorization: Bearer ek" in h for h in engine.heads)


async def test_a_refused_connection_is_unreachable(fetches):
    with pytest.raises(Unreachable):
        await fetches(timeout_s=1).get(f"http://127.0.0.1:{free_port()}", "/metrics")


async def test_a_silent_engine_times_out_and_its_connection_is_dropped(engine, fetches):
    fetch = fetches(timeout_s=0.2)
    engine.mode = "silent"
    with pytest.raises(TimeoutError):
        await fetch.get(engine.url, "/metrics")
    engine.mode = "ok"
    assert await fetch.get(engine.url, "/metrics") == (200, METRICS)
    assert engine.connections == 2  # the timed-out one was not reused


async def test_an_answer_cut_short_is_unreachable(engine, fetches):
    engine.mode = "cut"
    with pytest.raises(Unreachable):
        await fetches(timeout_s=1).get(engine.url, "/metrics")
