"""Writes a folded batch to Postgres, in one transaction with the consumed offsets.

Exactly-once fold over at-least-once delivery, without Kafka transactions:

- the offsets of what was folded are stored in the same transaction as the rows, and the
  projector starts from them (``offsets()``), so a crash between commit and anything else
  never folds a message twice or skips one;
- an ``event_id`` already in the timeline is dropped before folding (a duplicate publish,
  or a rebuild overlapping the live projector), so the same fact never counts twice;
- after the rows, ``pg_notify`` tells the API the new high-water sequence; Postgres
  delivers it only on commit, so live views never run ahead of the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf.message import DecodeError

from services.projector.fold import (
    ENDINGS,
    EVENT_COLUMNS,
    Batch,
    Known,
    bucket_time,
    by_bucket,
    by_stage,
    fold_batch,
    poison_reason,
)
from services.projector.logid import LogIdentity
from vividly import metrics
from vividly.events import Envelope

log = logging.getLogger("vividly.projector")

LIVE_SCHEMA = "vividly_read"
NOTIFY_CHANNEL = "vividly_read_events"
SEQ_LOCK = 0x76727371  # "vrsq"
#: What a request was submitted with (RequestCreated).
_SPEC_COLUMNS = (
    "student_id",
    "organization_id",
    "topic",
    "learning_objective",
    "grade_level",
    "duration_minutes",
    "metadata",
    "idempotency_key",
)
REQUEST_COLUMNS = (
    "request_id",
    "correlation_id",
    *_SPEC_COLUMNS,
    "status",
    "current_stage",
    "waiting_reason",
    "waiting_detail",
    "waiting_until",
    "error_stage",
    "error_message",
    "error_details",
    "outputs",
    "attempts",
    "retry_count",
    "video_url",
    "thumbnail_url",
    "created_at",
    "started_at",
    "completed_at",
    "failed_at",
    "updated_at",
    "cancelled_at",
    "cancelled_by",
    "cancel_reason",
    "slowest_ms",
)
STAGE_COLUMNS = (
    "request_id",
    "stage",
    "attempt",
    "status",
    "started_at",
    "ended_at",
    "duration_ms",
    "output",
    "error_message",
    "error_details",
    "is_retryable",
    "due_at",
    "input_item",
)


#: The projection's version: raise it when the fold writes something a read model folded
#: by older code does not have (2: per-organization aggregates). A live read model with
#: an older version is rebuilt from the log when the projector starts. 3: cancelled
#: requests, and a failed or cancelled request's open attempts closed. 4: each request's
#: longest attempt per stage (``slowest_ms``, for "slower than").
READ_MODEL_VERSION = 4


#: How a stored metric row takes a batch's delta (global and per-organization alike).
_ADD_STAGE_METRICS = """
    started = m.started + EXCLUDED.started,
    completed = m.completed + EXCLUDED.completed,
    failed = m.failed + EXCLUDED.failed,
    retried = m.retried + EXCLUDED.retried,
    duration_sum_ms = m.duration_sum_ms + EXCLUDED.duration_sum_ms,
    duration_max_ms = GREATEST(m.duration_max_ms, EXCLUDED.duration_max_ms),
    duration_buckets = (SELECT array_agg(a + b ORDER BY i)
        FROM unnest(m.duration_buckets, EXCLUDED.duration_buckets) WITH ORDINALITY AS x(a, b, i))"""
_ADD_REQUEST_COUNTS = """
    created = m.created + EXCLUDED.created, completed = m.completed + EXCLUDED.completed,
    failed = m.failed + EXCLUDED.failed"""


def quote_ident(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name[0].isalpha():
        raise ValueError(f"schema names are letters, digits and _ only: {name!r}")
    return f'"{name}"'


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed message: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass(frozen=True, slots=True)
class FoldResult:
    consumed: int
    folded: int
    duplicates: int
    undecodable: int  # quarantined: undecodable, invalid or rejected
    skipped: int
    max_seq: int | None

    def plus(self, other: FoldResult) -> FoldResult:
        seqs = [s for s in (self.max_seq, other.max_seq) if s is not None]
        return FoldResult(
            self.consumed + other.consumed,
            self.folded + other.folded,
            self.duplicates + other.duplicates,
            self.undecodable + other.undecodable,
            self.skipped + other.skipped,
            max(seqs) if seqs else None,
        )


#: Postgres error classes that mean "this data", not "this connection": data exceptions,
#: integrity violations, program limits.
_DATA_SQLSTATES = ("22", "23", "54")


def is_data_error(exc: BaseException) -> bool:
    """Did a batch fail because of what is in it (so isolating the event helps), rather
    than because Postgres went away (so reconnecting and retrying helps)?"""
    import asyncpg

    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] in _DATA_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, ValueError):
        return False
    return isinstance(exc, ValueError | TypeError | OverflowError | KeyError | IndexError)


def _clean(text: str | None) -> str | None:
    return text.replace("\x00", "") if text is not None else None


class ReadModelStore:
    """The read model in one schema (live, a rebuild, or an analyst's replay)."""

    def __init__(
        self, schema: str = LIVE_SCHEMA, notify: bool = True, max_event_bytes: int = 512 * 1024
    ) -> None:
        self.schema = schema
        self.notify = notify
        self.max_event_bytes = max_event_bytes
        s = quote_ident(schema)
        self.s = s
        self._sql_dupes = f"SELECT event_id::text FROM {s}.events WHERE event_id = ANY($1::uuid[])"
        self._sql_known = (
            f"SELECT request_id, status, organization_id, student_id FROM {s}.requests"
            " WHERE request_id = ANY($1::text[])"
        )
        # Existing rows: spec only when the batch has it; waiting/error/terminal times
        # follow the status (a status change rewrites them); maps merge; counters add.
        self._sql_update_requests = f"""
            UPDATE {s}.requests r SET
                correlation_id = COALESCE(r.correlation_id, u.correlation_id),
                student_id = CASE WHEN u.has_spec THEN u.student_id ELSE r.student_id END,
                organization_id = CASE WHEN u.has_spec THEN u.organization_id
                                  ELSE r.organization_id END,
                topic = CASE WHEN u.has_spec THEN u.topic ELSE r.topic END,
                learning_objective = CASE WHEN u.has_spec THEN u.learning_objective
                                     ELSE r.learning_objective END,
                grade_level = CASE WHEN u.has_spec THEN u.grade_level ELSE r.grade_level END,
                duration_minutes = CASE WHEN u.has_spec THEN u.duration_minutes
                                   ELSE r.duration_minutes END,
                metadata = CASE WHEN u.has_spec THEN u.metadata ELSE r.metadata END,
                idempotency_key = CASE WHEN u.has_spec THEN u.idempotency_key
                                  ELSE r.idempotency_key END,
                created_at = CASE WHEN u.has_spec THEN u.created_at ELSE r.created_at END,
                status = COALESCE(u.status, r.status),
                current_stage = COALESCE(u.current_stage, r.current_stage),
                waiting_reason = CASE WHEN u.status IS NULL THEN r.waiting_reason
                                 ELSE u.waiting_reason END,
                waiting_detail = CASE WHEN u.status IS NULL THEN r.waiting_detail
                                 ELSE u.waiting_detail END,
                waiting_until = CASE WHEN u.status IS NULL THEN r.waiting_until
                                ELSE u.waiting_until END,
                error_stage = CASE WHEN u.status IS NULL THEN r.error_stage ELSE u.error_stage END,
                error_message = CASE WHEN u.status IS NULL THEN r.error_message
                                ELSE u.error_message END,
                error_details = CASE WHEN u.status IS NULL THEN r.error_details
                                ELSE u.error_details END,
                completed_at = CASE WHEN u.status IS NULL THEN r.completed_at
                               ELSE u.completed_at END,
                failed_at = CASE WHEN u.status IS NULL THEN r.failed_at ELSE u.failed_at END,
                outputs = r.outputs || u.outputs,
                attempts = r.attempts || u.attempts,
                retry_count = r.retry_count + u.retries,
                video_url = COALESCE(u.video_url, r.video_url),
                thumbnail_url = COALESCE(u.thumbnail_url, r.thumbnail_url),
                started_at = COALESCE(r.started_at, u.started_at),
                updated_at = GREATEST(r.updated_at, u.updated_at),
                cancelled_at = CASE WHEN u.status IS NULL THEN r.cancelled_at
                               ELSE u.cancelled_at END,
                cancelled_by = CASE WHEN u.status IS NULL THEN r.cancelled_by
                               ELSE u.cancelled_by END,
                cancel_reason = CASE WHEN u.status IS NULL THEN r.cancel_reason
                                ELSE u.cancel_reason END,
                slowest_ms = CASE WHEN u.slowest = '{{}}'::jsonb THEN r.slowest_ms
                             ELSE (SELECT jsonb_object_agg(k, GREATEST((r.slowest_ms->>k)::float8,
                                                                       v::float8))
                                   FROM jsonb_each_text(r.slowest_ms || u.slowest) AS e(k, v))
                             END
            FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::int[], $10::jsonb[], $11::text[], $12::timestamptz[],
                $13::text[], $14::text[], $15::text[], $16::text[], $17::timestamptz[],
                $18::text[], $19::text[], $20::jsonb[], $21::timestamptz[], $22::timestamptz[],
                $23::jsonb[], $24::jsonb[], $25::int[], $26::text[], $27::text[],
                $28::timestamptz[], $29::timestamptz[], $30::timestamptz[], $31::text[],
                $32::text[], $33::jsonb[])
              AS u(request_id, correlation_id, has_spec, student_id, organization_id, topic,
                   learning_objective, grade_level, duration_minutes, metadata,
                   idempotency_key, created_at, status, current_stage, waiting_reason,
                   waiting_detail, waiting_until, error_stage, error_message, error_details,
                   completed_at, failed_at, outputs, attempts, retries, video_url,
                   thumbnail_url, started_at, updated_at, cancelled_at, cancelled_by,
                   cancel_reason, slowest)
            WHERE r.request_id = u.request_id"""
        # Open attempts of requests that end in a batch (the fold closes them).
        self._sql_open = f"""
            SELECT request_id, stage, attempt FROM {s}.request_stages
            WHERE request_id = ANY($1::text[]) AND status IN ('running', 'scheduled')"""
        self._sql_stages = f"""
            INSERT INTO {s}.request_stages AS t (request_id, stage, attempt, status, started_at,
                ended_at, duration_ms, output, error_message, error_details, is_retryable,
                due_at, input_item)
            SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[],
                $5::timestamptz[], $6::timestamptz[], $7::float8[], $8::jsonb[], $9::text[],
                $10::jsonb[], $11::bool[], $12::timestamptz[], $13::bytea[])
            ON CONFLICT (request_id, stage, attempt) DO UPDATE SET
                status = CASE WHEN t.status IN ('completed', 'failed', 'abandoned', 'cancelled')
                         THEN t.status ELSE EXCLUDED.status END,
                started_at = COALESCE(t.started_at, EXCLUDED.started_at),
                ended_at = COALESCE(EXCLUDED.ended_at, t.ended_at),
                duration_ms = COALESCE(EXCLUDED.duration_ms, t.duration_ms),
                output = COALESCE(EXCLUDED.output, t.output),
                error_message = COALESCE(EXCLUDED.error_message, t.error_message),
                error_details = COALESCE(EXCLUDED.error_details, t.error_details),
                is_retryable = COALESCE(EXCLUDED.is_retryable, t.is_retryable),
                due_at = COALESCE(EXCLUDED.due_at, t.due_at),
                input_item = COALESCE(EXCLUDED.input_item, t.input_item)"""
        metric_upsert = (
            """
            INSERT INTO {table} AS m (bucket, stage, started, completed, failed, retried,
                duration_sum_ms, duration_max_ms, duration_buckets)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::bigint[])
            ON CONFLICT (bucket, stage) DO UPDATE SET """
            + _ADD_STAGE_METRICS
        )
        self._sql_minutes = metric_upsert.format(table=f"{s}.stage_metrics_minute")
        self._sql_hours = metric_upsert.format(table=f"{s}.stage_metrics_hour")
        request_upsert = (
            """
            INSERT INTO {table} AS m (bucket, created, completed, failed)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (bucket) DO UPDATE SET """
            + _ADD_REQUEST_COUNTS
        )
        self._sql_request_minutes = request_upsert.format(table=f"{s}.request_metrics_minute")
        self._sql_request_hours = request_upsert.format(table=f"{s}.request_metrics_hour")
        # The same deltas per organization, one statement per batch (unnest). Histograms
        # travel as array literals: unnest would flatten a two-dimensional array.
        org_metric_upsert = (
            """
            INSERT INTO {table} AS m (organization_id, bucket, stage, started, completed,
                failed, retried, duration_sum_ms, duration_max_ms, duration_buckets)
            SELECT o, b, st, s, c, f, r, ds, dm, h::bigint[]
            FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::bigint[], $5::bigint[],
                $6::bigint[], $7::bigint[], $8::float8[], $9::float8[], $10::text[])
              AS u(o, b, st, s, c, f, r, ds, dm, h)
            ON CONFLICT (organization_id, bucket, stage) DO UPDATE SET """
            + _ADD_STAGE_METRICS
        )
        self._sql_org_minutes = org_metric_upsert.format(table=f"{s}.org_stage_metrics_minute")
        self._sql_org_hours = org_metric_upsert.format(table=f"{s}.org_stage_metrics_hour")
        org_request_upsert = (
            """
            INSERT INTO {table} AS m (organization_id, bucket, created, completed, failed)
            SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[],
                $5::bigint[])
            ON CONFLICT (organization_id, bucket) DO UPDATE SET """
            + _ADD_REQUEST_COUNTS
        )
        self._sql_org_request_minutes = org_request_upsert.format(
            table=f"{s}.org_request_metrics_minute"
        )
        self._sql_org_request_hours = org_request_upsert.format(
            table=f"{s}.org_request_metrics_hour"
        )
        self._sql_counts = f"""
            INSERT INTO {s}.status_counts AS c (organization_id, status, n) VALUES ($1, $2, $3)
            ON CONFLICT (organization_id, status) DO UPDATE SET n = c.n + EXCLUDED.n"""
        self._sql_breakers = f"""
            INSERT INTO {s}.breakers AS b (name, state, fail_counter, success_counter,
                total_calls, total_failures, opened_at, changed_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state,
                fail_counter = EXCLUDED.fail_counter, success_counter = EXCLUDED.success_counter,
                total_calls = EXCLUDED.total_calls, total_failures = EXCLUDED.total_failures,
                opened_at = CASE WHEN EXCLUDED.state = 'closed' THEN NULL
                            ELSE COALESCE(EXCLUDED.opened_at, b.opened_at) END,
                changed_at = EXCLUDED.changed_at
            WHERE b.changed_at <= EXCLUDED.changed_at"""
        self._sql_offsets = f"""
            INSERT INTO {s}.projector_offsets AS o (topic, partition, next_offset, updated_at)
            VALUES ($1, $2, $3, now())
            ON CONFLICT (topic, partition) DO UPDATE SET
                next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset), updated_at = now()"""

    # ------------------------------------------------------------------ reading state
    async def offsets(self, conn: Any, topic: str) -> dict[int, int]:
        rows = await conn.fetch(
            f"SELECT partition, next_offset FROM {self.s}.projector_offsets WHERE topic = $1",
            topic,
        )
        return {r["partition"]: r["next_offset"] for r in rows}

    async def ensure(self, conn: Any) -> None:
        """Create this schema's tables (they exist already for the live schema after
        ``vividly db migrate``)."""
        await conn.execute("SELECT vividly.create_read_model($1)", self.schema)
        await conn.execute("SELECT vividly.create_read_model_safety($1)", self.schema)
        await conn.execute("SELECT vividly.create_read_model_scopes($1)", self.schema)
        await conn.execute("SELECT vividly.create_read_model_actions($1)", self.schema)
        await conn.execute("SELECT vividly.create_read_model_slowest($1)", self.schema)
        # A schema nothing has been folded into holds this code's projection from the
        # start; one folded by an older projector stays unstamped (see outdated()).
        await conn.execute(
            f"INSERT INTO {self.s}.read_model_meta (version)"
            f" SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM {self.s}.projector_offsets)"
            " ON CONFLICT (id) DO NOTHING",
            READ_MODEL_VERSION,
        )

    async def version(self, conn: Any) -> int | None:
        """The projection this schema holds; None when an older projector folded it."""
        value = await conn.fetchval(f"SELECT version FROM {self.s}.read_model_meta")
        return int(value) if value is not None else None

    async def outdated(self, conn: Any) -> bool:
        """Whether this schema was folded by an older projection (a rebuild from the log
        brings it up to date: a projection is a function of the log)."""
        v = await self.version(conn)
        return v is None or v < READ_MODEL_VERSION

    async def identity(self, conn: Any, topic: str) -> LogIdentity | None:
        row = await conn.fetchrow(
            f"SELECT cluster_id, topic_id FROM {self.s}.projector_log WHERE topic = $1", topic
        )
        return LogIdentity(row["cluster_id"], row["topic_id"]) if row else None

    async def record_identity(self, conn: Any, topic: str, ident: LogIdentity) -> None:
        await conn.execute(
            f"INSERT INTO {self.s}.projector_log (topic, cluster_id, topic_id)"
            " VALUES ($1, $2, $3) ON CONFLICT (topic) DO UPDATE SET cluster_id ="
            " EXCLUDED.cluster_id, topic_id = EXCLUDED.topic_id, recorded_at = now()",
            topic,
            ident.cluster_id,
            ident.topic_id,
        )

    async def quarantine(self, conn: Any, rec: Record, reason: str, env: Any = None) -> None:
        """Keep a poison event aside with its reason, and move the offset past it."""
        event_id = request_id = None
        if env is not None:
            event_id, request_id = env.event_id or None, env.request_id or None
        await conn.execute(
            f'INSERT INTO {self.s}.quarantine (topic, partition, "offset", event_id,'
            " request_id, reason, raw) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT DO NOTHING",
            rec.topic,
            rec.partition,
            rec.offset,
            _clean(event_id),
            _clean(request_id),
            (_clean(reason) or "")[:2000],
            rec.value,
        )
        await conn.execute(self._sql_offsets, rec.topic, rec.partition, rec.offset + 1)
        metrics.projector_quarantined.labels(self.schema).inc()
        log.error(
            "poison event quarantined",
            extra={
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "reason": reason,
            },
        )

    async def adopt_seq(self, conn: Any, live: str) -> None:
        """Give this (rebuilt) schema's timeline the live schema's ``seq`` for every event
        both hold (matched by event_id), and number the rest above the live maximum in
        log order, so SSE clients resuming with a live Last-Event-ID neither miss nor
        repeat a frame after the swap."""
        s, lv = self.s, quote_ident(live)
        await conn.execute(f"UPDATE {s}.events SET seq = -seq")
        await conn.execute(
            f"UPDATE {s}.events f SET seq = l.seq FROM {lv}.events l WHERE l.event_id = f.event_id"
        )
        await conn.execute(
            f"""WITH base AS (SELECT coalesce(max(seq), 0) AS m FROM {lv}.events),
                  r AS (SELECT event_id, row_number() OVER (ORDER BY seq DESC) AS n
                        FROM {s}.events WHERE seq < 0)
                UPDATE {s}.events f SET seq = (SELECT m FROM base) + r.n
                FROM r WHERE f.event_id = r.event_id"""
        )
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{s}.events', 'seq'),"
            f" GREATEST((SELECT coalesce(max(seq), 0) FROM {lv}.events),"
            f"          (SELECT coalesce(max(seq), 0) FROM {s}.events), 1))"
        )

    # ------------------------------------------------------------------ the write
    async def write(self, conn: Any, records: Sequence[Record]) -> FoldResult:
        """Decode, fold and store ``records`` (one partition's messages in order; batches
        may mix partitions) in one transaction with their offsets."""
        envelopes: list[Envelope] = []
        next_offsets: dict[tuple[str, int], int] = {}
        poison: list[tuple[Record, str, Envelope | None]] = []
        for rec in records:
            key = (rec.topic, rec.partition)
            if rec.offset + 1 > next_offsets.get(key, -1):
                next_offsets[key] = rec.offset + 1
            if len(rec.value) > self.max_event_bytes:
                poison.append((rec, f"oversized: {len(rec.value)} bytes", None))
                continue
            env = Envelope()
            try:
                env.ParseFromString(rec.value)
            except DecodeError as exc:
                poison.append((rec, f"undecodable: {exc}", None))
                continue
            reason = poison_reason(env)
            if reason is None:
                envelopes.append(env)
            else:
                poison.append((rec, reason, env))
        if conn.is_in_transaction():
            return await self._write(conn, envelopes, next_offsets, len(records), poison)
        async with conn.transaction():
            return await self._write(conn, envelopes, next_offsets, len(records), poison)

    async def _write(
        self,
        conn: Any,
        envelopes: list[Envelope],
        next_offsets: dict[tuple[str, int], int],
        consumed: int,
        poison: list[tuple[Record, str, Envelope | None]],
    ) -> FoldResult:
        for rec, reason, env in poison:
            await self.quarantine(conn, rec, reason, env)
        undecodable = len(poison)
        fresh, duplicates = await self._drop_seen(conn, envelopes)
        rids = list({e.request_id for e in fresh if e.request_id})
        known: dict[str, Known] = {}
        if rids:
            for row in await conn.fetch(self._sql_known, rids):
                known[row["request_id"]] = Known(
                    row["status"], row["organization_id"], row["student_id"]
                )
        open_attempts: dict[str, list[tuple[str, int]]] = {}
        ending = list(
            {e.request_id for e in fresh if e.WhichOneof("event") in ENDINGS} & known.keys()
        )
        if ending:
            for row in await conn.fetch(self._sql_open, ending):
                key = (row["stage"], row["attempt"])
                open_attempts.setdefault(row["request_id"], []).append(key)
        batch = fold_batch(fresh, known, open_attempts)
        await self._store(conn, batch)
        if next_offsets:
            await conn.executemany(
                self._sql_offsets, [(t, p, o) for (t, p), o in next_offsets.items()]
            )
        max_seq = None
        if batch.events:
            max_seq = await conn.fetchval(f"SELECT max(seq) FROM {self.s}.events")
        if self.notify and (batch.events or next_offsets):
            # Also when only offsets moved (a batch of duplicates): a read-your-writes
            # wait is for the position, not for new rows.
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(max_seq or 0))
        return FoldResult(
            consumed=consumed,
            folded=len(batch.events),
            duplicates=duplicates,
            undecodable=undecodable,
            skipped=batch.skipped,
            max_seq=max_seq,
        )

    async def _drop_seen(self, conn: Any, envelopes: list[Envelope]) -> tuple[list[Envelope], int]:
        if not envelopes:
            return [], 0
        ids = [e.event_id for e in envelopes]
        seen = {r[0] for r in await conn.fetch(self._sql_dupes, ids)}
        fresh: list[Envelope] = []
        in_batch: set[str] = set()
        for env in envelopes:
            if env.event_id in seen or env.event_id in in_batch:
                continue
            in_batch.add(env.event_id)
            fresh.append(env)
        return fresh, len(envelopes) - len(fresh)

    async def _store(self, conn: Any, b: Batch) -> None:
        new = [d for rid, d in b.requests.items() if rid not in b.known]
        old = [d for rid, d in b.requests.items() if rid in b.known]
        if new:  # not in the table (looked up in this transaction): COPY
            await conn.copy_records_to_table(
                "requests",
                schema_name=self.schema,
                columns=REQUEST_COLUMNS,
                records=[_insert_row(d) for d in new],
            )
        if old:
            await conn.execute(self._sql_update_requests, *_columns(_update_row(d) for d in old))
        if b.stages:
            rows: list[tuple[Any, ...]] = [
                (
                    rid,
                    stage,
                    attempt,
                    d.status,
                    d.started_at,
                    d.ended_at,
                    d.duration_ms,
                    d.output,
                    d.error_message,
                    d.error_details,
                    d.is_retryable,
                    d.due_at,
                    d.input_item,
                )
                for (rid, stage, attempt), d in b.stages.items()
            ]
            # A request first seen in this batch has no stage rows yet: COPY those; the
            # rest may merge with stored rows.
            fresh = [r for r in rows if r[0] not in b.known]
            merge = [r for r in rows if r[0] in b.known] if len(fresh) < len(rows) else []
            if fresh:
                await conn.copy_records_to_table(
                    "request_stages", schema_name=self.schema, columns=STAGE_COLUMNS, records=fresh
                )
            if merge:
                await conn.execute(self._sql_stages, *_columns(merge))
        for sql, org_sql, deltas in (
            (self._sql_minutes, self._sql_org_minutes, b.stage_minutes),
            (self._sql_hours, self._sql_org_hours, b.stage_hours),
        ):
            if not deltas:
                continue
            await conn.executemany(
                sql,
                [
                    (
                        bucket_time(bucket),
                        stage,
                        m.started,
                        m.completed,
                        m.failed,
                        m.retried,
                        m.duration_sum_ms,
                        m.duration_max_ms,
                        m.buckets,
                    )
                    for (bucket, stage), m in by_stage(deltas).items()
                ],
            )
            await conn.execute(
                org_sql,
                *_columns(
                    (
                        org,
                        bucket_time(bucket),
                        stage,
                        m.started,
                        m.completed,
                        m.failed,
                        m.retried,
                        m.duration_sum_ms,
                        m.duration_max_ms,
                        _int_array(m.buckets),
                    )
                    for (bucket, org, stage), m in deltas.items()
                ),
            )
        for sql, org_sql, counts_by in (
            (self._sql_request_minutes, self._sql_org_request_minutes, b.request_minutes),
            (self._sql_request_hours, self._sql_org_request_hours, b.request_hours),
        ):
            if not counts_by:
                continue
            await conn.executemany(
                sql, [(bucket_time(at), *v) for at, v in by_bucket(counts_by).items()]
            )
            await conn.execute(
                org_sql,
                *_columns((org, bucket_time(at), *v) for (at, org), v in counts_by.items()),
            )
        counts = [(org, st, n) for (org, st), n in b.status_counts.items() if n]
        if counts:
            await conn.executemany(self._sql_counts, counts)
        if b.breakers:
            await conn.executemany(
                self._sql_breakers,
                [
                    (
                        r.name,
                        r.state,
                        r.fail_counter,
                        r.success_counter,
                        r.total_calls,
                        r.total_failures,
                        r.opened_at,
                        r.changed_at,
                    )
                    for r in b.breakers.values()
                ],
            )
        if b.events:
            # Timeline sequence numbers become visible in the order they are handed out
            # (one writer at a time from here to commit), so a stream reading "seq > n"
            # never skips a row that commits late.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEQ_LOCK)
            await conn.copy_records_to_table(
                "events",
                schema_name=self.schema,
                columns=EVENT_COLUMNS,
                records=b.events,
            )


def _int_array(values: list[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _columns(rows: Any) -> list[list[Any]]:
    """Rows → one list per column (for unnest)."""
    return [list(col) for col in zip(*rows, strict=True)]


def _json_map(values: dict[str, Any]) -> str:
    if not values:
        return "{}"
    parts = []
    for k, v in values.items():
        value = v if isinstance(v, str) else orjson.dumps(v).decode()
        parts.append(f"{orjson.dumps(k).decode()}:{value}")
    return "{" + ",".join(parts) + "}"


#: The UPDATE's unnest columns, in its $n order (see _sql_update_requests).
UPDATE_COLUMNS = (
    "request_id",
    "correlation_id",
    "has_spec",
    *_SPEC_COLUMNS,
    "created_at",
    "status",
    "current_stage",
    "waiting_reason",
    "waiting_detail",
    "waiting_until",
    "error_stage",
    "error_message",
    "error_details",
    "completed_at",
    "failed_at",
    "outputs",
    "attempts",
    "retries",
    "video_url",
    "thumbnail_url",
    "started_at",
    "updated_at",
    "cancelled_at",
    "cancelled_by",
    "cancel_reason",
    "slowest",
)


def _values(d: Any) -> dict[str, Any]:
    """A request delta as column → value (for the COPY of new rows and the UPDATE)."""
    spec = d.spec if d.spec is not None else (None,) * len(_SPEC_COLUMNS)
    values = dict(zip(_SPEC_COLUMNS, spec, strict=True))
    values["waiting_reason"], values["waiting_detail"], values["waiting_until"] = d.waiting
    values["error_stage"], values["error_message"], values["error_details"] = d.error
    values["cancelled_by"], values["cancel_reason"], values["cancelled_at"] = d.cancelled
    values.update(
        request_id=d.request_id,
        correlation_id=d.correlation_id,
        has_spec=d.spec is not None,
        status=d.status,
        current_stage=d.current_stage,
        outputs=_json_map(d.outputs),
        attempts=_json_map(d.attempts),
        slowest=_json_map(d.slowest),
        slowest_ms=_json_map(d.slowest),
        retries=d.retries,
        retry_count=d.retries,
        video_url=d.video_url,
        thumbnail_url=d.thumbnail_url,
        created_at=d.first_seen,
        started_at=d.started_at,
        completed_at=d.completed_at,
        failed_at=d.failed_at,
        updated_at=d.updated_at,
    )
    return values


def _insert_row(d: Any) -> tuple[Any, ...]:
    values = _values(d)
    values["status"] = values["status"] or "running"
    return tuple(values[c] for c in REQUEST_COLUMNS)


def _update_row(d: Any) -> tuple[Any, ...]:
    values = _values(d)
    return tuple(values[c] for c in UPDATE_COLUMNS)
