"""The two things the API writes, both as events plus work items on Kafka (never by
updating the read model): submit a request, retry a failed one from its failed stage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.projector.api import views
from services.projector.store import LIVE_SCHEMA, quote_ident
from vividly import tracing
from vividly.config import STAGE_INPUT_TOPICS, TRACKING_TOPIC
from vividly.events import WorkItem
from vividly.publish import DeliveryFailed, KafkaPublisher, Outgoing
from vividly.publish import publish_acked as acked
from vividly.tracker import Captured, RequestTracker

S = quote_ident(LIVE_SCHEMA)


class RetryRefused(Exception):
    """409: the request cannot be retried now; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class RetryAccepted:
    request_id: str
    stage: str
    attempt: int
    requested_by: str
    position: str | None = None
    #: False when no work item was sent: the request's own worker runs the stage.
    dispatched: bool = True


#: The broker did not acknowledge a message (failed, or not in time): answer 503.
PublishFailed = DeliveryFailed


async def publish_acked(
    publisher: KafkaPublisher, messages: Sequence[Captured], timeout: float = 15.0
) -> str | None:
    """Publish ``messages`` and wait for each one's own acknowledgement, at most
    ``timeout`` seconds (:func:`vividly.publish.publish_acked`). Returns where the last
    tracking event of them landed (``partition:offset``, for read-your-writes)."""
    landed = await acked(publisher, messages, timeout)
    return last_position(messages, landed)


def last_position(messages: Sequence[Captured], landed: Sequence[tuple[int, int]]) -> str | None:
    """The ``partition:offset`` of the last tracking event among ``messages``."""
    for (topic, *_), (partition, offset) in zip(reversed(messages), reversed(landed), strict=True):
        if topic == TRACKING_TOPIC and partition >= 0:
            return f"{partition}:{offset}"
    return None


async def retry_failed(
    conn: Any,
    tracker: RequestTracker,
    publisher: KafkaPublisher,
    request: dict[str, Any],
    stage: str | None,
    requested_by: str,
    max_retries: int,
) -> RetryAccepted:
    """Republish the failed stage's kept input with the attempt raised, and record who
    asked (RequestRetried). ``request`` is the caller-visible request row."""
    rid = request["request_id"]
    if request["status"] != "failed":
        raise RetryRefused("not_failed", f"request {rid} is {request['status']}, not failed")
    failed_stage = request["error_stage"]
    if stage is not None and stage != failed_stage:
        raise RetryRefused("wrong_stage", f"request {rid} failed at {failed_stage}, not at {stage}")
    if request["retry_count"] >= max_retries:
        raise RetryRefused(
            "retry_budget_spent", f"request {rid} was retried {request['retry_count']} times"
        )
    source = await views.retry_source(conn, rid, failed_stage)
    item: WorkItem | None = None
    if source is None:
        # Nothing of the pipeline's kept: the request is driven by the caller's own worker
        # (the seed's retry_failed_request). The retry is recorded and counted, and the
        # caller runs the stage itself.
        top_attempt = int(
            await conn.fetchval(
                f"SELECT coalesce(max(attempt), 0) FROM {S}.request_stages"
                " WHERE request_id = $1 AND stage = $2",
                rid,
                failed_stage,
            )
        )
        attempt = top_attempt + 1
    else:
        top_attempt, raw = source
        item = WorkItem()
        item.ParseFromString(raw)
        item.stage = failed_stage
        item.attempt = attempt = top_attempt + 1
        item.ClearField("failure")
    claimed = await conn.fetchval(
        "INSERT INTO vividly.retry_log (request_id, stage, attempt, requested_by)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING attempt",
        rid,
        failed_stage,
        attempt,
        requested_by,
    )
    if claimed is None:
        raise RetryRefused(
            "retry_in_progress", f"attempt {attempt} of {failed_stage} was already requested"
        )
    cid = item.correlation_id if item else request.get("correlation_id") or ""
    tracker.bind(rid, cid)
    try:
        # A span in the request's own trace (linked to the caller's): the retried
        # attempt's spans are its descendants.
        with tracing.request_root(
            f"retry {failed_stage}", cid, retry_attrs(rid, failed_stage, attempt, requested_by)
        ):
            with tracker.capturing() as events:
                tracker.request_retried(rid, failed_stage, requested_by, attempt)
            position = await publish_acked(publisher, events)
            if item is not None:
                out = Outgoing.work_item(STAGE_INPUT_TOPICS[failed_stage], item)
                await publish_acked(publisher, [(out.topic, out.key, out.value, out.headers)])
    except PublishFailed:
        # Nothing of this retry is known to be in the log: give the attempt back, so
        # asking again is not refused as "already requested".
        await conn.execute(
            "DELETE FROM vividly.retry_log WHERE request_id = $1 AND stage = $2 AND attempt = $3",
            rid,
            failed_stage,
            attempt,
        )
        raise
    return RetryAccepted(rid, failed_stage, attempt, requested_by, position, item is not None)


def retry_attrs(rid: str, stage: str, attempt: int, requested_by: str) -> dict[str, Any]:
    return {
        tracing.ATTR_REQUEST_ID: rid,
        tracing.ATTR_STAGE: stage,
        tracing.ATTR_ATTEMPT: attempt,
        "vividly.requested_by": requested_by,
    }
