"""Monitoring API benchmark on the local stack (Apache Kafka + embedded Postgres).

1. A read model of ``--requests`` requests and ten times as many events is generated in
   Postgres (bench/gen_read_model.py), then one API process serves it.
2. GET latency: every GET endpoint, with varied parameters (random requests, filters,
   text search, a second page by cursor, admin and teacher scopes), ``--per-endpoint``
   calls each from ``--concurrency`` clients; p50/p95 per endpoint (client-side).
3. Live stream: ``--sse-clients`` SSE connections to the same API process (held by a
   separate client process), then tracking events are published at ``--event-rate``/s
   and folded by the real projector; for every frame each client receives, the latency
   from the event's fold (``folded_at``) to its arrival; p50/p95/max.

    .venv/bin/python -m bench.api [--requests 1000000] [--sse-clients 1000]

The last line printed is one JSON object: p95_ms (per endpoint), max_p95_ms, sse_p95_ms
(and details).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from bench.gen_read_model import TOPICS, generate
from vividly.config import Settings
from vividly.platform.pipeline import Pipeline, PipelinePorts
from vividly.platform.stack import ApacheKafkaBroker, EmbeddedPostgres, free_port
from vividly.publish import KafkaPublisher
from vividly.runtime.auth import mint
from vividly.tracker import RequestTracker

console = Console(stderr=True)
SECRET = "bench-secret-" + os.urandom(16).hex()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def endpoints(n_requests: int, rng: random.Random, next_cursor: str) -> dict[str, Any]:
    """name → a function returning (path, params, role) for one call."""
    import hashlib
    import uuid

    def rid() -> str:
        i = rng.randint(1, n_requests)
        return str(uuid.UUID(hashlib.md5(f"r{i}".encode()).hexdigest()))

    def org() -> str:
        return f"org-{rng.randint(0, 39)}"

    return {
        "dashboard (admin)": lambda: ("/api/v1/monitoring/dashboard", {}, "admin"),
        "dashboard (teacher)": lambda: ("/api/v1/monitoring/dashboard", {}, "teacher"),
        "dashboard (student)": lambda: ("/api/v1/monitoring/dashboard", {}, "student"),
        "requests ?status=active": lambda: (
            "/api/v1/monitoring/requests",
            {"status": "active", "limit": 20},
            "admin",
        ),
        "requests ?status=failed&stage": lambda: (
            "/api/v1/monitoring/requests",
            {"status": "failed", "stage": "script_generation", "limit": 20},
            "admin",
        ),
        "requests (all, newest)": lambda: (
            "/api/v1/monitoring/requests",
            {"status": "all", "limit": 20},
            "admin",
        ),
        "requests (page 2 by cursor)": lambda: (
            "/api/v1/monitoring/requests",
            {"status": "all", "limit": 20, "cursor": next_cursor},
            "admin",
        ),
        "requests ?organization_id": lambda: (
            "/api/v1/monitoring/requests",
            {"organization_id": org(), "status": "completed", "limit": 20},
            "admin",
        ),
        "requests ?student_id": lambda: (
            "/api/v1/monitoring/requests",
            {"student_id": f"stu-{rng.randint(0, 19999)}", "status": "all"},
            "admin",
        ),
        "requests ?q (text search)": lambda: (
            "/api/v1/monitoring/requests",
            {"q": rng.choice(TOPICS).split()[0], "status": "all", "limit": 20},
            "admin",
        ),
        "requests (teacher scope)": lambda: (
            "/api/v1/monitoring/requests",
            {"status": "all", "limit": 20},
            "teacher",
        ),
        "requests/{id}": lambda: (f"/api/v1/monitoring/requests/{rid()}", {}, "admin"),
        "requests/{id}/events": lambda: (
            f"/api/v1/monitoring/requests/{rid()}/events",
            {"limit": 100},
            "admin",
        ),
        "metrics ?hours=24": lambda: ("/api/v1/monitoring/metrics", {"hours": 24}, "admin"),
        "metrics (teacher)": lambda: ("/api/v1/monitoring/metrics", {"hours": 24}, "teacher"),
        "metrics (student)": lambda: ("/api/v1/monitoring/metrics", {"hours": 24}, "student"),
        "breakers": lambda: ("/api/v1/monitoring/breakers", {}, "admin"),
    }


async def measure_gets(
    base: str, n_requests: int, per_endpoint: int, concurrency: int
) -> dict[str, dict[str, float]]:
    tokens = {
        "admin": mint(SECRET, role="admin", sub="bench"),
        "teacher": mint(SECRET, role="teacher", sub="t", org="org-7"),
        # stu-7's ~50 requests are all in org-7 (see bench.gen_read_model).
        "student": mint(SECRET, role="student", sub="stu-7", org="org-7"),
    }
    rng = random.Random(11)
    out: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession(base) as session:
        headers = {"Authorization": f"Bearer {tokens['admin']}"}
        async with session.get(
            "/api/v1/monitoring/requests", params={"status": "all"}, headers=headers
        ) as r:
            next_cursor = (await r.json())["next_cursor"]
        for name, make in endpoints(n_requests, rng, next_cursor).items():
            latencies: list[float] = []

            async def worker(
                count: int, make: Any = make, latencies: list[float] = latencies, name: str = name
            ) -> None:
                for _ in range(count):
                    path, params, role = make()
                    h = {"Authorization": f"Bearer {tokens[role]}"}
                    started = time.perf_counter()
                    async with session.get(path, params=params, headers=h) as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"{name}: {resp.status} {await resp.text()}")
                    latencies.append((time.perf_counter() - started) * 1000)

            for _ in range(10):  # warm-up
                await worker(1)
            latencies.clear()
            await asyncio.gather(*(worker(per_endpoint // concurrency) for _ in range(concurrency)))
            out[name] = {
                "p50_ms": round(statistics.median(latencies), 2),
                "p95_ms": round(pct(latencies, 0.95), 2),
                "n": len(latencies),
            }
            console.print(
                f"  {name:32s} p50 {out[name]['p50_ms']:7.2f} ms  p95 {out[name]['p95_ms']:7.2f} ms"
            )
    return out


# ---------------------------------------------------------------------- SSE client process
async def sse_clients(base: str, token: str, n: int, seconds: float, out: Path) -> None:
    latencies: list[float] = []
    connected = 0
    frames = 0

    parsed: dict[bytes, float] = {}  # every client sees the same folded_at strings
    marker = b'"folded_at":"'

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal connected, frames
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        async with session.get("/api/v1/monitoring/stream", headers=headers) as resp:
            connected += 1
            async for chunk in resp.content.iter_any():
                now = time.time()
                at = chunk.find(marker)
                while at >= 0:
                    start = at + len(marker)
                    end = chunk.find(b'"', start)
                    if end < 0:  # a frame split across reads: its time is not counted
                        break
                    raw = chunk[start:end]
                    folded = parsed.get(raw)
                    if folded is None:
                        folded = parsed[raw] = datetime.fromisoformat(raw.decode()).timestamp()
                    latencies.append((now - folded) * 1000)
                    frames += 1
                    at = chunk.find(marker, end)

    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base, timeout=timeout, connector=conn) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(n)]
        while connected < n:
            await asyncio.sleep(0.1)
        print("connected", flush=True)
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out.write_text(json.dumps({"latencies": latencies, "frames": frames, "clients": n}))


def run_sse(
    pipeline: Pipeline, settings: Settings, clients: int, rate: float, seconds: float, work: Path
) -> dict[str, Any]:
    token = mint(SECRET, role="admin", sub="bench")
    out = work / "sse.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.api",
            "--sse-client",
            pipeline.api_url,
            token,
            str(clients),
            str(seconds + 8),
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "connected" not in line:
        proc.kill()
        raise RuntimeError("SSE clients did not connect")
    console.print(
        f"  {clients} SSE clients connected; publishing {rate:.0f} events/s for {seconds:.0f} s"
    )
    pub = KafkaPublisher(settings, "bench-sse")
    tracker = RequestTracker(pub, producer="bench")
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        tracker.create_request(
            "stu-sse", "Streaming", "see it live", "9", 3, organization_id="org-sse"
        )
        sent += 1
        target = started + sent / rate
        time.sleep(max(0.0, target - time.monotonic()))
    pub.close(30)
    proc.wait(timeout=seconds + 60)
    data = json.loads(out.read_text())
    lat = data["latencies"]
    return {
        "clients": clients,
        "events_published": sent,
        "frames_received": data["frames"],
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p95_ms": round(pct(lat, 0.95), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--sse-client":
        base, token, n, seconds, out = sys.argv[2:7]
        asyncio.run(sse_clients(base, token, int(n), float(seconds), Path(out)))
        return 0
    ap = argparse.ArgumentParser(prog="bench.api", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--per-endpoint", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--sse-clients", type=int, default=1000)
    ap.add_argument("--event-rate", type=float, default=20.0)
    ap.add_argument("--sse-seconds", type=float, default=15.0)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vividly-bench-api-"))
    os.environ.setdefault("VIVIDLY_PG_FAST", "1")
    pg = EmbeddedPostgres(work / "pg", free_port())
    broker = ApacheKafkaBroker(work / "kafka", heap="512m")
    pipeline: Pipeline | None = None
    try:
        with console.status("starting Postgres and the broker…"):
            pg.start()
            broker.start()
        console.print(f"generating {args.requests:,} requests and {args.requests * 10:,} events…")
        counts = asyncio.run(
            generate(pg.url, args.requests, 10, say=lambda m: console.print("  " + m))
        )
        pipeline = Pipeline(
            broker.bootstrap,
            pg.url,
            work / "home",
            PipelinePorts.free(),
            extra_env={
                "VIVIDLY_JWT_SECRET": SECRET,
                "VIVIDLY_TOPIC_PARTITIONS": "6",
                "VIVIDLY_API_DB_POOL_SIZE": "10",
            },
        )
        with console.status("starting the projector and the API…"):
            pipeline.start_service("projector")
            pipeline.start_service("api")
        console.print("GET latency:")
        gets = asyncio.run(
            measure_gets(pipeline.api_url, args.requests, args.per_endpoint, args.concurrency)
        )
        console.print("live stream:")
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        sse = run_sse(pipeline, settings, args.sse_clients, args.event_rate, args.sse_seconds, work)
        max_p95 = max(v["p95_ms"] for v in gets.values())
        result = {
            "p95_ms": {k: v["p95_ms"] for k, v in gets.items()},
            "p50_ms": {k: v["p50_ms"] for k, v in gets.items()},
            "max_p95_ms": max_p95,
            "sse_p95_ms": sse["p95_ms"],
            "sse": sse,
            "requests": counts["requests"],
            "events": counts["events"],
        }
        console.print(
            f"max GET p95 {max_p95} ms (target ≤ 25) · SSE p95 {sse['p95_ms']} ms with "
            f"{sse['clients']} clients (target ≤ 250)"
        )
        print(json.dumps(result))
        return 0
    finally:
        if pipeline is not None:
            pipeline.stop()
        broker.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
