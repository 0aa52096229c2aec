"""Submitting a request to the pipeline: the RequestCreated/RequestStarted events plus the
work item on ``requests.submitted`` (what ``POST /api/v1/requests`` and ``vividly submit``
do)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vividly import tracing
from vividly.config import SUBMITTED
from vividly.events import WorkItem, traceparent_for
from vividly.publish import Outgoing, Publisher
from vividly.tracker import RequestTracker


def submit_request(tracker: RequestTracker, publisher: Publisher, **spec: Any) -> tuple[str, str]:
    """Track a new request and hand it to the pipeline (the tracker's events, then the
    work item on ``requests.submitted``); returns (request_id, correlation_id). See
    :func:`build_submission` for the arguments."""
    request_id, correlation_id, out = build_submission(tracker, **spec)
    with tracing.request_root(
        "submit request", correlation_id, {tracing.ATTR_REQUEST_ID: request_id}
    ):
        span, headers = tracing.send_span(out.topic, out.key, out.headers)

        def landed(err: Any, msg: Any) -> None:
            ok = err is None and msg is not None
            partition, offset = (msg.partition(), msg.offset()) if ok else (-1, -1)
            tracing.end_send(span, partition, offset, None if err is None else str(err))

        publisher.publish(
            out.topic, out.key, out.value, headers, on_delivery=landed if span else None
        )
    return request_id, correlation_id


def build_submission(
    tracker: RequestTracker,
    *,
    student_id: str,
    topic: str,
    learning_objective: str,
    grade_level: str,
    duration_minutes: int,
    metadata: Mapping[str, Any] | None = None,
    organization_id: str = "",
    idempotency_key: str | None = None,
    student_email: str = "",
) -> tuple[str, str, Outgoing]:
    """Publish RequestCreated and RequestStarted through ``tracker``; return the ids and
    the work item to put on ``requests.submitted`` (the caller publishes it, after the
    events when it wants the log causal).

    Nothing is validated here beyond what the tracker checks: validation is the pipeline's
    first stage, so an invalid request is recorded as failed at ``validation`` with the
    field named.
    """
    request_id, correlation_id = tracker.create_request(
        student_id=student_id,
        topic=topic,
        learning_objective=learning_objective,
        grade_level=grade_level,
        duration_minutes=duration_minutes,
        metadata=metadata,
        organization_id=organization_id,
        idempotency_key=idempotency_key,
        student_email=student_email,
    )
    tracker.start_request(request_id)
    assert tracker.last_created is not None
    item = WorkItem(
        request_id=request_id,
        correlation_id=correlation_id,
        stage="validation",
        attempt=1,
        traceparent=traceparent_for(correlation_id),
    )
    item.request.CopyFrom(tracker.last_created)
    item.submitted_at.GetCurrentTime()
    out = Outgoing.work_item(SUBMITTED, item)
    return request_id, correlation_id, out
