"""The fold: a batch of tracking events in, the changes to the read model out. No I/O.

:func:`fold_batch` takes decoded envelopes (in log order) and what the read model already
knows about the requests they touch (:class:`Known`), and returns a :class:`Batch` of row
changes that ``store.py`` writes in one transaction. Dispatch is by event type through
``_FOLDERS`` (one function per past-tense event), never by if-chains.

Rules a reader of the tables can rely on:

- A request's ``status`` is one of queued, running, waiting, completed, failed. Once it is
  completed or failed, only a ``RequestRetried`` moves it again (late stage events, e.g.
  the error email's bookkeeping, do not reopen it).
- ``waiting_*`` and ``error_*`` describe the current status only: a status change rewrites
  them (cleared unless the new status sets them).
- Stage rows are per attempt; a later event about the same attempt wins field by field.
- Metrics count stage starts, completions (with a duration histogram), failures and
  scheduled retries per minute and per hour of the event's own time.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

import orjson

from vividly.events import SCHEMA_VERSION, SEVERITY_NAMES, Envelope

#: Upper bounds (ms) of the duration histogram buckets; one more bucket holds the rest.
DURATION_BOUNDS_MS: tuple[float, ...] = (
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
)
N_BUCKETS = len(DURATION_BOUNDS_MS) + 1

ACTIVE = ("queued", "running", "waiting")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: A stage attempt's statuses that nothing later changes (see store.py's merge too):
#: "abandoned" is an attempt still open when its request failed, "cancelled" one open
#: when its request was cancelled.
ATTEMPT_FINAL = frozenset({"completed", "failed", "abandoned", "cancelled"})
#: Attempt statuses a request's end closes.
ATTEMPT_OPEN = ("running", "scheduled")
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
#: Seconds of the datetimes Postgres and Python both hold (years 1..9999).
_MIN_S, _MAX_S = -62135596800, 253402300799


def ts(t: Any) -> datetime:
    """A protobuf Timestamp as an aware datetime (UTC)."""
    return datetime.fromtimestamp(t.seconds + t.nanos / 1e9, UTC)


def bucket_time(epoch_s: int) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _json_text(raw: bytes) -> str:
    """Stored JSON object text; anything that is not a JSON object becomes {}."""
    if not raw:
        return "{}"
    text = raw.decode("utf-8", "replace")
    return text if text.lstrip().startswith("{") else "{}"


@dataclass(slots=True)
class Known:
    """What the read model holds already for a request the batch touches."""

    status: str
    organization_id: str | None = None
    student_id: str | None = None


@dataclass(slots=True)
class RequestDelta:
    """Changes to one request row. None means "leave as it is"."""

    request_id: str
    first_seen: datetime
    updated_at: datetime
    correlation_id: str | None = None
    spec: tuple[Any, ...] | None = None  # student, org, topic, objective, grade, minutes, meta, key
    status: str | None = None
    current_stage: str | None = None
    waiting: tuple[str | None, str | None, datetime | None] = (None, None, None)
    error: tuple[str | None, str | None, str | None] = (None, None, None)
    outputs: dict[str, str] = field(default_factory=dict)  # stage -> JSON object text
    attempts: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    video_url: str | None = None
    thumbnail_url: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    cancelled: tuple[str | None, str | None, datetime | None] = (None, None, None)
    #: stage -> the longest attempt of it in this batch (ms); stored as the per-stage max
    slowest: dict[str, float] = field(default_factory=dict)

    def slower(self, stage: str, duration_ms: float) -> None:
        if duration_ms > self.slowest.get(stage, -math.inf):
            self.slowest[stage] = duration_ms

    def set_status(self, status: str, at: datetime) -> None:
        self.status = status
        self.waiting = (None, None, None)
        self.error = (None, None, None)
        self.cancelled = (None, None, None)
        self.completed_at = at if status == "completed" else None
        self.failed_at = at if status == "failed" else None


@dataclass(slots=True)
class StageDelta:
    """Changes to one stage-attempt row; None fields keep the stored value."""

    status: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_ms: float | None = None
    output: str | None = None
    error_message: str | None = None
    error_details: str | None = None
    is_retryable: bool | None = None
    due_at: datetime | None = None
    input_item: bytes | None = None


@dataclass(slots=True)
class MetricDelta:
    started: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    duration_sum_ms: float = 0.0
    duration_max_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)

    def add(self, other: MetricDelta) -> None:
        self.started += other.started
        self.completed += other.completed
        self.failed += other.failed
        self.retried += other.retried
        self.duration_sum_ms += other.duration_sum_ms
        if other.duration_max_ms > self.duration_max_ms:
            self.duration_max_ms = other.duration_max_ms
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    def observe(self, duration_ms: float) -> None:
        self.completed += 1
        self.duration_sum_ms += duration_ms
        if duration_ms > self.duration_max_ms:
            self.duration_max_ms = duration_ms
        self.buckets[bisect.bisect_left(DURATION_BOUNDS_MS, duration_ms)] += 1


@dataclass(slots=True)
class BreakerRow:
    name: str
    state: str
    fail_counter: int
    success_counter: int
    total_calls: int
    total_failures: int
    opened_at: datetime | None
    changed_at: datetime


#: A timeline row, in EVENT_COLUMNS order.
EventRow = tuple[Any, ...]


EVENT_COLUMNS = (
    "event_id",
    "request_id",
    "correlation_id",
    "organization_id",
    "student_id",
    "event_type",
    "stage",
    "attempt",
    "severity",
    "message",
    "data",
    "producer",
    "occurred_at",
)


@dataclass
class Batch:
    """Everything one batch of events changes."""

    known: dict[str, Known]
    events: list[EventRow] = field(default_factory=list)
    requests: dict[str, RequestDelta] = field(default_factory=dict)
    stages: dict[tuple[str, str, int], StageDelta] = field(default_factory=dict)
    # Metric buckets are keyed by their start in epoch seconds (see bucket_time()) and the
    # request's organization ('' for none); the store adds them up for the global tables.
    stage_minutes: dict[tuple[int, str, str], MetricDelta] = field(default_factory=dict)
    stage_hours: dict[tuple[int, str, str], MetricDelta] = field(default_factory=dict)
    # (bucket, organization) -> [created, completed, failed]
    request_minutes: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    request_hours: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    status_counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (org, status)
    # The attempts the read model holds open (running or scheduled) for requests that
    # end in this batch: (stage, attempt) per request, so the end closes them exactly
    # as a fold of one event at a time would.
    open_attempts: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    stage_keys: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    breakers: dict[str, BreakerRow] = field(default_factory=dict)
    skipped: int = 0
    now_s: int = 0

    # ------------------------------------------------------------------ helpers
    def request(self, env: Envelope, at: datetime) -> RequestDelta:
        rid = env.request_id
        delta = self.requests.get(rid)
        if delta is None:
            delta = self.requests[rid] = RequestDelta(rid, at, at)
        delta.updated_at = at
        if env.correlation_id and delta.correlation_id is None:
            delta.correlation_id = env.correlation_id
        return delta

    def status_of(self, rid: str) -> str | None:
        delta = self.requests.get(rid)
        if delta is not None and delta.status is not None:
            return delta.status
        known = self.known.get(rid)
        return known.status if known is not None else None

    def move(self, delta: RequestDelta, status: str, at: datetime, *, reopen: bool = False) -> bool:
        """Change a request's status, keeping the per-organization counts right. A
        terminal request only moves when ``reopen`` (a retry). Returns whether it moved."""
        old = self.status_of(delta.request_id)
        if old in TERMINAL and not reopen:
            return False
        org = self.org_of(delta.request_id) or ""
        if old is not None:
            key = (org, old)
            self.status_counts[key] = self.status_counts.get(key, 0) - 1
        key = (org, status)
        self.status_counts[key] = self.status_counts.get(key, 0) + 1
        delta.set_status(status, at)
        return True

    def org_of(self, rid: str) -> str | None:
        delta = self.requests.get(rid)
        if delta is not None and delta.spec is not None:
            return str(delta.spec[1])
        known = self.known.get(rid)
        return known.organization_id if known is not None else None

    def student_of(self, rid: str) -> str | None:
        delta = self.requests.get(rid)
        if delta is not None and delta.spec is not None:
            return str(delta.spec[0])
        known = self.known.get(rid)
        return known.student_id if known is not None else None

    def stage(self, rid: str, stage: str, attempt: int, status: str) -> StageDelta:
        """The attempt's row. Its first outcome (completed or failed) is final: a
        redelivered StageStarted never turns a finished attempt back to running."""
        key = (rid, stage, attempt)
        row = self.stages.get(key)
        if row is None:
            row = self.stages[key] = StageDelta(status)
            self.stage_keys.setdefault(rid, []).append(key)
        elif row.status not in ATTEMPT_FINAL:
            row.status = status
        return row

    def close_attempts(self, rid: str, status: str, at: datetime) -> None:
        """The request ended: no attempt of it stays running or scheduled, whether this
        batch opened it or an earlier one (then its row changes here; a later event
        about it cannot reopen a closed attempt)."""
        for stage, attempt in self.open_attempts.get(rid, ()):
            if (rid, stage, attempt) not in self.stages:
                self.stage(rid, stage, attempt, "running")
        for key in self.stage_keys.get(rid, ()):
            row = self.stages[key]
            if row.status in ATTEMPT_OPEN:
                row.status = status
                row.ended_at = row.ended_at or at

    def metric(self, rid: str, stage: str) -> tuple[MetricDelta, MetricDelta]:
        sec = self.now_s  # the current event's time, whole seconds (cheaper than datetimes)
        org = self.org_of(rid) or ""
        mk, hk = (sec - sec % 60, org, stage), (sec - sec % 3600, org, stage)
        m = self.stage_minutes.get(mk)
        if m is None:
            m = self.stage_minutes[mk] = MetricDelta()
        h = self.stage_hours.get(hk)
        if h is None:
            h = self.stage_hours[hk] = MetricDelta()
        return m, h

    def count_request(self, rid: str, column: int) -> None:
        sec = self.now_s
        org = self.org_of(rid) or ""
        for table, bucket in (
            (self.request_minutes, (sec - sec % 60, org)),
            (self.request_hours, (sec - sec % 3600, org)),
        ):
            row = table.get(bucket)
            if row is None:
                row = table[bucket] = [0, 0, 0]
            row[column] += 1


# ---------------------------------------------------------------------- one per event
# Each returns (stage, attempt, severity, message, data-JSON-text) for the timeline row.
Timeline = tuple[str | None, int | None, str, str, str]
Folder = Callable[[Batch, Envelope, Any, datetime], Timeline]


def _request_created(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    r = ev.request
    d = b.request(env, at)
    d.spec = (
        r.student_id,
        r.organization_id,
        r.topic,
        r.learning_objective,
        r.grade_level,
        r.duration_minutes,
        _json_text(r.metadata_json),
        r.idempotency_key or None,
    )
    d.first_seen = at
    if b.status_of(env.request_id) is None:
        b.move(d, "queued", at)
        b.count_request(env.request_id, 0)
    data = orjson.dumps(
        {
            "topic": r.topic,
            "learning_objective": r.learning_objective,
            "grade_level": r.grade_level,
            "duration_minutes": r.duration_minutes,
        }
    ).decode()
    return None, None, "info", f"Request created: {r.topic}", data


def _request_started(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    if d.started_at is None:
        d.started_at = at
    b.move(d, "running", at)
    return None, None, "info", "Request started", "{}"


def _stage_started(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    if b.move(d, "running", at):
        d.current_stage = ev.stage
    d.attempts[ev.stage] = ev.attempt
    row = b.stage(env.request_id, ev.stage, ev.attempt, "running")
    if row.started_at is None:
        row.started_at = at
    m, h = b.metric(env.request_id, ev.stage)
    m.started += 1
    h.started += 1
    return ev.stage, ev.attempt, "info", f"{ev.stage} started (attempt {ev.attempt})", "{}"


def _stage_completed(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    output = _json_text(ev.output_json)
    d.outputs[ev.stage] = output
    if b.status_of(env.request_id) not in TERMINAL:
        d.current_stage = ev.stage
    row = b.stage(env.request_id, ev.stage, ev.attempt, "completed")
    row.ended_at = at
    row.duration_ms = ev.duration_ms
    d.slower(ev.stage, ev.duration_ms)
    row.output = output
    m, h = b.metric(env.request_id, ev.stage)
    m.observe(ev.duration_ms)
    h.observe(ev.duration_ms)
    # The output itself is on the stage row and the request; the timeline stays lean.
    data = f'{{"duration_ms":{ev.duration_ms!r}}}'
    msg = f"{ev.stage} completed in {ev.duration_ms / 1000:.2f} s"
    return ev.stage, ev.attempt, "info", msg, data


def _stage_failed(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    if b.status_of(env.request_id) not in TERMINAL:
        d.current_stage = ev.stage
    details = _json_text(ev.error_details_json)
    row = b.stage(env.request_id, ev.stage, ev.attempt, "failed")
    row.ended_at = at
    row.duration_ms = ev.duration_ms
    d.slower(ev.stage, ev.duration_ms)
    row.error_message = ev.error_message
    row.error_details = details
    row.is_retryable = ev.is_retryable
    if ev.HasField("input"):
        # Deterministic: a map field's order otherwise varies between processes, and a
        # rebuild must store the same bytes as the live fold did.
        row.input_item = ev.input.SerializeToString(deterministic=True)
    m, h = b.metric(env.request_id, ev.stage)
    m.failed += 1
    h.failed += 1
    data = (
        f'{{"error_message":{orjson.dumps(ev.error_message).decode()},'
        f'"is_retryable":{"true" if ev.is_retryable else "false"},'
        f'"duration_ms":{ev.duration_ms!r},"error_details":{details}}}'
    )
    msg = f"{ev.stage} failed: {ev.error_message}"
    return ev.stage, ev.attempt, "error", msg, data


def _stage_retry_scheduled(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    due = ts(ev.due_at)
    if b.move(d, "waiting", at):
        d.current_stage = ev.stage
        d.waiting = ("retry_scheduled", ev.reason, due)
    row = b.stage(env.request_id, ev.stage, ev.attempt, "scheduled")
    row.due_at = due
    m, h = b.metric(env.request_id, ev.stage)
    m.retried += 1
    h.retried += 1
    data = orjson.dumps({"due_at": due.isoformat(), "reason": ev.reason}).decode()
    msg = f"{ev.stage} retry {ev.attempt} scheduled for {due:%H:%M:%S}"
    return ev.stage, ev.attempt, "warning", msg, data


def _request_waiting(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    until = ts(ev.until) if ev.HasField("until") else None
    if b.move(d, "waiting", at):
        d.current_stage = ev.stage
        d.waiting = (ev.reason, ev.detail, until)
    data = orjson.dumps(
        {"reason": ev.reason, "detail": ev.detail, "until": until.isoformat() if until else None}
    ).decode()
    return ev.stage or None, None, "warning", f"Waiting: {ev.reason} ({ev.detail})", data


def _event_logged(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    b.request(env, at)
    severity = SEVERITY_NAMES.get(ev.severity, "info")  # 0 (unset) reads as info
    data = _json_text(ev.event_data_json)
    return ev.stage or None, None, severity, ev.message or ev.event_type, data


def _request_completed(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    if b.move(d, "completed", at):
        d.video_url = ev.video_url or None
        d.thumbnail_url = ev.thumbnail_url or None
        b.count_request(env.request_id, 1)
    data = orjson.dumps({"video_url": ev.video_url, "thumbnail_url": ev.thumbnail_url}).decode()
    return None, None, "info", "Request completed", data


def _request_failed(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    details = _json_text(ev.error_details_json)
    if b.move(d, "failed", at):
        d.current_stage = ev.error_stage or d.current_stage
        d.error = (ev.error_stage, ev.error_message, details)
        b.count_request(env.request_id, 2)
        b.close_attempts(env.request_id, "abandoned", at)
    data = (
        f'{{"error_stage":{orjson.dumps(ev.error_stage).decode()},'
        f'"error_message":{orjson.dumps(ev.error_message).decode()},"error_details":{details}}}'
    )
    msg = f"Request failed at {ev.error_stage}: {ev.error_message}"
    return ev.error_stage or None, None, "error", msg, data


def _request_retried(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    b.move(d, "queued", at, reopen=True)
    d.current_stage = ev.stage
    d.retries += 1
    d.attempts[ev.stage] = ev.attempt
    row = b.stage(env.request_id, ev.stage, ev.attempt, "scheduled")
    row.due_at = at
    data = orjson.dumps({"requested_by": ev.requested_by, "bulk_id": ev.bulk_id or None}).decode()
    msg = f"Retry of {ev.stage} (attempt {ev.attempt}) requested by {ev.requested_by}"
    return ev.stage, ev.attempt, "warning", msg, data


def _request_cancelled(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    d = b.request(env, at)
    moved = b.move(d, "cancelled", at)
    if moved:
        d.cancelled = (ev.requested_by, ev.reason, at)
        b.close_attempts(env.request_id, "cancelled", at)
    data = orjson.dumps(
        {"requested_by": ev.requested_by, "reason": ev.reason, "bulk_id": ev.bulk_id or None}
    ).decode()
    msg = f"Cancelled by {ev.requested_by}" + (f": {ev.reason}" if ev.reason else "")
    if not moved:
        msg += " (it had already ended)"
    return d.current_stage, None, "warning", msg, data


def _bulk_action_requested(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    data = orjson.dumps(
        {
            "bulk_id": ev.bulk_id,
            "action": ev.action,
            "requested_by": ev.requested_by,
            "filter": orjson.loads(_json_text(ev.filter_json)),
            "count": ev.count,
            "organization_id": ev.organization_id,
            "reason": ev.reason,
        }
    ).decode()
    msg = f"Bulk {ev.action} of {ev.count} request(s) by {ev.requested_by}"
    return None, None, "warning", msg, data


def _breaker_state_changed(b: Batch, env: Envelope, ev: Any, at: datetime) -> Timeline:
    old = b.breakers.get(ev.breaker)
    opened = at if ev.new_state == "open" else (old.opened_at if old else None)
    b.breakers[ev.breaker] = BreakerRow(
        ev.breaker,
        ev.new_state,
        ev.fail_counter,
        ev.success_counter,
        ev.total_calls,
        ev.total_failures,
        opened if ev.new_state != "closed" else None,
        at,
    )
    data = orjson.dumps(
        {
            "breaker": ev.breaker,
            "old_state": ev.old_state,
            "new_state": ev.new_state,
            "fail_counter": ev.fail_counter,
            "total_calls": ev.total_calls,
            "total_failures": ev.total_failures,
        }
    ).decode()
    severity = "warning" if ev.new_state != "closed" else "info"
    return None, None, severity, f"Breaker {ev.breaker}: {ev.old_state} -> {ev.new_state}", data


_FOLDERS: dict[str, Folder] = {
    "request_created": _request_created,
    "request_started": _request_started,
    "stage_started": _stage_started,
    "stage_completed": _stage_completed,
    "stage_failed": _stage_failed,
    "stage_retry_scheduled": _stage_retry_scheduled,
    "request_waiting": _request_waiting,
    "event_logged": _event_logged,
    "request_completed": _request_completed,
    "request_failed": _request_failed,
    "request_retried": _request_retried,
    "breaker_state_changed": _breaker_state_changed,
    "request_cancelled": _request_cancelled,
    "bulk_action_requested": _bulk_action_requested,
}
FOLDED_TYPES = frozenset(_FOLDERS)


def poison_reason(env: Envelope) -> str | None:
    """Why an envelope cannot be folded (it goes to quarantine), or None. Cheap checks
    only; what Postgres itself rejects is isolated and quarantined by the projector."""
    if not env.event_id:
        return "no event_id"
    if not _UUID.match(env.event_id):
        return f"event_id {env.event_id[:60]!r} is not a UUID"
    if not _MIN_S <= env.occurred_at.seconds <= _MAX_S:
        return f"occurred_at {env.occurred_at.seconds} s is out of range"
    kind = env.WhichOneof("event")
    if kind is None and env.schema_version <= SCHEMA_VERSION:
        # Not an event type of a newer schema (those are skipped): a truncated or
        # garbled envelope.
        return f"no event in the envelope (schema version {env.schema_version})"
    if kind in ("stage_completed", "stage_failed"):
        duration = getattr(env, kind).duration_ms
        if not math.isfinite(duration):
            return f"{kind}.duration_ms is {duration!r}"
    if kind in ("stage_retry_scheduled", "request_waiting"):
        t = (
            env.stage_retry_scheduled.due_at
            if kind == "stage_retry_scheduled"
            else env.request_waiting.until
        )
        if not _MIN_S <= t.seconds <= _MAX_S:
            return f"{kind} time {t.seconds} s is out of range"
    return None


#: The events that end a request (and close its open attempts).
ENDINGS = frozenset({"request_failed", "request_cancelled"})


def fold_batch(
    envelopes: Iterable[Envelope],
    known: dict[str, Known],
    open_attempts: dict[str, list[tuple[str, int]]] | None = None,
) -> Batch:
    """Fold envelopes (log order, duplicates already removed) into row changes.
    ``open_attempts``: the stored open attempts of the requests that end in the batch
    (see :data:`ENDINGS`)."""
    batch = Batch(known, open_attempts=open_attempts or {})
    append = batch.events.append
    owners: dict[str, tuple[str | None, str | None]] = {}
    for env in envelopes:
        kind = env.WhichOneof("event")
        folder = _FOLDERS.get(kind) if kind else None
        if folder is None:  # an event type from a newer schema: skip, never crash
            batch.skipped += 1
            continue
        batch.now_s = env.occurred_at.seconds
        at = ts(env.occurred_at)
        stage, attempt, severity, message, data = folder(batch, env, getattr(env, kind), at)
        rid = env.request_id or None
        if rid is None:
            org = student = None
        else:
            owner = owners.get(rid)
            if owner is None or owner[0] is None:
                owner = owners[rid] = (batch.org_of(rid), batch.student_of(rid))
            org, student = owner
        append(
            (
                env.event_id,
                rid,
                env.correlation_id,
                org,
                student,
                env.event_logged.event_type or kind if kind == "event_logged" else kind,
                stage,
                attempt,
                severity,
                message,
                data,
                env.producer,
                at,
            )
        )
    for rid, delta in batch.requests.items():  # first seen without RequestCreated
        if delta.status is None and rid not in known:
            batch.move(delta, "running", delta.first_seen)
    return batch


def by_stage(deltas: dict[tuple[int, str, str], MetricDelta]) -> dict[tuple[int, str], MetricDelta]:
    """Per-organization stage deltas added up per (bucket, stage): the global rows."""
    out: dict[tuple[int, str], MetricDelta] = {}
    for (bucket, _org, stage), m in deltas.items():
        acc = out.get((bucket, stage))
        if acc is None:
            acc = out[(bucket, stage)] = MetricDelta()
        acc.add(m)
    return out


def by_bucket(counts: dict[tuple[int, str], list[int]]) -> dict[int, list[int]]:
    """Per-organization request counts added up per bucket: the global rows."""
    out: dict[int, list[int]] = {}
    for (bucket, _org), v in counts.items():
        acc = out.setdefault(bucket, [0, 0, 0])
        for i, n in enumerate(v):
            acc[i] += n
    return out


def percentiles(
    buckets: list[int], qs: Iterable[float], ceiling: float | None = None
) -> list[float | None]:
    """Quantiles from a duration histogram, interpolated linearly inside a bucket (as
    Prometheus' histogram_quantile does), never above ``ceiling`` (the largest duration
    observed). None when the histogram is empty."""
    # Cumulative counts, then a binary search per quantile (both in C): the API computes
    # three quantiles for each of a day's 144 stage rows on every metrics call.
    cum = list(accumulate(buckets))
    total = cum[-1] if cum else 0
    out: list[float | None] = []
    if total == 0:
        return [None for _ in qs]
    last = len(DURATION_BOUNDS_MS)
    for q in qs:
        rank = q * total
        # The first bucket whose cumulative count reaches the rank; it is never empty
        # (for a rank of 0, the first non-empty bucket).
        i = bisect.bisect_left(cum, rank) if rank > 0 else bisect.bisect_right(cum, 0)
        if i == len(cum):  # a quantile above 1: no bucket reaches it
            out.append(None)
            continue
        seen = cum[i - 1] if i > 0 else 0
        lo = DURATION_BOUNDS_MS[i - 1] if i > 0 else 0.0
        hi = DURATION_BOUNDS_MS[i] if i < last else lo * 2
        value = lo + (hi - lo) * (rank - seen) / (cum[i] - seen)
        out.append(min(value, ceiling) if ceiling is not None else value)
    return out
