"""RequestTracker: the integration guide's API, publishing immutable events to Kafka.

Every call builds one :class:`~vividly.events.Envelope` and hands it to a
:class:`~vividly.publish.Publisher` keyed by ``request_id``, so one request's events
stay in order. Publishing only enqueues (librdkafka's buffer), so the calls are cheap
and safe to make from asyncio code as well as from threads.

Bad calls fail fast, before anything is published: :class:`UnknownStageError`,
:class:`UnknownSeverityError`, :class:`PayloadError`.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import math
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import orjson
import uuid_utils

from vividly import errors, metrics, tracing
from vividly.config import STAGES, TRACKING_TOPIC, Settings
from vividly.events import (
    ENVELOPE_TYPE,
    EVENT_TYPES,
    H_CORRELATION,
    H_EVENT_TYPE,
    H_TRACEPARENT,
    H_TYPE,
    SCHEMA_VERSION,
    SEVERITIES,
    Envelope,
    RequestSpec,
    WorkItem,
    traceparent_for,
)
from vividly.publish import DeliveryFailed, FlushReport, Publisher

__all__ = [
    "STAGES",
    "PayloadError",
    "Position",
    "ReadModelBehind",
    "ReadSideUnavailable",
    "RequestContext",
    "RequestTracker",
    "StatusReader",
    "TrackerError",
    "TrackingSession",
    "UnknownSeverityError",
    "UnknownStageError",
    "current_request",
]

_STAGE_SET = frozenset(STAGES)
_TYPE_HEADER = (H_TYPE, ENVELOPE_TYPE.encode())
_KIND_HEADERS = {kind: (H_EVENT_TYPE, kind.encode()) for kind in EVENT_TYPES}
_uuid7 = uuid_utils.uuid7
_time_ns = time.time_ns
#: Namespace for request ids derived from an idempotency key.
_IDEMPOTENCY_NS = uuid_utils.UUID("5b0f7c4e-8f0a-4c1e-9a57-6d3c1f1f7a10")


class TrackerError(ValueError):
    """A tracker call was given something it cannot publish."""


class UnknownStageError(TrackerError):
    def __init__(self, stage: object) -> None:
        super().__init__(f"unknown stage {stage!r}; the stages are: {', '.join(STAGES)}")


class UnknownSeverityError(TrackerError):
    def __init__(self, severity: object) -> None:
        super().__init__(f"unknown severity {severity!r}; use one of: {', '.join(SEVERITIES)}")


class PayloadError(TrackerError):
    """Output/event/error data that is not a JSON object, not serialisable, or too large."""


class ReadSideUnavailable(RuntimeError):
    """get_request_status / retry_stage need the read model; none was given."""


class ReadModelBehind(TimeoutError):
    """The read side could not show this tracker's own writes in time: the log had not
    acknowledged them, or the projector had not folded past them. ``wanted`` is the
    position waited for; ``folded`` how far the read model had got (when known)."""

    def __init__(self, message: str, wanted: Position | None = None, folded: int | None = None):
        super().__init__(message)
        self.wanted = wanted
        self.folded = folded


@dataclass(frozen=True, slots=True)
class Position:
    """Where an event landed in the log: a read model that has folded ``partition`` of
    ``topic`` past ``offset`` reflects it (and everything before it on that partition:
    one request's events share a partition)."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


class StatusReader(Protocol):
    """The read side the tracker asks for status and retries (monitoring API / read model).

    ``position``, when given, is the last event this tracker wrote for the request: the
    reader answers only once its read model reflects it (waiting at most ``wait_s``), and
    raises :class:`ReadModelBehind` when it cannot."""

    def get_request_status(
        self, request_id: str, position: Position | None = None, wait_s: float = 5.0
    ) -> dict[str, Any] | None: ...

    def retry_stage(
        self,
        request_id: str,
        stage: str,
        requested_by: str,
        position: Position | None = None,
        wait_s: float = 5.0,
    ) -> bool: ...


@dataclass(frozen=True, slots=True)
class TrackingSession:
    """What a tracker needs, handed over as one object: the seed guide's
    ``RequestTracker(db)`` takes one of these as its ``db``."""

    publisher: Publisher
    status_reader: StatusReader | None = None
    producer: str = "vividly"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The request a piece of code is working on: set by the consumer loop per message."""

    request_id: str
    correlation_id: str
    traceparent: str = ""
    attempt: int = 1
    work_item: WorkItem | None = None


#: The request being handled in the current task/thread, if any.
current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "vividly_current_request", default=None
)

#: A message as published: (topic, key, value, headers).
Captured = tuple[str, bytes, bytes, list[tuple[str, bytes]]]
_capture: contextvars.ContextVar[list[Captured] | None] = contextvars.ContextVar(
    "vividly_capture", default=None
)


class RequestTracker:
    """Publishes the lifecycle of requests as events on ``tracking.events``.

    ``publisher`` is a :class:`~vividly.publish.KafkaPublisher` in services and a
    :class:`~vividly.testing.FakePublisher` in unit tests. ``producer`` names the
    service on every event. ``status_reader`` backs :meth:`get_request_status` and
    :meth:`retry_stage`.
    """

    def __init__(
        self,
        publisher: Publisher | TrackingSession,
        *,
        producer: str | None = None,
        topic: str = TRACKING_TOPIC,
        max_payload_bytes: int = 64 * 1024,
        status_reader: StatusReader | None = None,
        correlation_cache_size: int = 100_000,
        read_timeout_s: float = 10.0,
    ) -> None:
        if isinstance(publisher, TrackingSession):
            session = publisher
            publisher = session.publisher
            status_reader = status_reader or session.status_reader
            producer = producer or session.producer
        self.publisher = publisher
        self.producer = producer or "vividly"
        self.topic = topic
        self.max_payload_bytes = max_payload_bytes
        self.status_reader = status_reader
        self.read_timeout_s = read_timeout_s
        self._correlations: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._correlation_cache_size = correlation_cache_size
        self._stage_starts: dict[tuple[str, str], float] = {}
        self.last_created: RequestSpec | None = None
        # Read-your-writes: per request (key bytes), how many events this tracker handed
        # to the publisher, and how many delivery reports came back with the last one's
        # position; written by the caller's thread and the delivery thread respectively.
        self._sent: dict[bytes, int] = {}
        self._landed: dict[bytes, tuple[int, int, int]] = {}  # n, partition, offset
        self._lost: dict[bytes, str] = {}
        self._last_started: dict[bytes, str] = {}
        self._landing = threading.Condition()
        self._waiting = 0
        self._on_delivery = self._delivered

    @classmethod
    def from_settings(
        cls, settings: Settings, publisher: Publisher, status_reader: StatusReader | None = None
    ) -> RequestTracker:
        return cls(
            publisher,
            producer=settings.producer_name,
            max_payload_bytes=settings.max_payload_bytes,
            status_reader=status_reader,
        )

    # ------------------------------------------------------------------ request lifecycle
    def create_request(
        self,
        student_id: str,
        topic: str,
        learning_objective: str,
        grade_level: str,
        duration_minutes: int,
        metadata: Mapping[str, Any] | None = None,
        *,
        organization_id: str = "",
        idempotency_key: str | None = None,
        student_email: str = "",
    ) -> tuple[str, str]:
        """Record a new request; returns ``(request_id, correlation_id)``.

        With an ``idempotency_key`` both ids are derived from (organization, student,
        key), so submitting the same key twice yields the same request, and the read
        model folds the second RequestCreated into the first.
        """
        for name, text in (
            ("student_id", student_id),
            ("organization_id", organization_id),
            ("topic", topic),
            ("learning_objective", learning_objective),
            ("grade_level", str(grade_level)),
            ("idempotency_key", idempotency_key or ""),
            ("student_email", student_email),
        ):
            if "\x00" in text:
                # Postgres text holds no NUL: the read model could not fold the request.
                raise PayloadError(f"{name}: a NUL character cannot be stored")
        metadata_json = self._json(metadata, "metadata")
        if idempotency_key:
            seed = f"{organization_id}\x1f{student_id}\x1f{idempotency_key}"
            request_id = str(uuid_utils.uuid5(_IDEMPOTENCY_NS, seed))
            correlation_id = str(uuid_utils.uuid5(_IDEMPOTENCY_NS, "corr\x1f" + seed))
        else:
            request_id = str(uuid_utils.uuid7())
            correlation_id = str(uuid_utils.uuid4())
        self.bind(request_id, correlation_id)
        env = self._envelope(request_id)
        env.request_created.request.CopyFrom(
            RequestSpec(
                student_id=student_id,
                organization_id=organization_id,
                topic=topic,
                learning_objective=learning_objective,
                grade_level=str(grade_level),
                duration_minutes=int(duration_minutes),
                metadata_json=metadata_json,
                idempotency_key=idempotency_key or "",
                student_email=student_email,
            )
        )
        self._send(env, "request_created")
        self.last_created = env.request_created.request
        return request_id, correlation_id

    def start_request(self, request_id: str) -> None:
        env = self._envelope(request_id)
        env.request_started.SetInParent()
        self._send(env, "request_started")

    def complete_request(
        self,
        request_id: str,
        video_url: str = "",
        script_text: str = "",
        thumbnail_url: str = "",
    ) -> None:
        env = self._envelope(request_id)
        ev = env.request_completed
        ev.video_url = video_url or ""
        ev.script_text = script_text or ""
        ev.thumbnail_url = thumbnail_url or ""
        ev.SetInParent()
        self._send(env, "request_completed")
        metrics.requests_finished.labels("completed").inc()

    def fail_request(
        self,
        request_id: str,
        error_message: str,
        error_stage: str | None = None,
        error_details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the request as failed. Without ``error_stage`` (or with ``"unknown"``)
        the stage is the one this tracker last started for the request, if any; otherwise
        it must be a stage name."""
        if error_stage in (None, "", "unknown"):
            error_stage = self._last_started.get(request_id.encode(), "")
        else:
            self._check_stage(error_stage)
        details = self._json(error_details, "error_details")
        env = self._envelope(request_id)
        ev = env.request_failed
        ev.error_message = error_message
        ev.error_stage = error_stage or ""
        ev.error_details_json = details
        ev.SetInParent()
        self._send(env, "request_failed")
        metrics.requests_finished.labels("failed").inc()

    # ------------------------------------------------------------------ stages
    def start_stage(self, request_id: str, stage_name: str, *, attempt: int | None = None) -> None:
        self._check_stage(stage_name)
        env = self._envelope(request_id)
        ev = env.stage_started
        ev.stage = stage_name
        ev.attempt = attempt or self._attempt(request_id)
        self._stage_starts[(request_id, stage_name)] = time.perf_counter()
        self._last_started[request_id.encode()] = stage_name
        self._send(env, "stage_started")

    def complete_stage(
        self,
        request_id: str,
        stage_name: str,
        output_data: Mapping[str, Any] | None = None,
        *,
        duration_ms: float | None = None,
        attempt: int | None = None,
    ) -> None:
        """Record the stage as done. Duration defaults to the time since this tracker's
        ``start_stage`` for the same request and stage (0 when it did not see one)."""
        self._check_stage(stage_name)
        output = self._json(output_data, "output_data")
        env = self._envelope(request_id)
        ev = env.stage_completed
        ev.stage = stage_name
        ev.attempt = attempt or self._attempt(request_id)
        ev.output_json = output
        ev.duration_ms = self._duration(request_id, stage_name, duration_ms)
        self._send(env, "stage_completed")

    def fail_stage(
        self,
        request_id: str,
        stage_name: str,
        error_message: str,
        error_details: Mapping[str, Any] | None = None,
        is_retryable: bool = False,
        *,
        duration_ms: float | None = None,
        attempt: int | None = None,
        work_item: WorkItem | None = None,
    ) -> None:
        """Record the stage as failed. The stage's input WorkItem (``work_item``, or the
        one the consumer loop is handling) travels in the event so a retry needs only
        the log."""
        self._check_stage(stage_name)
        details = self._json(error_details, "error_details")
        env = self._envelope(request_id)
        ev = env.stage_failed
        ev.stage = stage_name
        ev.attempt = attempt or self._attempt(request_id)
        ev.error_message = error_message
        ev.error_details_json = details
        ev.is_retryable = bool(is_retryable)
        ev.duration_ms = self._duration(request_id, stage_name, duration_ms)
        item = work_item
        if item is None:
            ctx = current_request.get()
            if ctx is not None and ctx.request_id == request_id:
                item = ctx.work_item
        if item is not None:
            ev.input.CopyFrom(item)
        self._send(env, "stage_failed")

    def schedule_retry(
        self, request_id: str, stage_name: str, attempt: int, due_at: float, reason: str
    ) -> None:
        """Record that ``stage_name`` will run again as ``attempt`` at ``due_at`` (epoch s)."""
        self._check_stage(stage_name)
        env = self._envelope(request_id)
        ev = env.stage_retry_scheduled
        ev.stage = stage_name
        ev.attempt = attempt
        ev.due_at.FromNanoseconds(int(due_at * 1e9))
        ev.reason = reason
        self._send(env, "stage_retry_scheduled")

    def mark_waiting(
        self,
        request_id: str,
        stage_name: str,
        reason: str,
        detail: str = "",
        until: float | None = None,
    ) -> None:
        """Record that the request is held at ``stage_name`` (e.g. reason "circuit_open")
        and, if known, until when (epoch seconds). Not a failure: it resumes by itself."""
        self._check_stage(stage_name)
        env = self._envelope(request_id)
        ev = env.request_waiting
        ev.stage = stage_name
        ev.reason = reason
        ev.detail = detail
        if until is not None:
            ev.until.FromNanoseconds(int(until * 1e9))
        ev.SetInParent()
        self._send(env, "request_waiting")

    def request_retried(
        self,
        request_id: str,
        stage_name: str,
        requested_by: str,
        attempt: int,
        *,
        bulk_id: str = "",
        event_id: str | None = None,
    ) -> None:
        """Record that someone asked for ``stage_name`` to run again as ``attempt``
        (``bulk_id``: as one of a bulk action's retries; ``event_id``: a derived id, so a
        repeated command publishes the same event)."""
        self._check_stage(stage_name)
        env = self._envelope(request_id, event_id)
        ev = env.request_retried
        ev.stage = stage_name
        ev.requested_by = requested_by
        ev.attempt = attempt
        ev.bulk_id = bulk_id
        self._send(env, "request_retried")

    def cancel_request(
        self,
        request_id: str,
        requested_by: str,
        reason: str = "",
        *,
        bulk_id: str = "",
        event_id: str | None = None,
    ) -> None:
        """Record that ``requested_by`` stopped the request. The stage services skip its
        work from then on (the API's cancel also writes the fence they check)."""
        env = self._envelope(request_id, event_id)
        ev = env.request_cancelled
        ev.requested_by = requested_by
        ev.reason = reason
        ev.bulk_id = bulk_id
        ev.SetInParent()
        self._send(env, "request_cancelled")
        metrics.requests_finished.labels("cancelled").inc()

    def bulk_action_requested(
        self,
        bulk_id: str,
        action: str,
        requested_by: str,
        filter_: Mapping[str, Any],
        count: int,
        *,
        idempotency_key: str = "",
        organization_id: str = "",
        reason: str = "",
        event_id: str | None = None,
    ) -> None:
        """Record one bulk retry or cancel: who asked, by which filter, how many it
        covers. Keyed by ``bulk_id`` (it is about no single request)."""
        if action not in ("retry", "cancel"):
            raise TrackerError(f"bulk action is retry or cancel, not {action!r}")
        env = self._new_envelope(event_id)
        ev = env.bulk_action_requested
        ev.bulk_id = bulk_id
        ev.action = action
        ev.requested_by = requested_by
        ev.filter_json = self._json(filter_, "filter")
        ev.count = count
        ev.idempotency_key = idempotency_key
        ev.organization_id = organization_id
        ev.reason = reason
        headers = [_TYPE_HEADER, _KIND_HEADERS["bulk_action_requested"]]
        captured = _capture.get()
        key = bulk_id.encode()
        if captured is not None:
            captured.append((self.topic, key, env.SerializeToString(), headers))
            return
        self.publisher.publish(self.topic, key, env.SerializeToString(), headers)

    def breaker_state_changed(
        self,
        breaker: str,
        old_state: str,
        new_state: str,
        *,
        fail_counter: int = 0,
        success_counter: int = 0,
        total_calls: int = 0,
        total_failures: int = 0,
    ) -> None:
        """Record a circuit breaker's state change; keyed by the breaker's name."""
        env = self._new_envelope()
        ev = env.breaker_state_changed
        ev.breaker = breaker
        ev.old_state = old_state
        ev.new_state = new_state
        ev.fail_counter = fail_counter
        ev.success_counter = success_counter
        ev.total_calls = total_calls
        ev.total_failures = total_failures
        self.publisher.publish(
            self.topic,
            breaker.encode(),
            env.SerializeToString(),
            [_TYPE_HEADER, _KIND_HEADERS["breaker_state_changed"]],
        )

    def track_stage(
        self,
        request_id: str,
        stage_name: str,
        *,
        is_retryable: bool | None = None,
        attempt: int | None = None,
    ) -> StageSpan:
        """Context manager (``with`` or ``async with``) around one stage.

        Publishes StageStarted on entry; StageCompleted with the duration and whatever
        was put in ``span.output`` on a clean exit; on an exception, StageFailed with
        the exception type, message and traceback in ``error_details``, then re-raises.
        ``is_retryable`` defaults to what :func:`vividly.errors.is_retryable` says of
        the exception (its own ``is_retryable`` attribute; HTTP 429/5xx; network errors).
        """
        self._check_stage(stage_name)
        return StageSpan(self, request_id, stage_name, is_retryable, attempt)

    # ------------------------------------------------------------------ free-form events
    def log_event(
        self,
        request_id: str,
        event_type: str,
        message: str,
        stage_name: str | None = None,
        severity: str = "info",
        event_data: Mapping[str, Any] | None = None,
    ) -> None:
        sev = SEVERITIES.get(severity)
        if sev is None:
            raise UnknownSeverityError(severity)
        if stage_name is not None and stage_name not in _STAGE_SET:
            raise UnknownStageError(stage_name)
        data = self._json(event_data, "event_data")
        env = self._envelope(request_id)
        ev = env.event_logged
        ev.event_type = event_type
        ev.message = message
        if stage_name:
            ev.stage = stage_name
        ev.severity = sev  # type: ignore[assignment]
        if data:
            ev.event_data_json = data
        self._send(env, "event_logged")

    # ------------------------------------------------------------------ read side
    def get_request_status(
        self, request_id: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The request's current state from the read model (status, current_stage,
        topic, error_stage, …), reflecting every event this tracker has published for it:
        it waits (at most ``timeout``, default ``read_timeout_s``) for the log to
        acknowledge them and the projector to fold past them, and raises
        :class:`ReadModelBehind` when that does not happen in time. Raises KeyError for
        an unknown request."""
        reader = self._reader()
        deadline = time.monotonic() + (self.read_timeout_s if timeout is None else timeout)
        position = self.position(request_id, timeout=deadline - time.monotonic())
        status = reader.get_request_status(
            request_id, position=position, wait_s=max(0.0, deadline - time.monotonic())
        )
        if status is None:
            raise KeyError(f"unknown request {request_id}")
        return status

    def retry_stage(
        self,
        request_id: str,
        stage_name: str,
        requested_by: str = "sdk",
        *,
        timeout: float | None = None,
    ) -> bool:
        """Re-run ``stage_name`` of a failed request from the work item kept in its
        StageFailed event. False when the stage's retry budget is spent. Like
        :meth:`get_request_status`, it first waits for this tracker's own writes to be
        in the read model, so a ``fail_stage`` just before is seen."""
        self._check_stage(stage_name)
        reader = self._reader()
        deadline = time.monotonic() + (self.read_timeout_s if timeout is None else timeout)
        position = self.position(request_id, timeout=deadline - time.monotonic())
        return reader.retry_stage(
            request_id,
            stage_name,
            requested_by,
            position=position,
            wait_s=max(0.0, deadline - time.monotonic()),
        )

    def position(self, request_id: str, *, timeout: float | None = None) -> Position | None:
        """Where the last event this tracker published for ``request_id`` landed in the
        log, once the broker has acknowledged it (waiting at most ``timeout``); None when
        this tracker published nothing for it. Raises :class:`DeliveryFailed` when one of
        those events was not delivered, :class:`ReadModelBehind` when the broker has not
        answered in time."""
        key = request_id.encode()
        sent = self._sent.get(key)
        if sent is None:
            return None
        landed = self._landed.get(key)
        if landed is None or landed[0] < sent:
            wait = self.read_timeout_s if timeout is None else timeout
            deadline = time.monotonic() + max(0.0, wait)
            with self._landing:
                self._waiting += 1
                try:
                    while True:
                        landed = self._landed.get(key)
                        if landed is not None and landed[0] >= sent:
                            break
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise ReadModelBehind(
                                f"the log has not acknowledged the events of {request_id} "
                                f"within {wait:.1f} s"
                            )
                        self._landing.wait(remaining)
                finally:
                    self._waiting -= 1
        lost = self._lost.get(key)
        if lost is not None:
            raise DeliveryFailed(f"an event of {request_id} was not written to the log: {lost}")
        return Position(self.topic, landed[1], landed[2])

    def _delivered(self, err: Any, msg: Any) -> None:
        """Delivery report of one tracking event (the publisher's thread)."""
        if msg is None:
            return
        key = msg.key()
        if key is None:
            return
        landed = self._landed.get(key)
        n = landed[0] + 1 if landed is not None else 1
        if err is None:
            self._landed[key] = (n, msg.partition(), msg.offset())
        else:
            self._lost[key] = str(err)
            self._landed[key] = (n, landed[1], landed[2]) if landed else (n, -1, -1)
        if self._waiting:
            with self._landing:
                self._landing.notify_all()

    # ------------------------------------------------------------------ plumbing
    def bind(self, request_id: str, correlation_id: str) -> None:
        """Remember a request's correlation id so later calls carry it."""
        cache = self._correlations
        cache[request_id] = correlation_id
        if len(cache) > self._correlation_cache_size:
            cache.popitem(last=False)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[list[Captured]]:
        """Within the block (this task only), events are built as usual but collected in
        the yielded list instead of published: the stage runner stores an outcome's
        events in its ledger before publishing them, so a redelivery republishes the
        very same events (same ids) rather than new ones."""
        captured: list[Captured] = []
        token = _capture.set(captured)
        try:
            yield captured
        finally:
            _capture.reset(token)

    def republish(self, messages: Sequence[Captured]) -> None:
        """Publish messages built earlier (see :meth:`capturing`) exactly as they are."""
        for topic, key, value, headers in messages:
            if topic == self.topic:
                self.publisher.publish(topic, key, value, list(headers), self._on_delivery)
                self._count_sent(key)
            else:
                self.publisher.publish(topic, key, value, list(headers))

    def _count_sent(self, key: bytes) -> None:
        sent = self._sent
        sent[key] = sent.get(key, 0) + 1
        if len(sent) > self._correlation_cache_size:
            oldest = next(iter(sent))
            del sent[oldest]
            self._landed.pop(oldest, None)
            self._lost.pop(oldest, None)
            self._last_started.pop(oldest, None)

    def flush(self, timeout: float = 30.0) -> FlushReport:
        """Wait for queued events to be delivered; the report says what was not."""
        return self.publisher.flush(timeout)

    async def aflush(self, timeout: float = 30.0) -> FlushReport:
        import asyncio

        return await asyncio.to_thread(self.publisher.flush, timeout)

    def _reader(self) -> StatusReader:
        if self.status_reader is None:
            raise ReadSideUnavailable(
                "this tracker has no read side: pass status_reader= (the monitoring API "
                "client or the read-model reader) to use get_request_status/retry_stage"
            )
        return self.status_reader

    def _correlation(self, request_id: str) -> tuple[str, str]:
        ctx = current_request.get()
        if ctx is not None and ctx.request_id == request_id:
            return ctx.correlation_id, ctx.traceparent
        corr = self._correlations.get(request_id, "")
        return corr, ""

    def _correlation_of(self, request_id: str) -> str:
        ctx = current_request.get()
        if ctx is not None and ctx.request_id == request_id:
            return ctx.correlation_id
        return self._correlations.get(request_id, "")

    def _attempt(self, request_id: str) -> int:
        ctx = current_request.get()
        if ctx is not None and ctx.request_id == request_id:
            return ctx.attempt
        return 1

    def _duration(self, request_id: str, stage: str, given: float | None) -> float:
        started = self._stage_starts.pop((request_id, stage), None)
        if given is not None:
            value = float(given)
            if not math.isfinite(value) or value < 0:
                raise PayloadError(f"duration_ms must be a finite number ≥ 0, got {given!r}")
            return value
        if started is None:
            return 0.0
        return (time.perf_counter() - started) * 1000.0

    def _check_stage(self, stage: str) -> None:
        if stage not in _STAGE_SET:
            raise UnknownStageError(stage)

    def _json(self, data: Mapping[str, Any] | None, what: str) -> bytes:
        if data is None:
            return b""
        if not isinstance(data, Mapping):
            raise PayloadError(f"{what} must be a mapping (JSON object), got {type(data).__name__}")
        try:
            raw = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from None
        # orjson writes NaN and ±inf as null; a null in the output is rare, so only then
        # is the data walked to tell a real None from a non-finite number.
        if b"null" in raw and _non_finite(data):
            raise PayloadError(f"{what} holds NaN or infinity, which JSON cannot carry")
        if len(raw) > self.max_payload_bytes:
            raise PayloadError(
                f"{what} is {len(raw)} bytes as JSON; the limit is {self.max_payload_bytes}"
            )
        return raw

    def _envelope(self, request_id: str, event_id: str | None = None) -> Envelope:
        if not request_id:
            raise TrackerError("request_id is required")
        env = self._new_envelope(event_id)
        env.request_id = request_id
        return env

    def _new_envelope(self, event_id: str | None = None) -> Envelope:
        env = Envelope()
        env.event_id = event_id or str(_uuid7())
        ns = _time_ns()
        ts = env.occurred_at
        ts.seconds = ns // 1_000_000_000
        ts.nanos = ns % 1_000_000_000
        env.producer = self.producer
        env.schema_version = SCHEMA_VERSION
        return env

    def _send(self, env: Envelope, kind: str) -> None:
        """Publish ``env``; this and :meth:`_envelope` are the hot path of every call."""
        request_id = env.request_id
        ctx = current_request.get()
        if ctx is not None and ctx.request_id == request_id:
            correlation_id, parent = ctx.correlation_id, ctx.traceparent
        else:
            correlation_id, parent = self._correlations.get(request_id, ""), ""
        headers = [_TYPE_HEADER, _KIND_HEADERS.get(kind) or (H_EVENT_TYPE, kind.encode())]
        if correlation_id:
            env.correlation_id = correlation_id
            # The event's traceparent: its span id is the event id's random tail; its
            # parent the span current here when that is in the request's trace (a stage
            # attempt's), else the consumed message's span, else none (the trace is the
            # correlation id's).
            if tracing.active():
                here = tracing.current_traceparent()
                if here and here[3:35] == (parent[3:35] or tracing.trace_id_hex(correlation_id)):
                    parent = here
            eid = env.event_id
            traceparent = traceparent_for(correlation_id, eid[19:23] + eid[24:], parent)
            headers.append((H_CORRELATION, correlation_id.encode()))
            headers.append((H_TRACEPARENT, traceparent.encode()))
        key = request_id.encode()
        captured = _capture.get()
        if captured is not None:
            captured.append((self.topic, key, env.SerializeToString(), headers))
            return
        # Counted once queued (a publish that raises sends nothing to wait for); its
        # report may come back first, on the delivery thread, which is fine.
        self.publisher.publish(self.topic, key, env.SerializeToString(), headers, self._on_delivery)
        self._count_sent(key)


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


class StageSpan:
    """What ``track_stage`` returns. Put results in ``output`` to have them recorded."""

    __slots__ = (
        "_attempt",
        "_otel",
        "_retryable",
        "_stage",
        "_started",
        "_token",
        "_tracker",
        "output",
        "request_id",
    )

    def __init__(
        self,
        tracker: RequestTracker,
        request_id: str,
        stage: str,
        is_retryable: bool | None,
        attempt: int | None,
    ) -> None:
        self._tracker = tracker
        self.request_id = request_id
        self._stage = stage
        self._retryable = is_retryable
        self._attempt = attempt
        self._started = 0.0
        self.output: dict[str, Any] = {}
        self._otel: Any = None
        self._token: object = None

    def __enter__(self) -> StageSpan:
        if tracing.active():
            # The attempt is a span too; the events published inside name it.
            t = self._tracker
            rid = self.request_id
            self._otel = tracing.start_stage_span(
                rid, self._stage, self._attempt or t._attempt(rid), t._correlation_of(rid)
            )
            if self._otel is not None:
                self._token = tracing.enter(self._otel)
        try:
            self._tracker.start_stage(self.request_id, self._stage, attempt=self._attempt)
        except BaseException as exc:
            self._close_span(exc)
            raise
        self._started = time.perf_counter()
        return self

    def _close_span(self, error: BaseException | None) -> None:
        span, self._otel = self._otel, None
        if span is not None:
            tracing.leave(span, self._token, error)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._finish(exc_type, exc, tb)
        finally:
            self._close_span(exc)

    def _finish(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration_ms = (time.perf_counter() - self._started) * 1000.0
        if exc is None:
            self._tracker.complete_stage(
                self.request_id,
                self._stage,
                output_data=self.output or None,
                duration_ms=duration_ms,
                attempt=self._attempt,
            )
            return
        retryable = self._retryable
        if retryable is None:
            retryable = errors.is_retryable(exc)
        self._tracker.fail_stage(
            self.request_id,
            self._stage,
            error_message=str(exc) or type(exc).__name__,
            error_details={
                "exception_type": type(exc).__name__,
                # The tail of a traceback is where the failure is; keep it under the limit.
                "traceback": "".join(traceback.format_exception(exc_type, exc, tb))[-16_000:],
            },
            is_retryable=retryable,
            duration_ms=duration_ms,
            attempt=self._attempt,
        )

    async def __aenter__(self) -> StageSpan:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
