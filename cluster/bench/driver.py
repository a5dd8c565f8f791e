"""Async OpenAI streaming load driver: TTFT, inter-token latency, end-to-end latency,
output tokens/s; JSON out.

    python -m cluster.bench.driver --url http://127.0.0.1:8000 --model tiny-llama \
        --requests 64 --concurrency 16 --max-tokens 32 --out result.json

TTFT is the time to the first chunk carrying generated text; ITL the gaps between later
text-carrying chunks (a chunk holding several tokens counts as one arrival); output tokens
come from the server's usage (stream_options.include_usage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from collections import Counter
from dataclasses import asdict, dataclass, field

import aiohttp

PROMPTS = [
    "Translate into French: the cluster serves open-weight models.",
    "Résume ce texte en une phrase : le modèle répond en français et en anglais.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Fix the bug: for i in range(len(a)): total += a[i+1]",
    "Summarise the quarterly report in three bullet points.",
    "¿Cuál es la capital de Francia? Responde brevemente.",
    "Erkläre kurz, was ein Tensor ist.",
    "Optimise this SQL query: SELECT * FROM orders WHERE id IN (SELECT order_id FROM items)",
]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must lie in [0, 100]")
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class SSEParser:
    """Incremental `data:` event parser over arbitrary byte chunks."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk.replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n\n", 1)
            data = [line[5:].lstrip() for line in raw.split(b"\n") if line.startswith(b"data:")]
            if data:
                events.append(b"\n".join(data).decode())
        return events


def sse_payloads(chunks: Iterable[bytes]) -> Iterator[str]:
    """The ``data:`` payloads of a stream's byte chunks (``response.iter_bytes()``), split where
    SSE splits them. Not httpx's ``iter_lines``: it also splits at U+0085, U+2028 and U+2029,
    which JSON leaves unescaped and a random-weights model emits."""
    parser = SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)


@dataclass
class RequestResult:
    ok: bool
    status: int
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    chunks: int = 0
    error: str | None = None
    error_type: str | None = None  # http_<status> | timeout | connection | stream_error | empty
    text: str = ""
    started_s: float = 0.0  # since the run began (set by the runner)


def _text_of(event: dict, chat: bool) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if chat:
        return (c.get("delta") or {}).get("content") or ""
    return c.get("text") or ""


async def one_request(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str | list[dict], max_tokens: int, *,
    chat: bool = True, headers: dict[str, str] | None = None, ignore_eos: bool = True, timeout_s: float = 300,
    stream: bool = True,
) -> RequestResult:
    """One request; ``prompt`` is a string, or (chat) the whole message list."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict = {"model": model, "max_tokens": max_tokens, "stream": stream, "temperature": 0, "ignore_eos": ignore_eos}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    t0 = time.perf_counter()
    res = RequestResult(ok=False, status=0)
    last = None
    parser = SSEParser()
    pieces: list[str] = []
    try:
        async with session.post(url + path, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            res.status = r.status
            if r.status != 200:
                res.error, res.error_type = f"HTTP {r.status}: {(await r.text())[:200]}", f"http_{r.status}"
                return res
            if not stream:
                data = await r.json()
                res.e2e_s = res.ttft_s = time.perf_counter() - t0
                res.output_tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
                c = (data.get("choices") or [{}])[0]
                res.text = ((c.get("message") or {}).get("content") if chat else c.get("text")) or ""
                res.ok = True
                return res
            async for chunk in r.content.iter_any():
                for data in parser.feed(chunk):
                    if data == "[DONE]":
                        continue
                    event = json.loads(data)
                    if "error" in event:
                        res.error, res.error_type = str(event["error"])[:200], "stream_error"
                        return res
                    if event.get("usage"):
                        res.output_tokens = int(event["usage"].get("completion_tokens") or 0)
                    text = _text_of(event, chat)
                    if text:
                        now = time.perf_counter()
                        pieces.append(text)
                        res.chunks += 1
                        if res.ttft_s is None:
                            res.ttft_s = now - t0
                        else:
                            res.itl_s.append(now - last)
                        last = now
        res.e2e_s = time.perf_counter() - t0
        res.text = "".join(pieces)
        res.ok = res.ttft_s is not None
        if not res.ok:
            res.error, res.error_type = "stream carried no text", "empty"
    except asyncio.TimeoutError:
        res.error, res.error_type = f"timeout after {timeout_s}s", "timeout"
    except aiohttp.ClientError as e:
        res.error, res.error_type = f"{type(e).__name__}: {e}", "connection"
    return res


@dataclass
class RunSummary:
    target: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    duration_s: float
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None
    itl_p90_s: float | None
    itl_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p99_s: float | None
    error_samples: list[str]
    e2e_p90_s: float | None = None
    goodput: float | None = None  # share of all requests that succeeded within the SLO
    errors_by_type: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SLO:
    """A request is good when it succeeded with TTFT <= ttft_s and mean ITL <= itl_s."""

    ttft_s: float
    itl_s: float

    def met(self, r: RequestResult) -> bool:
        if not r.ok or r.ttft_s is None or r.ttft_s > self.ttft_s:
            return False
        return not r.itl_s or sum(r.itl_s) / len(r.itl_s) <= self.itl_s


def goodput(results: list[RequestResult], slo: SLO) -> float | None:
    return sum(slo.met(r) for r in results) / len(results) if results else None


def summarise(
    target: str, concurrency: int, results: list[RequestResult], duration_s: float, slo: SLO | None = None
) -> RunSummary:
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    itl = [x for r in ok for x in r.itl_s]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    tokens = sum(r.output_tokens for r in ok)
    return RunSummary(
        target=target, concurrency=concurrency, requests=len(results), ok=len(ok), errors=len(results) - len(ok),
        duration_s=duration_s, output_tokens=tokens,
        output_tokens_per_s=tokens / duration_s if duration_s > 0 else 0.0,
        requests_per_s=len(ok) / duration_s if duration_s > 0 else 0.0,
        ttft_p50_s=percentile(ttft, 50), ttft_p90_s=percentile(ttft, 90), ttft_p99_s=percentile(ttft, 99),
        itl_p50_s=percentile(itl, 50), itl_p90_s=percentile(itl, 90), itl_p99_s=percentile(itl, 99),
        e2e_p50_s=percentile(e2e, 50), e2e_p99_s=percentile(e2e, 99), e2e_p90_s=percentile(e2e, 90),
        error_samples=[r.error for r in results if r.error][:5],
        goodput=goodput(results, slo) if slo else None,
        errors_by_type=dict(Counter(r.error_type or "unknown" for r in results if not r.ok)),
    )


async def run_closed_loop(
    url: str, model: str, *, requests: int, concurrency: int, max_tokens: int, chat: bool = True,
    headers: dict[str, str] | None = None, target: str = "", prompts: Sequence[str] = PROMPTS,
) -> RunSummary:
    """`concurrency` workers each sending requests back to back until `requests` are done."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    results: list[RequestResult] = []
    counter = iter(range(requests))
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for i in counter:
                results.append(await one_request(session, url, model, prompts[i % len(prompts)], max_tokens, chat=chat, headers=headers))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - t0
    return summarise(target or url, concurrency, results, duration)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="OpenAI streaming load driver")
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--completions", action="store_true", help="use /v1/completions instead of chat")
    p.add_argument("--api-key")
    p.add_argument("--out")
    a = p.parse_args(argv)
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else None
    summary = asyncio.run(run_closed_loop(
        a.url.rstrip("/"), a.model, requests=a.requests, concurrency=a.concurrency, max_tokens=a.max_tokens,
        chat=not a.completions, headers=headers,
    ))
    text = json.dumps(asdict(summary), indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
