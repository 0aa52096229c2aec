"""The two things the API writes, both as events plus work items on Kafka (never by
updating the read model): submit a request, retry a failed one from its failed stage."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.projector.api import views
from services.projector.store import LIVE_SCHEMA, quote_ident
from vividly.bus import Outgoing
from vividly.config import STAGE_INPUT_TOPICS
from vividly.events import WorkItem
from vividly.publish import KafkaPublisher
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


class PublishFailed(RuntimeError):
    """The broker did not acknowledge a message (failed, or not in time): answer 503."""


async def publish_acked(
    publisher: KafkaPublisher, messages: Sequence[Captured], timeout: float = 15.0
) -> None:
    """Publish ``messages`` and wait for each one's own delivery report; raise
    PublishFailed unless the broker acknowledged every one. (Per message, not the
    producer's watermark: one old failure must not fail every later call.)"""
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[str | None]] = []
    for topic, key, value, headers in messages:
        fut: asyncio.Future[str | None] = loop.create_future()

        def done(err: Any, _msg: Any, fut: asyncio.Future[str | None] = fut) -> None:
            loop.call_soon_threadsafe(_settle, fut, None if err is None else str(err))

        publisher.publish(topic, key, value, list(headers), on_delivery=done)
        futs.append(fut)
    try:
        errors = await asyncio.wait_for(asyncio.gather(*futs), timeout)
    except TimeoutError as exc:
        raise PublishFailed(f"the event log did not acknowledge within {timeout:.0f} s") from exc
    failed = [e for e in errors if e is not None]
    if failed:
        raise PublishFailed(f"the event log refused {len(failed)} message(s): {failed[0]}")


def _settle(fut: asyncio.Future[str | None], error: str | None) -> None:
    if not fut.done():
        fut.set_result(error)


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
    if source is None:
        raise RetryRefused(
            "no_work_item", f"no kept work item for {failed_stage}; cannot retry from the log"
        )
    top_attempt, raw = source
    item = WorkItem()
    item.ParseFromString(raw)
    item.stage = failed_stage
    item.attempt = top_attempt + 1
    item.ClearField("failure")
    claimed = await conn.fetchval(
        "INSERT INTO vividly.retry_log (request_id, stage, attempt, requested_by)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING attempt",
        rid,
        failed_stage,
        item.attempt,
        requested_by,
    )
    if claimed is None:
        raise RetryRefused(
            "retry_in_progress", f"attempt {item.attempt} of {failed_stage} was already requested"
        )
    tracker.bind(rid, item.correlation_id)
    out = Outgoing.of(
        STAGE_INPUT_TOPICS[failed_stage], rid, item, item.correlation_id, item.traceparent
    )
    try:
        with tracker.capturing() as events:
            tracker.request_retried(rid, failed_stage, requested_by, item.attempt)
        await publish_acked(publisher, events)
        await publish_acked(publisher, [(out.topic, out.key, out.value, out.headers)])
    except PublishFailed:
        # Nothing of this retry is known to be in the log: give the attempt back, so
        # asking again is not refused as "already requested".
        await conn.execute(
            "DELETE FROM vividly.retry_log WHERE request_id = $1 AND stage = $2 AND attempt = $3",
            rid,
            failed_stage,
            item.attempt,
        )
        raise
    return RetryAccepted(rid, failed_stage, item.attempt, requested_by)
