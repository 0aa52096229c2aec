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

4. Read your writes: the projector's fold rate is timed (``--fold-burst`` events at
   once), then a separate process publishes half that rate while a tracker, ``
   --ryw-samples`` times in a row, creates a request, starts a stage and reads the status
   back through the API (which waits for the projector to fold past the write).
5. Bulk retry: ``--bulk`` failed requests (input kept) are put in the read model, then
   one dry run and one bulk retry through the API are timed.

The last line printed is one JSON object: p95_ms (per endpoint), max_p95_ms, sse_p95_ms,
ryw_p50_ms, ryw_p95_ms, bulk_retry_dry_run_s, bulk_retry_10k_s (and details).
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
from rich.console import Console

from bench.gen_read_model import TOPICS, generate
from vividly.config import STAGES, TRACKING_TOPIC, Settings
from vividly.platform.pipeline import Pipeline, PipelinePorts
from vividly.platform.stack import ApacheKafkaBroker, EmbeddedPostgres, free_port
from vividly.publish import KafkaPublisher
from vividly.runtime.auth import mint
from vividly.testing import FakePublisher
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

    def day() -> dict[str, str]:
        """A random day of the generated 30 (RFC 3339, as the API takes times)."""
        end = datetime.now(UTC) - timedelta(days=rng.randint(0, 29))
        return {"since": (end - timedelta(days=1)).isoformat(), "until": end.isoformat()}

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
        "requests ?status=stalled": lambda: (
            "/api/v1/monitoring/requests",
            {"status": "stalled", "limit": 20},
            "admin",
        ),
        "requests ?error (full text)": lambda: (
            "/api/v1/monitoring/requests",
            {"error": rng.choice(["gemini", "503", "attempts"]), "limit": 20},
            "admin",
        ),
        "requests ?since&until (a day)": lambda: (
            "/api/v1/monitoring/requests",
            {**day(), "status": "all", "limit": 20},
            "admin",
        ),
        "requests ?failed_at&since": lambda: (
            "/api/v1/monitoring/requests",
            {"failed_at": "script_generation", "since": day()["since"], "limit": 20},
            "admin",
        ),
        "requests ?slower_than_ms&stage": lambda: (
            "/api/v1/monitoring/requests",
            {
                "slower_than_ms": rng.choice([3000, 3800, 4100]),
                "stage": rng.choice(STAGES),
                "limit": 20,
            },
            "admin",
        ),
        "requests ?slower_than_ms (teacher)": lambda: (
            "/api/v1/monitoring/requests",
            {"slower_than_ms": 3900, "limit": 20},
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


# ---------------------------------------------------------------------- read your writes
async def _folded_through(pg_url: str) -> int:
    """How many tracking events the projector has folded (sum of its next offsets)."""
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM vividly_read.projector_offsets"
                " WHERE topic = $1",
                TRACKING_TOPIC,
            )
        )
    finally:
        await conn.close()


def fold_rate(pg_url: str, settings: Settings, n: int) -> float:
    """The projector's fold rate in this run: ``n`` RequestCreated events published at
    once, timed until all are folded (events/s)."""
    pub = KafkaPublisher(settings, "bench-fold")
    tracker = RequestTracker(pub, producer="bench")
    before = asyncio.run(_folded_through(pg_url))
    started = time.monotonic()
    for i in range(n):
        tracker.create_request(f"stu-f{i % 500}", "Fold rate", "o", "9", 3, organization_id="org-f")
    assert pub.flush(60).ok
    while asyncio.run(_folded_through(pg_url)) < before + n:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    pub.close(10)
    return n / elapsed


def load_gen(bootstrap: str, rate: float, seconds: float) -> None:
    """A steady stream of ``rate`` events/s for ``seconds`` (its own process: the
    measuring client does not share a GIL with it); prints how many it sent. The events
    are the tracker's own (built by it, captured), handed to a plain librdkafka producer
    with no per-message callback: through a publisher, each message's delivery report
    cost this process as much as building it, and on two shared cores it offered only
    60-80 % of the rate asked."""
    from confluent_kafka import Producer

    from vividly.publish import producer_config

    settings = Settings(kafka_bootstrap=bootstrap)
    producer = Producer(producer_config(settings, "bench-load"))
    tracker = RequestTracker(FakePublisher(), producer="bench-load")
    print("started", flush=True)
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        with tracker.capturing() as built:
            for n in range(sent, due):
                tracker.create_request(
                    f"stu-l{n % 997}", "Steady load", "o", "9", 3, organization_id="org-load"
                )
        for topic, key, value, headers in built:
            producer.produce(topic, value, key, headers=cast(Any, headers))
        sent = due
        producer.poll(0)
        time.sleep(0.005)
    ran = time.monotonic() - started
    left = producer.flush(30)
    # The rate offered over the run, and how long what was still queued took to reach
    # the broker after it (a long flush: the broker did not keep up with the load).
    flush = time.monotonic() - started - ran
    print(
        json.dumps({"sent": sent, "undelivered": left, "seconds": ran, "flush_s": flush}),
        flush=True,
    )


def measure_ryw(
    pipeline: Pipeline, settings: Settings, samples: int, load_rate: float
) -> dict[str, Any]:
    """Write → status reflecting it, through the tracker and the API, ``samples`` times in
    a row while a separate process publishes ``load_rate`` events/s."""
    from vividly.readside import ApiStatusReader

    seconds = max(20.0, samples * 0.2)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.api",
            "--load-gen",
            settings.kafka_bootstrap,
            str(load_rate),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if "started" not in proc.stdout.readline():
        proc.kill()
        raise RuntimeError("the load generator did not start")
    time.sleep(2.0)  # let the steady load reach the projector before measuring
    pub = KafkaPublisher(settings, "bench-ryw")
    reader = ApiStatusReader(pipeline.api_url, mint(SECRET, role="admin", sub="bench"))
    tracker = RequestTracker(pub, producer="bench", status_reader=reader)
    latencies: list[float] = []
    acked: list[float] = []  # of which: until the broker acknowledged the writes
    stale = 0
    for i in range(samples):
        started = time.perf_counter()
        rid, _ = tracker.create_request(f"stu-r{i}", "Read my write", "o", "9", 3)
        tracker.start_stage(rid, "validation")
        tracker.position(rid)
        acked.append((time.perf_counter() - started) * 1000)
        status = tracker.get_request_status(rid)
        latencies.append((time.perf_counter() - started) * 1000)
        if status.get("current_stage") != "validation":
            stale += 1
    pub.close(10)
    out, _ = proc.communicate(timeout=seconds + 60)
    load = json.loads(out.strip().splitlines()[-1])
    if load["undelivered"]:
        raise RuntimeError(f"the load generator left {load['undelivered']} events undelivered")
    return {
        "samples": samples,
        "stale": stale,
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(pct(latencies, 0.95), 1),
        "max_ms": round(max(latencies), 1),
        "acked_p50_ms": round(statistics.median(acked), 1),
        "acked_p95_ms": round(pct(acked, 0.95), 1),
        "load_events_per_s": round(load["sent"] / load["seconds"], 1),
        "load_flush_s": round(load["flush_s"], 2),
    }


# ---------------------------------------------------------------------- bulk retry
async def seed_failed(pg_url: str, n: int, org: str) -> None:
    """``n`` failed requests (at script_generation, their input kept), straight into the
    read model, as the fold would have left them."""
    import uuid

    import asyncpg

    from vividly.events import WorkItem

    now = datetime.now(UTC)
    reqs, stages = [], []
    for i in range(n):
        rid = str(uuid.uuid4())
        item = WorkItem(request_id=rid, correlation_id=rid, stage="script_generation", attempt=1)
        item.request.topic = f"Bulk topic {i}"
        item.request.organization_id = org
        reqs.append(
            (
                rid,
                rid,
                f"stu-b{i % 100}",
                org,
                f"Bulk topic {i}",
                "o",
                "9",
                3,
                "{}",
                "failed",
                "script_generation",
                "script_generation",
                "gemini 503 after 3 attempts",
                "{}",
                "{}",
                now,
                now,
                now,
                now,
            )
        )
        stages.append(
            (rid, "script_generation", 1, "failed", now, now, 100.0, item.SerializeToString())
        )
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.copy_records_to_table(
            "requests",
            schema_name="vividly_read",
            columns=(
                "request_id",
                "correlation_id",
                "student_id",
                "organization_id",
                "topic",
                "learning_objective",
                "grade_level",
                "duration_minutes",
                "metadata",
                "status",
                "current_stage",
                "error_stage",
                "error_message",
                "outputs",
                "attempts",
                "created_at",
                "started_at",
                "failed_at",
                "updated_at",
            ),
            records=reqs,
        )
        await conn.copy_records_to_table(
            "request_stages",
            schema_name="vividly_read",
            columns=(
                "request_id",
                "stage",
                "attempt",
                "status",
                "started_at",
                "ended_at",
                "duration_ms",
                "input_item",
            ),
            records=stages,
        )
    finally:
        await conn.close()


def measure_bulk(pipeline: Pipeline, pg_url: str, n: int) -> dict[str, Any]:
    from vividly.readside import ApiStatusReader

    org = "org-bulk"
    asyncio.run(seed_failed(pg_url, n, org))
    api = ApiStatusReader(pipeline.api_url, mint(SECRET, role="admin", sub="bench"), 300)
    body = {"filter": {"organization_id": org, "failed_at": "script_generation"}}
    started = time.perf_counter()
    key = {"Idempotency-Key": f"bench-{os.urandom(4).hex()}"}
    status, dry = api.call(
        "POST", "/api/v1/requests/bulk/retry", {**body, "dry_run": True}, headers=key
    )
    dry_s = time.perf_counter() - started
    if status != 200 or dry["eligible"] != n:
        raise RuntimeError(f"dry run: {status} {dry}")
    started = time.perf_counter()
    status, done = api.call(
        "POST",
        "/api/v1/requests/bulk/retry",
        {**body, "dry_run": False},
        headers=key,
    )
    run_s = time.perf_counter() - started
    if status != 202 or done["applied"] != n:
        raise RuntimeError(f"bulk retry: {status} {str(done)[:500]}")
    messages = 1 + 2 * n  # the bulk event, and per request its event and its work item
    return {
        "requests": n,
        "dry_run_s": round(dry_s, 3),
        "run_s": round(run_s, 3),
        "messages_per_s": round(messages / run_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--sse-client":
        base, token, n, seconds, out = sys.argv[2:7]
        asyncio.run(sse_clients(base, token, int(n), float(seconds), Path(out)))
        return 0
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--load-gen":
        load_gen(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(prog="bench.api", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--per-endpoint", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--sse-clients", type=int, default=1000)
    ap.add_argument("--event-rate", type=float, default=20.0)
    ap.add_argument("--sse-seconds", type=float, default=15.0)
    ap.add_argument("--ryw-samples", type=int, default=300)
    ap.add_argument("--fold-burst", type=int, default=50_000, help="events to time the fold")
    ap.add_argument("--bulk", type=int, default=10_000, help="failed requests to bulk-retry")
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
        console.print("read your writes:")
        rate = fold_rate(pg.url, settings, args.fold_burst)
        console.print(f"  the projector folds {rate:,.0f} events/s; loading at half of that")
        ryw = measure_ryw(pipeline, settings, args.ryw_samples, rate / 2)
        console.print(
            f"  write → status p50 {ryw['p50_ms']} ms, p95 {ryw['p95_ms']} ms "
            f"(target ≤ 100) under {ryw['load_events_per_s']:,.0f} events/s; stale {ryw['stale']}"
        )
        console.print(f"bulk retry of {args.bulk:,} failed requests:")
        bulk = measure_bulk(pipeline, pg.url, args.bulk)
        console.print(
            f"  dry run {bulk['dry_run_s']} s; retry {bulk['run_s']} s (target ≤ 10), "
            f"{bulk['messages_per_s']:,.0f} messages/s"
        )
        max_p95 = max(v["p95_ms"] for v in gets.values())
        result = {
            "p95_ms": {k: v["p95_ms"] for k, v in gets.items()},
            "p50_ms": {k: v["p50_ms"] for k, v in gets.items()},
            "max_p95_ms": max_p95,
            "sse_p95_ms": sse["p95_ms"],
            "sse": sse,
            "ryw_p50_ms": ryw["p50_ms"],
            "ryw_p95_ms": ryw["p95_ms"],
            "ryw": {**ryw, "fold_events_per_s": round(rate, 1)},
            "bulk_retry_dry_run_s": bulk["dry_run_s"],
            "bulk_retry_10k_s": bulk["run_s"],
            "bulk_retry": bulk,
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
