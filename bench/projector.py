"""Projector benchmark on the local stack (Apache Kafka + embedded Postgres).

1. A realistic event mix is built with the real tracker (per request: created, started,
   six stages started/completed with outputs, a cache-hit log line, video progress
   lines; one request in ten fails a stage attempt and retries, one in fifty fails for
   good; breaker changes now and then) and published to a fresh topic.
2. fold: the real projector (consumer, fold, batched writes, offsets, NOTIFY) folds the
   whole topic into a fresh read-model schema; events/s from first to last commit.
3. copy: in the same run, a raw COPY of the same number of timeline rows into a table of
   the same shape: rows/s. The ratio is fold/copy.

    .venv/bin/python -m bench.projector [--requests 20000] [--batch 5000]

The last line printed is one JSON object: fold_events_per_s, copy_rows_per_s, ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console

from services.projector.fold import EVENT_COLUMNS
from services.projector.runner import Projector
from vividly.config import STAGES, Settings
from vividly.events import WorkItem
from vividly.platform.stack import ApacheKafkaBroker, EmbeddedPostgres, free_port
from vividly.publish import KafkaPublisher
from vividly.runtime.bus import ensure_topics
from vividly.runtime.db import migrate
from vividly.tracker import RequestTracker

console = Console(stderr=True)
TOPICS = ["Photosynthesis", "Volcanoes", "Fractions", "The water cycle", "Electric circuits"]


def publish_mix(tracker: RequestTracker, n: int, rng: random.Random) -> int:
    """Publish n requests' worth of events; returns how many events."""
    before = tracker.publisher.last_seq()
    for i in range(n):
        org = f"org-{i % 40}"
        rid, _ = tracker.create_request(
            f"stu-{i % 5000}",
            rng.choice(TOPICS),
            "understand the idea",
            str(1 + i % 12),
            5,
            organization_id=org,
        )
        tracker.start_request(rid)
        for stage in STAGES:
            attempt = 1
            if stage == "script_generation" and i % 10 == 0:
                tracker.start_stage(rid, stage, attempt=1)
                item = WorkItem(request_id=rid, stage=stage, attempt=1)
                tracker.fail_stage(
                    rid, stage, "gemini 503", {"status": 503}, True, attempt=1, work_item=item
                )
                if i % 50 == 0:
                    tracker.fail_request(rid, "gemini 503", stage, {"reason": "retries_exhausted"})
                    break
                tracker.schedule_retry(rid, stage, 2, time.time() + 1, "gemini 503")
                attempt = 2
            tracker.start_stage(rid, stage, attempt=attempt)
            if stage == "rag_retrieval":
                tracker.log_event(
                    rid,
                    "cache_hit",
                    "chunks from cache",
                    stage_name=stage,
                    event_data={"chunks": 5},
                )
            if stage == "video_generation":
                for pct in (25, 50, 75):
                    tracker.log_event(
                        rid,
                        "video_progress",
                        f"{pct}%",
                        stage_name=stage,
                        event_data={"progress": pct},
                    )
            output = (
                {"words": 700, "chunks": 5}
                if stage != "script_generation"
                else {"script": "word " * 150, "word_count": 150}
            )
            tracker.complete_stage(
                rid, stage, output, attempt=attempt, duration_ms=rng.uniform(5, 5000)
            )
        else:
            tracker.complete_request(rid, f"https://cdn/{rid}.mp4", "", f"https://cdn/{rid}.jpg")
        if i % 500 == 0:
            tracker.breaker_state_changed("gemini", "closed", "open", fail_counter=5)
            tracker.breaker_state_changed("gemini", "open", "closed")
    return tracker.publisher.last_seq() - before


async def copy_baseline(url: str, rows: int) -> float:
    """rows/s of a raw COPY of timeline-shaped rows into a fresh table."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS bench_copy CASCADE")
        await conn.execute("SELECT vividly.create_read_model('bench_copy')")
        now = datetime.now(UTC)
        import uuid_utils

        records = [
            (
                str(uuid_utils.uuid7()),
                f"req-{i // 25}",
                "corr",
                f"org-{i % 40}",
                "stu",
                "stage_completed",
                "validation",
                1,
                "info",
                "validation completed in 0.12 s",
                '{"duration_ms":120.5,"output":{"words":700,"chunks":5}}',
                "bench",
                now,
            )
            for i in range(rows)
        ]
        started = time.perf_counter()
        for chunk in range(0, rows, 5000):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "events",
                    schema_name="bench_copy",
                    columns=EVENT_COLUMNS,
                    records=records[chunk : chunk + 5000],
                )
        return rows / (time.perf_counter() - started)
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS bench_copy CASCADE")
        await conn.close()


async def fold(settings: Settings, url: str, topic: str, total: int, batch: int) -> dict[str, Any]:
    proj = Projector(
        settings, url, schema="bench_fold", group_id=None, topic=topic, batch_max=batch
    )
    conn = await asyncpg.connect(url)
    await conn.execute("DROP SCHEMA IF EXISTS bench_fold CASCADE")
    await proj.open()
    try:
        await proj.assign_all()
        first = None
        while proj.stats.consumed < total:
            n = await proj.step(wait_s=0.5)
            if first is None and proj.stats.folded:
                first = time.perf_counter()
                first_count = proj.stats.consumed
            if not n and first is not None and time.perf_counter() - first > 600:
                break
        elapsed = time.perf_counter() - (first or time.perf_counter())
        folded = proj.stats.consumed - first_count
        rows = await conn.fetchval("SELECT count(*) FROM bench_fold.events")
        return {
            "events_per_s": folded / elapsed if elapsed else 0.0,
            "events": proj.stats.folded,
            "batches": proj.stats.batches,
            "rows": rows,
        }
    finally:
        await proj.close()
        await conn.execute("DROP SCHEMA IF EXISTS bench_fold CASCADE")
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.projector", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=10_000)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vividly-bench-proj-"))
    os.environ.setdefault("VIVIDLY_PG_FAST", "1")
    pg = EmbeddedPostgres(work / "pg", free_port())
    broker = ApacheKafkaBroker(work / "kafka", heap="512m")
    try:
        with console.status("starting Postgres and the broker…"):
            pg.start()
            broker.start()
        settings = Settings(kafka_bootstrap=broker.bootstrap, topic_partitions=6)
        topic = "bench.tracking"
        ensure_topics(settings, {topic: 6})
        asyncio.run(migrate(pg.url))
        pub = KafkaPublisher(settings, "bench")
        tracker = RequestTracker(pub, producer="bench", topic=topic)
        with console.status(f"publishing {args.requests} requests' events…"):
            total = publish_mix(tracker, args.requests, random.Random(7))
            assert pub.close(120).ok
        console.print(f"published {total} events")
        with console.status("folding…"):
            folded = asyncio.run(fold(settings, pg.url, topic, total, args.batch))
        with console.status("raw COPY baseline…"):
            copy_rate = asyncio.run(copy_baseline(pg.url, total))
        result = {
            "fold_events_per_s": round(folded["events_per_s"]),
            "copy_rows_per_s": round(copy_rate),
            "ratio": round(folded["events_per_s"] / copy_rate, 3),
            "events": total,
            "folded": folded["events"],
            "batches": folded["batches"],
        }
        console.print(
            f"fold {result['fold_events_per_s']:,} events/s (target ≥ 30,000) · raw COPY "
            f"{result['copy_rows_per_s']:,} rows/s · ratio {result['ratio']} (target ≥ 0.25)"
        )
        print(json.dumps(result))
        return 0
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
