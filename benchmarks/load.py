"""The one load generator of every study: `concurrency` clients, each sending its next request as
soon as its last one is answered (a closed loop), bounded in count and in time, optionally
paced. aiohttp, not httpx: it spends a tenth of httpx's CPU per request, and the load generator
shares the server's cores (benchmarks/decisions.md, D20).

A study gives it one coroutine, `send(http, number)`, that makes request `number` and raises on
a failure (`post_json` and `post_upload` raise on any status but 200); the generator times it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np

Send = Callable[[aiohttp.ClientSession, int], Awaitable[object]]


@dataclass
class Load:
    """What a closed loop measured: each answered request's latency, failures by kind."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None
    wall_s: float = 0.0

    @property
    def done(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        return self.done / self.wall_s if self.wall_s else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(1000 * np.array(self.latencies_s or [np.nan]), q))

    def summary(self) -> dict:
        """Requests, requests/s, p50/p95/p99 ms, errors by kind, wall seconds."""
        return {
            "requests": self.done + sum(self.errors.values()),
            "throughput": self.throughput,
            "p50_ms": self.percentile_ms(50),
            "p95_ms": self.percentile_ms(95),
            "p99_ms": self.percentile_ms(99),
            "errors": dict(self.errors),
            "wall_s": self.wall_s,
        }


async def closed_loop(
    send: Send,
    concurrency: int,
    requests: int,
    limit_s: float = float("inf"),
    rate: float | None = None,
    every_half_second: Callable[[], None] | None = None,
    timeout_s: float = 60,
) -> Load:
    """Up to `requests` requests (or `limit_s` seconds), `concurrency` at a time. With `rate`,
    request n leaves no earlier than n / rate seconds after the start; `every_half_second` is
    called while the load runs (e.g. to sample a server's RSS)."""
    load = Load()
    sent = 0
    deadline = time.monotonic() + limit_s

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal sent
        while sent < requests and time.monotonic() < deadline:
            number = sent
            sent += 1
            if rate:
                await asyncio.sleep(begun + number / rate - time.perf_counter())
            started = time.perf_counter()
            try:
                await send(http, number)
            except (aiohttp.ClientError, TimeoutError) as exc:
                kind = str(getattr(exc, "status", "")) or type(exc).__name__
                load.errors[kind] += 1
                load.first_error = load.first_error or (str(exc)[:200] or kind)
                continue
            load.latencies_s.append(time.perf_counter() - started)

    async def ticker() -> None:
        while every_half_second is not None:
            every_half_second()
            await asyncio.sleep(0.5)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        ticking = asyncio.create_task(ticker())
        begun = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        load.wall_s = time.perf_counter() - begun  # to the last answer, not the next tick
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
    return load


def run(send: Send, concurrency: int, requests: int, **options: object) -> Load:
    """`closed_loop` from synchronous code."""
    return asyncio.run(closed_loop(send, concurrency, requests, **options))  # type: ignore[arg-type]


async def post_json(http: aiohttp.ClientSession, url: str, body: object) -> dict:
    async with http.post(url, json=body) as response:
        response.raise_for_status()
        return await response.json()


async def post_bytes(
    http: aiohttp.ClientSession, url: str, body: bytes, content_type: str
) -> bytes:
    async with http.post(url, data=body, headers={"Content-Type": content_type}) as response:
        response.raise_for_status()
        return await response.read()


async def post_upload(
    http: aiohttp.ClientSession, url: str, photo: bytes, filename: str = "photo"
) -> dict:
    """`/preprocess`'s multipart upload of `photo`; its JSON answer."""
    form = aiohttp.FormData()
    form.add_field("image", photo, filename=filename, content_type="application/octet-stream")
    async with http.post(url, data=form) as response:
        response.raise_for_status()
        return await response.json()
