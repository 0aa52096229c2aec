"""Read-side queries: plain SQL over the denormalised read model (cosmicpython views.py).

Every function takes the caller's :class:`~vividly.runtime.auth.Principal` and limits rows to its
scope in SQL. Timestamps are returned as ISO 8601 strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.projector.fold import ACTIVE, N_BUCKETS, MetricDelta, bucket_time, percentiles
from services.projector.store import LIVE_SCHEMA, quote_ident
from vividly.config import STAGES
from vividly.rules import ID_CHARS
from vividly.runtime.auth import Principal

STATUSES = ("queued", "running", "waiting", "completed", "failed", "cancelled")
_STAGE_ORDER = {s: i for i, s in enumerate(STAGES)}
S = quote_ident(LIVE_SCHEMA)

SUMMARY_COLUMNS = (
    "request_id, correlation_id, status, current_stage, waiting_reason, waiting_until,"
    " topic, grade_level, duration_minutes, student_id, organization_id, error_stage,"
    " error_message, created_at, updated_at, completed_at, failed_at, cancelled_at,"
    " retry_count"
)


# ---------------------------------------------------------------------- filters
@dataclass(frozen=True, slots=True)
class RequestFilter:
    """Which requests a list, a dry run or a bulk action covers (ANDed with the caller's
    scope). ``status`` is a status, "active" or "stalled"; ``stage`` the current stage;
    ``failed_at`` the stage a failed request failed in; ``q`` words of the topic or
    objective, ``error`` words of the error (full-text); ``since``/``until`` bound
    ``created_at``; ``slower_than_ms`` a stage attempt (of ``stage`` when given) longer
    than that."""

    status: str | None = None
    stage: str | None = None
    failed_at: str | None = None
    organization_id: str | None = None
    student_id: str | None = None
    q: str | None = None
    error: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    slower_than_ms: float | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def silent_since_sql() -> str:
    """When a request's clock as "silent" starts: its last event, or the end of a wait
    whose end it was told (a breaker's retry time, a scheduled retry)."""
    return "greatest(updated_at, coalesce(waiting_until, updated_at))"


def expected_sql(expected: dict[str, float], default: float) -> str:
    """Seconds a request may stay silent in its current stage, as SQL (literal numbers
    from the settings, never caller input)."""
    cases = " ".join(
        f"WHEN '{stage}' THEN {float(expected.get(stage, default))!r}" for stage in STAGES
    )
    return f"(CASE current_stage {cases} ELSE {float(default)!r} END)::float8"


def stalled_sql(expected: dict[str, float], default: float) -> str:
    return (
        f"(status IN ('queued', 'running', 'waiting') AND {silent_since_sql()}"
        f" < now() - make_interval(secs => {expected_sql(expected, default)}))"
    )


#: Fewer slow attempts than this and a "slower than" list starts from them; more, and it
#: walks the newest requests reading each one's ``slowest_ms`` (see :func:`slow_matches`).
#: About where the two cost the same at 1M requests (~10 ms each, a bound that ~0.35% of
#: a stage's attempts exceed); most bounds cost far less either way. bench.api measures.
SLOW_RARE = 3500


def _slow_cond(flt: RequestFilter, params: list[Any]) -> str:
    params.append(flt.slower_than_ms)
    cond = f"s.duration_ms > ${len(params)}"
    if flt.stage:
        params.append(flt.stage)
        return f"{cond} AND s.stage = ${len(params)}"
    # The stage leads the duration index: "any stage" is each stage's range.
    params.append(list(STAGES))
    return f"{cond} AND s.stage = ANY(${len(params)}::text[])"


async def slow_matches(conn: Any, flt: RequestFilter) -> list[str] | None:
    """The requests with a stage attempt slower than the filter's bound, when there are
    few such attempts; None when there are many. "Few" is the planner's estimate (from the
    column's statistics: no rows read) under SLOW_RARE, checked by reading at most twice
    that many from the duration index."""
    params: list[Any] = []
    cond = _slow_cond(flt, params)
    sql = f"SELECT s.request_id FROM {S}.request_stages s WHERE {cond}"
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params)
    estimate = orjson.loads(plan)[0]["Plan"]["Plan Rows"]
    if estimate >= SLOW_RARE:
        return None
    rows = await conn.fetch(f"{sql} LIMIT {2 * SLOW_RARE}", *params)
    if len(rows) >= 2 * SLOW_RARE:  # the estimate was far off
        return None
    return list({r["request_id"] for r in rows})


def filter_sql(
    flt: RequestFilter,
    who: Principal,
    params: list[Any],
    expected: dict[str, float],
    default_expected: float,
    slow_ids: list[str] | None = None,
) -> list[str]:
    """The WHERE clauses (ANDed) for ``flt`` within ``who``'s scope, over the requests
    table aliased ``r``; values go into ``params``."""
    where = [who.scope_sql(params)]
    if flt.status == "active":
        params.append(list(ACTIVE))
        where.append(f"status = ANY(${len(params)}::text[])")
    elif flt.status == "stalled":
        where.append(stalled_sql(expected, default_expected))
    elif flt.status:
        params.append(flt.status)
        where.append(f"status = ${len(params)}")
    if flt.failed_at:
        params.append(flt.failed_at)
        where.append(f"status = 'failed' AND error_stage = ${len(params)}")
    for column, value in (
        ("current_stage", flt.stage if flt.slower_than_ms is None else None),
        ("organization_id", flt.organization_id),
        ("student_id", flt.student_id),
    ):
        if value:
            params.append(value)
            where.append(f"{column} = ${len(params)}")
    if flt.q:
        params.append(flt.q)
        where.append(f"search @@ plainto_tsquery('simple', ${len(params)})")
    if flt.error:
        params.append(flt.error)
        where.append(f"error_search @@ plainto_tsquery('simple', ${len(params)})")
    if flt.since is not None:
        params.append(flt.since)
        where.append(f"created_at >= ${len(params)}")
    if flt.until is not None:
        params.append(flt.until)
        where.append(f"created_at < ${len(params)}")
    if slow_ids is not None:
        # Few slow attempts: their requests, by key.
        params.append(slow_ids)
        where.append(f"r.request_id = ANY(${len(params)}::text[])")
    elif flt.slower_than_ms is not None:
        # Many: walk the newest requests, each row carrying its stages' longest attempts
        # (a LIMIT finds its page early).
        params.append(flt.slower_than_ms)
        bound = f"${len(params)}::float8"
        if flt.stage:
            params.append(flt.stage)
            where.append(f"(r.slowest_ms->>${len(params)})::float8 > {bound}")
        else:  # any stage (the stages the duration index is read for too)
            each = ", ".join(f"(r.slowest_ms->>'{stage}')::float8" for stage in STAGES)
            where.append(f"GREATEST({each}) > {bound}")
    return where


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadCursor(ValueError):
    pass


def iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _row(record: Any) -> dict[str, Any]:
    out = {}
    for k, v in record.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
        elif k in ("outputs", "attempts", "metadata", "error_details", "output", "data") and (
            isinstance(v, str)
        ):
            out[k] = orjson.loads(v)
        else:
            out[k] = v
    return out


#: A page cursor: the last row's created_at (microseconds since the epoch) and its
#: request id. Every string of this form is a position, so the schema states exactly
#: which cursors are valid; it holds nothing the caller has not been shown.
CURSOR_PATTERN = rf"^[0-9]{{1,17}}_{ID_CHARS}{{1,128}}$"
_CURSOR = re.compile(CURSOR_PATTERN)


def encode_cursor(created_at: datetime, request_id: str) -> str:
    delta = created_at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{micros}_{request_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, request_id) a page ended at."""
    if not _CURSOR.match(cursor):
        raise BadCursor("cursor: not a cursor this API returned")
    micros, rid = cursor.split("_", 1)
    return _EPOCH + timedelta(microseconds=int(micros)), rid


# ---------------------------------------------------------------------- scoped figures
# Every aggregate is the caller's: an admin reads the global tables, a teacher its
# organization's rows (kept by the fold), a student figures computed from its own rows.
_STAGE_FIGURES = (
    "bucket, stage, started, completed, failed, retried, duration_sum_ms, duration_max_ms,"
    " duration_buckets"
)
_STAGE_EVENTS = ("stage_started", "stage_completed", "stage_failed", "stage_retry_scheduled")


def _bucket(at: datetime, step: int) -> datetime:
    """The start of the minute/hour ``at`` falls in, as the fold buckets it (UTC)."""
    sec = int(at.timestamp())
    return bucket_time(sec - sec % step)


def _kept_scope(who: Principal, table: str, since: datetime) -> tuple[str, str, list[Any]]:
    """Where a metric table the fold keeps (``table`` is its global name) holds the
    caller's rows from ``since``: the global table for an admin, the organization's rows
    for a teacher. (source, condition, arguments)."""
    if who.role == "admin":
        return f"{S}.{table}", "bucket >= $1", [since]
    return f"{S}.org_{table}", "organization_id = $1 AND bucket >= $2", [who.org, since]


async def _kept(conn: Any, who: Principal, columns: str, table: str, since: datetime) -> list[Any]:
    """Rows of a metric table the fold keeps, in the caller's scope (:func:`_kept_scope`)."""
    source, where, args = _kept_scope(who, table, since)
    return list(await conn.fetch(f"SELECT {columns} FROM {source} WHERE {where}", *args))


async def _stage_figures(conn: Any, who: Principal, grain: str, since: datetime) -> list[Any]:
    """Stage metric rows (bucket, stage, counts, histogram) of ``grain`` ("minute" or
    "hour") from ``since``, for the caller's scope."""
    if who.role in ("admin", "teacher"):
        return await _kept(conn, who, _STAGE_FIGURES, f"stage_metrics_{grain}", since)
    # A student: its own requests' stage events, folded as the projector folds them.
    params: list[Any] = []
    scope = who.scope_sql(params)
    params.extend([since, list(_STAGE_EVENTS)])
    rows = await conn.fetch(
        f"SELECT e.event_type, e.stage, e.occurred_at, (e.data->>'duration_ms')::float8 AS ms"
        f" FROM {S}.events e WHERE e.request_id IN (SELECT request_id FROM {S}.requests"
        f" WHERE {scope}) AND e.occurred_at >= ${len(params) - 1}"
        f" AND e.event_type = ANY(${len(params)}::text[])",
        *params,
    )
    step = 60 if grain == "minute" else 3600
    deltas: dict[tuple[datetime, str], MetricDelta] = {}
    for r in rows:
        key = (_bucket(r["occurred_at"], step), r["stage"])
        m = deltas.get(key)
        if m is None:
            m = deltas[key] = MetricDelta()
        kind = r["event_type"]
        if kind == "stage_started":
            m.started += 1
        elif kind == "stage_completed":
            m.observe(r["ms"] or 0.0)
        elif kind == "stage_failed":
            m.failed += 1
        else:
            m.retried += 1
    return [
        {
            "bucket": bucket,
            "stage": stage,
            "started": m.started,
            "completed": m.completed,
            "failed": m.failed,
            "retried": m.retried,
            "duration_sum_ms": m.duration_sum_ms,
            "duration_max_ms": m.duration_max_ms,
            "duration_buckets": m.buckets,
        }
        for (bucket, stage), m in deltas.items()
    ]


async def _stage_totals(conn: Any, who: Principal, since: datetime) -> list[Any]:
    """One row per stage of the minute figures from ``since`` (counts summed, the longest
    attempt, the histograms added bucket by bucket), summed by Postgres: an admin's hour
    is every school's minute rows, and adding their histograms in Python was a quarter of
    the dashboard's time. Admins and teachers (the fold keeps their tables)."""
    table, where, args = _kept_scope(who, "stage_metrics_minute", since)
    return list(
        await conn.fetch(
            f"WITH kept AS (SELECT * FROM {table} WHERE {where}),"
            " hist AS (SELECT k.stage, b.i, sum(b.n)::bigint AS n FROM kept k,"
            " unnest(k.duration_buckets) WITH ORDINALITY AS b(n, i) GROUP BY 1, 2)"
            " SELECT t.*, (SELECT array_agg(h.n ORDER BY h.i) FROM hist h"
            " WHERE h.stage = t.stage) AS duration_buckets"
            " FROM (SELECT stage, sum(started)::bigint AS started,"
            " sum(completed)::bigint AS completed, sum(failed)::bigint AS failed,"
            " sum(retried)::bigint AS retried, max(duration_max_ms) AS duration_max_ms"
            " FROM kept GROUP BY stage) t",
            *args,
        )
    )


async def _request_figures(conn: Any, who: Principal, grain: str, since: datetime) -> list[Any]:
    """Requests created/completed/failed per ``grain`` bucket from ``since``, in scope."""
    if who.role in ("admin", "teacher"):
        columns = "bucket, created, completed, failed"
        return await _kept(conn, who, columns, f"request_metrics_{grain}", since)
    params: list[Any] = []
    scope = who.scope_sql(params)
    params.append(since)
    rows = await conn.fetch(
        f"SELECT created_at, completed_at, failed_at FROM {S}.requests"
        f" WHERE {scope} AND greatest(created_at, completed_at, failed_at) >= ${len(params)}",
        *params,
    )
    step = 60 if grain == "minute" else 3600
    counts: dict[datetime, list[int]] = {}
    for r in rows:
        for i, at in enumerate((r["created_at"], r["completed_at"], r["failed_at"])):
            if at is not None and at >= since:
                counts.setdefault(_bucket(at, step), [0, 0, 0])[i] += 1
    return [
        {"bucket": at, "created": c, "completed": d, "failed": f}
        for at, (c, d, f) in counts.items()
    ]


# ---------------------------------------------------------------------- dashboard
async def stalled_counts(
    conn: Any, who: Principal | None, expected: dict[str, float], default: float
) -> dict[str, int]:
    """Stalled requests per current stage, in ``who``'s scope (None: everyone's)."""
    params: list[Any] = []
    where = [stalled_sql(expected, default)]
    if who is not None:
        where.append(who.scope_sql(params))
    rows = await conn.fetch(
        f"SELECT coalesce(current_stage, '') AS stage, count(*) AS n FROM {S}.requests"
        f" WHERE {' AND '.join(where)} GROUP BY 1",
        *params,
    )
    return {r["stage"]: int(r["n"]) for r in rows}


async def stalled_by_org(
    conn: Any, expected: dict[str, float], default: float
) -> dict[tuple[str, str], int]:
    """Stalled requests per (organization, current stage): counted every few seconds by
    the API for the gauge and the admin and teacher dashboards (one scan of the active
    requests, not one per dashboard call)."""
    rows = await conn.fetch(
        f"SELECT coalesce(organization_id, '') AS org, coalesce(current_stage, '') AS stage,"
        f" count(*) AS n FROM {S}.requests WHERE {stalled_sql(expected, default)}"
        " GROUP BY 1, 2"
    )
    return {(r["org"], r["stage"]): int(r["n"]) for r in rows}


def stalled_in_scope(counts: dict[tuple[str, str], int], who: Principal) -> dict[str, int]:
    """The kept per-organization counts an admin (all) or a teacher (its own) may see."""
    out: dict[str, int] = {}
    for (org, stage), n in counts.items():
        if who.role == "admin" or org == (who.org or ""):
            out[stage] = out.get(stage, 0) + n
    return out


async def dashboard(
    conn: Any,
    who: Principal,
    expected: dict[str, float] | None = None,
    default: float = 900.0,
    stalled: dict[tuple[str, str], int] | None = None,
) -> dict[str, Any]:
    """``stalled``: the API's kept per-organization stalled counts (None: count now)."""
    counts = dict.fromkeys(STATUSES, 0)
    if who.role == "student":
        params: list[Any] = []
        scope = who.scope_sql(params)
        rows = await conn.fetch(
            f"SELECT status, count(*) AS n FROM {S}.requests WHERE {scope} GROUP BY status",
            *params,
        )
    elif who.role == "teacher":
        rows = await conn.fetch(
            f"SELECT status, n FROM {S}.status_counts WHERE organization_id = $1", who.org
        )
    else:
        rows = await conn.fetch(
            f"SELECT status, sum(n)::bigint AS n FROM {S}.status_counts GROUP BY status"
        )
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + int(r["n"])
    since = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
    stage_rows = (
        await _stage_totals(conn, who, since)
        if who.role in ("admin", "teacher")
        else await _stage_figures(conn, who, "minute", since)
    )
    stages: dict[str, dict[str, Any]] = {}
    merged: dict[str, list[int]] = {}
    top: dict[str, float] = {}
    for r in stage_rows:
        st = stages.setdefault(
            r["stage"], {"started": 0, "completed": 0, "failed": 0, "retried": 0}
        )
        for k in ("started", "completed", "failed", "retried"):
            st[k] += r[k]
        top[r["stage"]] = max(top.get(r["stage"], 0.0), r["duration_max_ms"])
        acc = merged.setdefault(r["stage"], [0] * N_BUCKETS)
        for i, n in enumerate(r["duration_buckets"] or ()):
            acc[i] += n
    stage_stats = []
    for stage in STAGES:
        st = stages.get(stage, {"started": 0, "completed": 0, "failed": 0, "retried": 0})
        p50, p95 = percentiles(merged.get(stage, [0] * N_BUCKETS), (0.5, 0.95), top.get(stage))
        ended = st["completed"] + st["failed"]
        stage_stats.append(
            {
                "stage": stage,
                **st,
                "p50_ms": p50,
                "p95_ms": p95,
                "failure_rate": (st["failed"] / ended) if ended else 0.0,
            }
        )
    req = await _request_figures(conn, who, "minute", since)
    completed = sum(int(r["completed"]) for r in req)
    failed = sum(int(r["failed"]) for r in req)
    finished = completed + failed
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "scope": {"role": who.role, "organization_id": who.org},
        "counts": counts,
        "total": sum(counts.values()),
        "active": sum(counts[s] for s in ACTIVE),
        "last_hour": {
            "completed": completed,
            "failed": failed,
            "failure_rate": (failed / finished) if finished else 0.0,
            "stages": stage_stats,
        },
        "breakers": await breakers(conn, who),
        # Unfinished requests not heard of for longer than their stage allows.
        "stalled": (
            stalled_in_scope(stalled, who)
            if stalled is not None and who.role in ("admin", "teacher")
            else await stalled_counts(conn, who, expected or {}, default)
        ),
        # Poison events the fold set aside (every tenant's raw bytes): admins only.
        "quarantined": (
            int(await conn.fetchval(f"SELECT count(*) FROM {S}.quarantine"))
            if who.role == "admin"
            else None
        ),
    }


async def quarantine(conn: Any, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f'SELECT topic, partition, "offset", event_id, request_id, reason, quarantined_at,'
        f" octet_length(raw) AS bytes FROM {S}.quarantine"
        " ORDER BY quarantined_at DESC LIMIT $1",
        limit,
    )
    return [dict(r) for r in rows]


async def breakers(conn: Any, who: Principal) -> list[dict[str, Any]]:
    """Circuit breakers: every reader sees which are open (it explains a waiting request);
    the call and failure counters are every school's traffic, so admins only."""
    if who.role == "admin":
        rows = await conn.fetch(f"SELECT * FROM {S}.breakers ORDER BY name")
    else:
        rows = await conn.fetch(
            f"SELECT name, state, opened_at, changed_at FROM {S}.breakers ORDER BY name"
        )
    return [_row(r) for r in rows]


# ---------------------------------------------------------------------- requests
async def list_requests(
    conn: Any,
    who: Principal,
    flt: RequestFilter,
    *,
    limit: int,
    cursor: str | None,
    expected: dict[str, float],
    default_expected: float,
) -> dict[str, Any]:
    params: list[Any] = []
    slow_ids = await slow_matches(conn, flt) if flt.slower_than_ms is not None else None
    where = filter_sql(flt, who, params, expected, default_expected, slow_ids)
    if cursor:
        at, rid = decode_cursor(cursor)
        params.extend([at, rid])
        where.append(f"(created_at, request_id) < (${len(params) - 1}, ${len(params)})")
    params.append(limit + 1)
    stalled = _STALLED_COLUMNS.format(e=expected_sql(expected, default_expected))
    sql = (
        f"SELECT {SUMMARY_COLUMNS}, {stalled}"
        f" FROM {S}.requests r WHERE {' AND '.join(where)}"
        f" ORDER BY created_at DESC, request_id DESC LIMIT ${len(params)}"
    )
    rows = await conn.fetch(sql, *params)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["request_id"]) if more else None
    items = [_summary(r) for r in rows]
    return {"items": items, "next_cursor": next_cursor, "limit": limit}


#: Per row: seconds since it was last heard of, and the seconds its stage allows.
_STALLED_COLUMNS = (
    "extract(epoch FROM now() - " + silent_since_sql() + ")::float8 AS silent_s, {e} AS expected_s"
)


def _summary(record: Any) -> dict[str, Any]:
    out = _row(record)
    silent = out.pop("silent_s", None)
    expected = out.pop("expected_s", None)
    out["stalled"] = _stalled(out["status"], out.get("current_stage"), silent, expected)
    return out


def _stalled(
    status: str, stage: str | None, silent: float | None, expected: float | None
) -> dict[str, Any] | None:
    """A request not finished and not heard of for longer than its stage allows."""
    if status not in ACTIVE or silent is None or expected is None or silent <= expected:
        return None
    return {"stage": stage, "for_s": round(silent, 2), "expected_s": expected}


async def get_request(
    conn: Any,
    who: Principal,
    request_id: str,
    expected: dict[str, float] | None = None,
    default_expected: float = 900.0,
) -> dict[str, Any] | None:
    e = expected_sql(expected or {}, default_expected)
    row = await conn.fetchrow(
        f"SELECT *, {_STALLED_COLUMNS.format(e=e)} FROM {S}.requests WHERE request_id = $1",
        request_id,
    )
    if row is None or not who.sees(row["organization_id"], row["student_id"]):
        return None
    out = _summary(row)
    out.pop("search", None)
    out.pop("error_search", None)
    stages = await conn.fetch(
        f"SELECT stage, attempt, status, started_at, ended_at, duration_ms, output,"
        f" error_message, error_details, is_retryable, due_at,"
        f" input_item IS NOT NULL AS retryable_from_log"
        f" FROM {S}.request_stages WHERE request_id = $1",
        request_id,
    )
    ordered = sorted(stages, key=lambda s: (_STAGE_ORDER.get(s["stage"], 99), s["attempt"]))
    out["stages"] = [_row(s) for s in ordered]
    if row["status"] in ACTIVE:
        out["reason"] = _reason(row, out["stalled"])
    return out


def _reason(row: Any, stalled: dict[str, Any] | None = None) -> str:
    """Why a request that is not finished is where it is, in words: every active
    request has one."""
    status, stage = row["status"], row["current_stage"]
    if stalled is not None:
        return (
            f"stalled at {stage or 'its start'}: no event for {stalled['for_s']:.0f} s"
            f" (expected within {stalled['expected_s']:.0f} s)"
        )
    if status == "queued":
        return f"queued for {stage}" if stage else "queued"
    if status == "waiting":
        until = row["waiting_until"]
        when = f" until {until.isoformat()}" if until else ""
        return f"{row['waiting_reason']} at {stage}{when}: {row['waiting_detail'] or ''}".rstrip(
            ": "
        )
    return f"running {stage}" if stage else "running"


async def correlation_id(conn: Any, who: Principal, request_id: str) -> str | None:
    """The correlation id (which names the request's trace) of a request in ``who``'s
    scope; None when there is no such request there."""
    row = await conn.fetchrow(
        f"SELECT organization_id, student_id, correlation_id FROM {S}.requests"
        f" WHERE request_id = $1",
        request_id,
    )
    if row is None or not who.sees(row["organization_id"], row["student_id"]):
        return None
    return str(row["correlation_id"] or request_id)


async def request_events(
    conn: Any, who: Principal, request_id: str, after: int, limit: int
) -> dict[str, Any] | None:
    owner = await conn.fetchrow(
        f"SELECT organization_id, student_id FROM {S}.requests WHERE request_id = $1", request_id
    )
    if owner is None or not who.sees(owner["organization_id"], owner["student_id"]):
        return None
    rows = await conn.fetch(
        f"SELECT seq, event_id::text, event_type, stage, attempt, severity, message, data,"
        f" producer, occurred_at FROM {S}.events WHERE request_id = $1 AND seq > $2"
        f" ORDER BY seq LIMIT $3",
        request_id,
        after,
        limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [_row(r) for r in rows],
        "next_after": rows[-1]["seq"] if more else None,
        "limit": limit,
    }


# ---------------------------------------------------------------------- metrics
async def hourly_metrics(conn: Any, who: Principal, hours: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    rows = sorted(
        await _stage_figures(conn, who, "hour", start),
        key=lambda r: (r["bucket"], _STAGE_ORDER.get(r["stage"], 99)),
    )
    buckets: dict[datetime, dict[str, Any]] = {}
    for h in range(hours):
        at = start + timedelta(hours=h)
        buckets[at] = {"hour": at.isoformat(), "stages": {}, "requests": None}
    for r in rows:
        p50, p95, p99 = percentiles(
            list(r["duration_buckets"]), (0.5, 0.95, 0.99), r["duration_max_ms"]
        )
        b = buckets.get(r["bucket"])
        if b is None:
            b = buckets[r["bucket"]] = {
                "hour": r["bucket"].isoformat(),
                "stages": {},
                "requests": None,
            }
        b["stages"][r["stage"]] = {
            "started": r["started"],
            "completed": r["completed"],
            "failed": r["failed"],
            "retried": r["retried"],
            "avg_ms": (r["duration_sum_ms"] / r["completed"]) if r["completed"] else None,
            "max_ms": r["duration_max_ms"] if r["completed"] else None,
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
        }
    for r in await _request_figures(conn, who, "hour", start):
        hour = buckets.get(r["bucket"])
        if hour is not None:
            hour["requests"] = {
                "created": r["created"],
                "completed": r["completed"],
                "failed": r["failed"],
            }
    for b in buckets.values():
        if b["requests"] is None:
            b["requests"] = {"created": 0, "completed": 0, "failed": 0}
    return {"hours": hours, "buckets": [buckets[k] for k in sorted(buckets)]}


# ---------------------------------------------------------------------- retry support
async def retry_source(conn: Any, request_id: str, stage: str) -> tuple[int, bytes] | None:
    """The newest failed attempt of ``stage`` that kept its input, and that input (the
    retry runs as that attempt + 1).

    Numbered from the failed attempt, not from the highest attempt row: a second click
    that reads the request as failed just before the first click's RequestRetried is
    folded (which adds the new attempt's row) must compute the same attempt, so the
    retry log's key refuses it."""
    row = await conn.fetchrow(
        f"SELECT attempt, input_item FROM {S}.request_stages"
        " WHERE request_id = $1 AND stage = $2 AND input_item IS NOT NULL"
        " ORDER BY attempt DESC LIMIT 1",
        request_id,
        stage,
    )
    if row is None:
        return None
    return int(row["attempt"]), bytes(row["input_item"])
