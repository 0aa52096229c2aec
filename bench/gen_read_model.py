"""Generate a large read model directly in Postgres (server-side, generate_series):
``--requests`` requests over the last 30 days (40 organizations, 20,000 students, 97%
completed, 2% failed, 1% active), six stage rows each, ``--events-per-request`` timeline
events each, and the hourly/minute metrics, status counts and breakers that go with them.

    .venv/bin/python -m bench.gen_read_model --database-url URL [--requests 1000000]

Secondary indexes are dropped during the load and rebuilt after it, as a bulk load should.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import asyncpg

from bench.pipeline import TOPICS as PIPELINE_TOPICS
from services.projector.fold import N_BUCKETS
from vividly.config import STAGES
from vividly.runtime.db import migrate

SCHEMA = "vividly_read"
# The pipeline benchmark's topics and a few more.
TOPICS = [
    *PIPELINE_TOPICS,
    "Poetry forms",
    "Chemical bonds",
    "World War I",
    "Probability",
    "Ecosystems",
    "Cell division",
    "Simple machines",
    "Climate change",
]
TYPES = [
    "request_created",
    "request_started",
    "stage_started",
    "stage_completed",
    "stage_started",
    "stage_completed",
    "cache_hit",
    "stage_started",
    "stage_completed",
    "request_completed",
]


def steps(n: int, per: int) -> list[tuple[str, str]]:
    topics = "ARRAY[" + ",".join("'" + t.replace("'", "''") + "'" for t in TOPICS) + "]"
    stages = "ARRAY[" + ",".join(f"'{s}'" for s in STAGES) + "]"
    types = "ARRAY[" + ",".join(f"'{t}'" for t in TYPES) + "]"
    span = "interval '30 days'"
    # Each request's longest attempt per stage: its one attempt's, as request_stages has.
    slowest = (
        "jsonb_build_object("
        + ", ".join(f"'{st}', 200 + (i * {k}) % 4000" for k, st in enumerate(STAGES, 1))
        + ")"
    )
    hist = (
        "ARRAY["
        + ",".join(
            f"(50 + ({i} * 7 + h) %% 40)::bigint" if 3 <= i <= 11 else "0" for i in range(N_BUCKETS)
        )
        + "]::bigint[]"
    ).replace("%%", "%")
    return [
        (
            "requests",
            f"""
            INSERT INTO {SCHEMA}.requests (request_id, correlation_id, student_id,
                organization_id, topic, learning_objective, grade_level, duration_minutes,
                metadata, status, current_stage, waiting_reason, waiting_detail, error_stage,
                error_message, outputs, attempts, created_at, started_at, completed_at,
                failed_at, updated_at, slowest_ms)
            SELECT md5('r' || i)::uuid::text, md5('c' || i)::uuid::text, 'stu-' || (i % 20000),
                'org-' || (i % 40), ({topics})[1 + i % 20] || ' ' || (i % 97),
                'understand ' || lower(({topics})[1 + (i * 7) % 20]), (1 + i % 12)::text, 5,
                '{{}}', s.status,
                CASE s.status WHEN 'completed' THEN 'notification'
                              WHEN 'failed' THEN 'script_generation'
                              ELSE ({stages})[1 + i % 6] END,
                CASE WHEN s.status = 'waiting' THEN 'circuit_open' END,
                CASE WHEN s.status = 'waiting' THEN 'nano_banana breaker is open' END,
                CASE WHEN s.status = 'failed' THEN 'script_generation' END,
                CASE WHEN s.status = 'failed' THEN 'gemini 503 after 3 attempts' END,
                '{{"validation":{{"grade_level":"10"}}}}', '{{"validation":1}}',
                t.at, t.at, CASE WHEN s.status = 'completed' THEN t.at + interval '90 s' END,
                CASE WHEN s.status = 'failed' THEN t.at + interval '40 s' END,
                t.at + interval '90 s', {slowest}
            FROM generate_series(1, {n}) AS i,
                LATERAL (SELECT now() - {span} * (i::float8 / {n}) AS at) t,
                LATERAL (SELECT CASE WHEN i % 100 < 97 THEN 'completed'
                                     WHEN i % 100 < 99 THEN 'failed'
                                     ELSE (ARRAY['queued','running','waiting'])[1 + (i / 100) % 3]
                                END AS status) s""",
        ),
        (
            "request_stages",
            f"""
            INSERT INTO {SCHEMA}.request_stages (request_id, stage, attempt, status, started_at,
                ended_at, duration_ms, output)
            SELECT md5('r' || i)::uuid::text, ({stages})[k], 1, 'completed',
                now() - {span} * (i::float8 / {n}) + k * interval '10 s',
                now() - {span} * (i::float8 / {n}) + k * interval '10 s' + interval '2 s',
                200 + (i * k) % 4000, '{{"ok":true}}'
            FROM generate_series(1, {n}) AS i, generate_series(1, 6) AS k""",
        ),
        (
            "events",
            f"""
            INSERT INTO {SCHEMA}.events (seq, event_id, request_id, correlation_id,
                organization_id, student_id, event_type, stage, attempt, severity, message,
                data, producer, occurred_at)
            SELECT (i - 1) * {per} + k, md5('e' || i || '-' || k)::uuid,
                md5('r' || i)::uuid::text, md5('c' || i)::uuid::text, 'org-' || (i % 40),
                'stu-' || (i % 20000), ({types})[1 + (k - 1) % 10],
                CASE WHEN k > 2 THEN ({stages})[1 + (k / 2) % 6] END, 1, 'info',
                ({types})[1 + (k - 1) % 10] || ' for request ' || i, '{{"duration_ms":120.5}}',
                'gen', now() - {span} * (i::float8 / {n}) + k * interval '5 s'
            FROM generate_series(1, {n}) AS i, generate_series(1, {per}) AS k""",
        ),
        (
            "events sequence",
            f"""
            SELECT setval(pg_get_serial_sequence('{SCHEMA}.events', 'seq'),
                          (SELECT max(seq) FROM {SCHEMA}.events))""",
        ),
        (
            "status counts",
            f"""
            INSERT INTO {SCHEMA}.status_counts (organization_id, status, n)
            SELECT organization_id, status, count(*) FROM {SCHEMA}.requests
            GROUP BY organization_id, status""",
        ),
        (
            "stage metrics (hour)",
            f"""
            INSERT INTO {SCHEMA}.stage_metrics_hour (bucket, stage, started, completed, failed,
                retried, duration_sum_ms, duration_max_ms, duration_buckets)
            SELECT date_trunc('hour', now()) - h * interval '1 hour', st, 1400, 1380, 20, 25,
                1380 * 900.0, 9000, {hist}
            FROM generate_series(0, 24 * 31) AS h, unnest({stages}) AS st""",
        ),
        (
            "stage metrics (minute)",
            f"""
            INSERT INTO {SCHEMA}.stage_metrics_minute (bucket, stage, started, completed,
                failed, retried, duration_sum_ms, duration_max_ms, duration_buckets)
            SELECT date_trunc('minute', now()) - h * interval '1 minute', st, 24, 23, 1, 1,
                23 * 900.0, 9000, {hist}
            FROM generate_series(0, 60 * 48) AS h, unnest({stages}) AS st""",
        ),
        (
            "request metrics",
            f"""
            INSERT INTO {SCHEMA}.request_metrics_hour (bucket, created, completed, failed)
            SELECT date_trunc('hour', now()) - h * interval '1 hour', 1400, 1358, 28
            FROM generate_series(0, 24 * 31) AS h;
            INSERT INTO {SCHEMA}.request_metrics_minute (bucket, created, completed, failed)
            SELECT date_trunc('minute', now()) - h * interval '1 minute', 23, 22, 1
            FROM generate_series(0, 60 * 48) AS h""",
        ),
        (
            "per-organization metrics",
            f"""
            INSERT INTO {SCHEMA}.org_stage_metrics_hour (organization_id, bucket, stage,
                started, completed, failed, retried, duration_sum_ms, duration_max_ms,
                duration_buckets)
            SELECT 'org-' || o, date_trunc('hour', now()) - h * interval '1 hour', st, 35, 34,
                1, 1, 34 * 900.0, 9000, {hist}
            FROM generate_series(0, 39) AS o, generate_series(0, 24 * 31) AS h,
                unnest({stages}) AS st;
            INSERT INTO {SCHEMA}.org_stage_metrics_minute (organization_id, bucket, stage,
                started, completed, failed, retried, duration_sum_ms, duration_max_ms,
                duration_buckets)
            SELECT 'org-' || o, date_trunc('minute', now()) - h * interval '1 minute', st, 1, 1,
                0, 0, 900.0, 9000, {hist}
            FROM generate_series(0, 39) AS o, generate_series(0, 60 * 48) AS h,
                unnest({stages}) AS st;
            INSERT INTO {SCHEMA}.org_request_metrics_hour (organization_id, bucket, created,
                completed, failed)
            SELECT 'org-' || o, date_trunc('hour', now()) - h * interval '1 hour', 35, 34, 1
            FROM generate_series(0, 39) AS o, generate_series(0, 24 * 31) AS h;
            INSERT INTO {SCHEMA}.org_request_metrics_minute (organization_id, bucket, created,
                completed, failed)
            SELECT 'org-' || o, date_trunc('minute', now()) - h * interval '1 minute', 1, 1, 0
            FROM generate_series(0, 39) AS o, generate_series(0, 60 * 48) AS h""",
        ),
        (
            "breakers",
            f"""
            INSERT INTO {SCHEMA}.breakers (name, state, fail_counter, success_counter,
                total_calls, total_failures, opened_at, changed_at)
            VALUES ('gemini', 'closed', 0, 10, 500000, 1200, NULL, now()),
                   ('nano_banana', 'open', 5, 0, 400000, 900, now(), now()),
                   ('cdn', 'closed', 0, 3, 300000, 10, NULL, now()),
                   ('smtp', 'half-open', 5, 0, 200000, 40, now(), now())""",
        ),
    ]


async def generate(
    url: str,
    requests: int = 1_000_000,
    events_per_request: int = 10,
    say: Callable[[str], None] = print,
) -> dict[str, int]:
    await migrate(url)
    conn = await asyncpg.connect(url, command_timeout=3600)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await conn.execute("SELECT vividly.create_read_model($1)", SCHEMA)
        await conn.execute("SELECT vividly.create_read_model_safety($1)", SCHEMA)
        await conn.execute("SELECT vividly.create_read_model_scopes($1)", SCHEMA)
        await conn.execute("SELECT vividly.create_read_model_actions($1)", SCHEMA)
        await conn.execute("SELECT vividly.create_read_model_slowest($1)", SCHEMA)
        indexes = await conn.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = $1 AND NOT"
            " EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
            SCHEMA,
        )
        for ix in indexes:
            await conn.execute(f"DROP INDEX {SCHEMA}.{ix['indexname']}")
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for name, sql in steps(requests, events_per_request):
            started = time.perf_counter()
            await conn.execute(sql)
            say(f"{name}: {time.perf_counter() - started:.1f} s")
        for ix in indexes:
            started = time.perf_counter()
            await conn.execute(ix["indexdef"])
            say(f"index {ix['indexname']}: {time.perf_counter() - started:.1f} s")
        # VACUUM as well as ANALYZE: a live read model is vacuumed by autovacuum (insert-
        # only tables too, since Postgres 13), which sets the visibility map that
        # index-only scans rely on; a bulk load left unvacuumed would measure a state no
        # running projector leaves.
        for table in ("requests", "events", "request_stages"):
            started = time.perf_counter()
            await conn.execute(f"VACUUM (ANALYZE) {SCHEMA}.{table}")
            say(f"vacuum {table}: {time.perf_counter() - started:.1f} s")
        return {
            "requests": await conn.fetchval(f"SELECT count(*) FROM {SCHEMA}.requests"),
            "events": await conn.fetchval(f"SELECT max(seq) FROM {SCHEMA}.events"),
        }
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.gen_read_model", description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--events-per-request", type=int, default=10)
    args = ap.parse_args(argv)
    print(asyncio.run(generate(args.database_url, args.requests, args.events_per_request)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
