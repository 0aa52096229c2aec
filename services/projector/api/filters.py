"""The request filter a person at the dashboard uses, as query parameters (lists) and as
a JSON body (bulk retry and cancel): the same fields, the same validation, one
:class:`~services.projector.api.views.RequestFilter`.

Times are RFC 3339 date-times, with their offset. Relative times ("2h") are the CLI's
(:func:`vividly.platform.export.parse_time`) and the dashboard's to turn into one, so
the schema says exactly which values are valid."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from services.projector.api.views import RequestFilter
from vividly.config import STAGES
from vividly.rules import ID_PATTERN

StatusFilter = Literal[
    "active", "all", "stalled", "queued", "running", "waiting", "completed", "failed", "cancelled"
]
Stage = Literal[STAGES]  # type: ignore[valid-type]
WORDS_PATTERN = r"^[^\x00-\x1f\x7f]*$"
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _rfc3339(value: object) -> datetime:
    """Only what the schema says: an RFC 3339 date-time string, with its offset (no unix
    numbers, no naive times)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-12-02T09:00:00Z")
    text = value.replace("z", "Z").replace("Z", "+00:00")
    if "." in text:  # Python reads at most 6 fraction digits
        head, rest = text.split(".", 1)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:digits][:6]}{rest[digits:]}"
    at = datetime.fromisoformat(text)
    try:
        return at.astimezone(UTC)
    except OverflowError:  # e.g. year 1 at +18:53: before any time Python holds in UTC
        edge = datetime.min if at.year < 5000 else datetime.max
        return edge.replace(tzinfo=UTC)


#: A date-time as the schema states it (format date-time).
DateTime = Annotated[
    datetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def _aware(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def build(
    *,
    status_: str | None,
    stage: str | None,
    failed_at: str | None,
    organization_id: str | None,
    student_id: str | None,
    q: str | None,
    error: str | None,
    since: datetime | None,
    until: datetime | None,
    slower_than_ms: float | None,
) -> RequestFilter:
    """A :class:`RequestFilter` from its fields (each checked by its type already; an
    empty time range just matches nothing)."""
    start, end = _aware(since), _aware(until)
    return RequestFilter(
        status=None if status_ == "all" else status_,
        stage=stage,
        failed_at=failed_at,
        organization_id=organization_id,
        student_id=student_id,
        q=q or None,
        error=error or None,
        since=start,
        until=end,
        slower_than_ms=slower_than_ms,
    )


async def query_filter(  # async: no thread hop (see deps.get_state)
    status_: Annotated[StatusFilter | None, Query(alias="status")] = None,
    stage: Annotated[Stage | None, Query(description="The current stage")] = None,
    failed_at: Annotated[Stage | None, Query(description="Failed in this stage")] = None,
    organization_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    student_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, pattern=WORDS_PATTERN, description="Words in topic/objective"),
    ] = None,
    error: Annotated[
        str | None,
        Query(max_length=200, pattern=WORDS_PATTERN, description="Words in the error message"),
    ] = None,
    since: Annotated[
        DateTime | None, Query(description="Created at or after (RFC 3339 date-time)")
    ] = None,
    until: Annotated[DateTime | None, Query(description="Created before (date-time)")] = None,
    slower_than_ms: Annotated[
        float | None,
        Query(
            ge=0,
            le=1e9,
            description="A stage attempt took longer than this (of `stage` when given)",
        ),
    ] = None,
) -> RequestFilter:
    return build(
        status_=status_,
        stage=stage,
        failed_at=failed_at,
        organization_id=organization_id,
        student_id=student_id,
        q=q,
        error=error,
        since=since,
        until=until,
        slower_than_ms=slower_than_ms,
    )


class FilterBody(BaseModel):
    """The filter of a bulk action: the list's query parameters, as JSON."""

    model_config = ConfigDict(extra="forbid")

    status: StatusFilter | None = None
    stage: Stage | None = None
    failed_at: Stage | None = None
    organization_id: str | None = Field(default=None, pattern=ID_PATTERN)
    student_id: str | None = Field(default=None, pattern=ID_PATTERN)
    q: str | None = Field(default=None, max_length=200, pattern=WORDS_PATTERN)
    error: str | None = Field(default=None, max_length=200, pattern=WORDS_PATTERN)
    since: DateTime | None = None
    until: DateTime | None = None
    slower_than_ms: float | None = Field(default=None, ge=0, le=1e9, strict=True)

    def resolve(self) -> RequestFilter:
        return build(
            status_=self.status,
            stage=self.stage,
            failed_at=self.failed_at,
            organization_id=self.organization_id,
            student_id=self.student_id,
            q=self.q,
            error=self.error,
            since=self.since,
            until=self.until,
            slower_than_ms=self.slower_than_ms,
        )
