"""`tunelab bench-serve URL`: a small load generator for a local server (loopback only, bounded in requests and time).

C clients each send one request at a time (one text per request, taken in turn from the given texts) until
N requests are done or the time is up; reported: throughput (requests/s), latency p50/p95/p99 in ms, errors.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlparse

import numpy as np

from tunelab.errors import TunelabError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


async def _drive(url: str, texts: list[str], concurrency: int, requests: int, seconds: float, body_extra: dict,
                 headers: dict) -> dict:
    # aiohttp, not httpx: the client shares the cores with the server it measures, and per request httpx
    # spent 5.8 ms of CPU here against aiohttp's 0.4 (BENCHMARKS.md, "Serving")
    import aiohttp

    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as client:
        async def client_loop():
            nonlocal sent, errors
            while sent < requests and time.perf_counter() < deadline:
                text = texts[sent % len(texts)]
                sent += 1
                started = time.perf_counter()
                try:
                    async with client.post("/v1/predict", json={"texts": [text], **body_extra}) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "seconds": wall,
            "throughput": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99))}


def bench(url: str, texts: list[str], concurrency: int, requests: int = 500, seconds: float = 60.0,
          model: str | None = None, api_key: str | None = None, warmup: int = 20) -> dict:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise TunelabError(f"bench-serve only loads servers on this machine (127.0.0.1/localhost), not {host}")
    if not texts:
        raise TunelabError("bench-serve: no texts to send")
    extra = {"model": model} if model else {}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    asyncio.run(_drive(url, texts, min(concurrency, warmup), warmup, seconds, extra, headers))  # connections, caches
    return asyncio.run(_drive(url, texts, concurrency, requests, seconds, extra, headers))
