"""Validation: what a real school product needs before it spends money on a request."""

from __future__ import annotations

import re
from typing import Any

from vividly.errors import PermanentError
from vividly.events import WorkItem
from vividly.publish import Outgoing
from vividly.rules import (
    DURATION_MAX,
    DURATION_MIN,
    ID_PATTERN,
    OBJECTIVE_MAX,
    TOPIC_MAX,
    TOPIC_MIN,
    normalise_grade,
)
from vividly.runtime.bus import Delivery
from vividly.runtime.stage import StageContext, StageRunner
from vividly.tracker import RequestTracker

_ID = re.compile(ID_PATTERN)


class InvalidRequest(PermanentError):
    """A request that can never succeed as submitted; ``field`` names what is wrong."""

    is_retryable = False

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.details = {"field": field}


def validate(item: WorkItem) -> dict[str, Any]:
    """Check the request; raise :class:`InvalidRequest` naming the first bad field."""
    spec = item.request
    topic = spec.topic.strip()
    if len(topic) < TOPIC_MIN:
        raise InvalidRequest("topic", f"must be at least {TOPIC_MIN} characters")
    if len(topic) > TOPIC_MAX:
        raise InvalidRequest("topic", f"must be at most {TOPIC_MAX} characters")
    objective = spec.learning_objective.strip()
    if not objective:
        raise InvalidRequest("learning_objective", "is required")
    if len(objective) > OBJECTIVE_MAX:
        raise InvalidRequest("learning_objective", f"must be at most {OBJECTIVE_MAX} characters")
    grade = normalise_grade(spec.grade_level)
    if grade is None:
        raise InvalidRequest("grade_level", f"must be one of K, 1-12 (got {spec.grade_level!r})")
    if not DURATION_MIN <= spec.duration_minutes <= DURATION_MAX:
        raise InvalidRequest(
            "duration_minutes",
            f"must be {DURATION_MIN}-{DURATION_MAX} (got {spec.duration_minutes})",
        )
    if not _ID.match(spec.student_id):
        raise InvalidRequest("student_id", "must be 1-64 letters, digits or _.:@-")
    if spec.organization_id and not _ID.match(spec.organization_id):
        raise InvalidRequest("organization_id", "must be 1-64 letters, digits or _.:@-")
    return {
        "topic": topic,
        "grade_level": grade,
        "duration_minutes": spec.duration_minutes,
        "target_words": spec.duration_minutes * 150,
    }


async def validation_work(item: WorkItem, ctx: StageContext) -> dict[str, Any]:
    out = validate(item)
    ctx.log("validation_passed", "Request validation successful")
    return out


class SubmissionGate:
    """Drops a second submission of the same request (same idempotency key) before any
    stage runs; a redelivery of the first submission goes through."""

    def __init__(self, runner: StageRunner, tracker: RequestTracker, first_source: Any) -> None:
        self.runner = runner
        self.tracker = tracker
        self.first_source = first_source

    async def __call__(self, delivery: Delivery, item: WorkItem) -> list[Outgoing]:
        source = f"{delivery.topic}:{delivery.partition}:{delivery.offset}"
        if item.attempt <= 1:
            first = await self.first_source(item.request_id, source)
            if first != source:
                self.tracker.log_event(
                    item.request_id,
                    "duplicate_submission",
                    f"Same request submitted again (first seen at {first}); ignored",
                    stage_name="validation",
                    severity="warning",
                )
                return []
        return await self.runner(delivery, item)
