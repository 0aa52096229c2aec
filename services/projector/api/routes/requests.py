"""POST /api/v1/requests (submit) and POST /api/v1/requests/{id}/retry."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, HTTPException, Path, Response, status
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)

from services.projector.api import actions, views
from services.projector.api.commands import (
    PublishFailed,
    RetryRefused,
    publish_acked,
    retry_failed,
)
from services.projector.api.deps import Caller, Conn, ReadAfter, State, errors
from services.projector.api.filters import FilterBody
from vividly import tracing
from vividly.config import STAGES
from vividly.rules import (
    DURATION_MAX,
    DURATION_MIN,
    ID_PATTERN,
    OBJECTIVE_MAX,
    REQUEST_ID_PATTERN,
    TOPIC_MAX,
    TOPIC_MIN,
    normalise_grade,
)
from vividly.runtime.auth import EMAIL_PATTERN, Principal
from vividly.submit import build_submission

router = APIRouter(
    prefix="/api/v1/requests", tags=["requests"], responses=errors(400, 401, 403, 413, 422, 503)
)

# Text the pipeline can carry and Postgres can store: no control characters (tab, CR and
# LF aside in free text), and printable at both ends of a topic. Each pattern is what the
# validation checks, so the OpenAPI schema says exactly what is accepted.
_EDGE = r"[ \t\n\r]*"
_TOPIC_CHAR = r"[^\x00-\x1f\x7f]"
_TOPIC_END = r"[^ \t\n\r\x00-\x1f\x7f]"
_TEXT_CHAR = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
_TEXT_START = r"[^ \t\n\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
#: At least three characters once the surrounding white space is stripped.
TOPIC_PATTERN = f"^{_EDGE}{_TOPIC_END}{_TOPIC_CHAR}+{_TOPIC_END}{_EDGE}$"
OBJECTIVE_PATTERN = f"^{_EDGE}{_TEXT_START}{_TEXT_CHAR}*$"
TEXT_PATTERN = f"^{_TEXT_CHAR}*$"
GRADE_PATTERN = r"^([Kk]|[Kk][Gg]|0|0?[1-9]|1[0-2])$"
KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$"
#: Numbers in metadata: the 64-bit range, less the last float step, so the bound itself
#: is exact both as an integer and as a double and every JSON reader agrees on it.
INT64_MIN, INT64_MAX = -(2**63 - 1024), 2**63 - 1024
METADATA_KEYS_MAX = 32
METADATA_TEXT_MAX = 1000


def _metadata_value(v: Any) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise ValueError(f"integers must be within ±{INT64_MAX} (64 bits)")
        return v
    if isinstance(v, float):
        if not (math.isfinite(v) and INT64_MIN <= v <= INT64_MAX):
            raise ValueError(f"numbers must be finite, within ±{INT64_MAX} (got {v!r})")
        return v
    if isinstance(v, str):
        if len(v) > METADATA_TEXT_MAX:
            raise ValueError(f"strings are at most {METADATA_TEXT_MAX} characters")
        if not _TEXT.match(v):
            raise ValueError("strings hold no control characters")
        return v
    raise ValueError("values are booleans, numbers, strings or null (metadata is flat)")


_TEXT = re.compile(TEXT_PATTERN)
MetadataValue = Annotated[
    Any,
    PlainValidator(_metadata_value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "boolean"},
                {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
                {"type": "number", "minimum": INT64_MIN, "maximum": INT64_MAX},
                {"type": "string", "maxLength": METADATA_TEXT_MAX, "pattern": TEXT_PATTERN},
                {"type": "null"},
            ]
        }
    ),
]


def _integral(v: Any) -> Any:
    """JSON's 12.0 is the integer 12 (as JSON Schema says); "12" stays a string (refused)."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


MetadataKey = Annotated[str, Field(pattern=KEY_PATTERN)]


class NewRequest(BaseModel):
    """What a student asks for. Students may leave out student_id (their own is used);
    teachers may leave out organization_id (theirs is used). ``student_email`` (where the
    emails go) is for admin and service callers: a student's comes from its token."""

    model_config = ConfigDict(extra="forbid")

    student_id: str | None = Field(default=None, pattern=ID_PATTERN)
    organization_id: str | None = Field(default=None, pattern=ID_PATTERN)
    topic: str = Field(min_length=TOPIC_MIN, max_length=TOPIC_MAX, pattern=TOPIC_PATTERN)
    learning_objective: str = Field(
        min_length=1, max_length=OBJECTIVE_MAX, pattern=OBJECTIVE_PATTERN
    )
    grade_level: str = Field(description="K or 1-12", pattern=GRADE_PATTERN)
    duration_minutes: Annotated[int, BeforeValidator(_integral)] = Field(
        ge=DURATION_MIN, le=DURATION_MAX, strict=True
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=METADATA_KEYS_MAX,
        description="Flat: up to 32 keys; values are booleans, 64-bit integers, finite "
        "numbers, strings of up to 1000 characters, or null.",
        # Keys must match the pattern (the validation says so too).
        json_schema_extra={"additionalProperties": False},
    )
    student_email: str | None = Field(default=None, max_length=254, pattern=EMAIL_PATTERN)

    @field_validator("topic", "learning_objective")
    @classmethod
    def _stripped(cls, v: str) -> str:
        return v.strip(" \t\n\r")

    @field_validator("grade_level")
    @classmethod
    def _grade(cls, v: str) -> str:
        grade = normalise_grade(v)
        if grade is None:  # the pattern admits only grades
            raise ValueError("must be one of K, 1-12")
        return grade


class RetryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Literal[STAGES] | None = Field(  # type: ignore[valid-type]
        default=None, description="The failed stage (default: it)"
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED, summary="Submit a request")
async def submit(
    body: NewRequest,
    who: Caller,
    state: State,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", pattern=r"^[\x21-\x7e]{1,200}$")
    ] = None,
) -> dict[str, Any]:
    student_id, org, email = _author(who, body)
    tracker = state.tracker
    with tracker.capturing() as events:
        rid, cid, item = build_submission(
            tracker,
            student_id=student_id,
            topic=body.topic,
            learning_objective=body.learning_objective,
            grade_level=body.grade_level,
            duration_minutes=body.duration_minutes,
            metadata=body.metadata,
            organization_id=org or "",
            idempotency_key=idempotency_key,
            student_email=email,
        )
    try:
        # The request's events first, then its work item: 202 only for what the broker
        # acknowledged, and the pipeline never sees a request the log does not have.
        with tracing.request_root("submit request", cid, {tracing.ATTR_REQUEST_ID: rid}):
            position = await publish_acked(state.publisher, events)
            await publish_acked(state.publisher, [(item.topic, item.key, item.value, item.headers)])
    except PublishFailed as exc:
        raise _unavailable(exc) from exc
    location = f"/api/v1/monitoring/requests/{rid}"
    response.headers["Location"] = location
    # Accepted either way (the log has it); wait a moment so its Location answers.
    visible = await state.hub.visible(rid, state.settings.api_submit_visible_s)
    return {
        "request_id": rid,
        "correlation_id": cid,
        "status": "queued",
        "location": location,
        "visible": visible,
        # Read your writes: GET the location with ?position= to see at least this.
        "position": position,
    }


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=500, pattern=TEXT_PATTERN)


class BulkBody(BaseModel):
    """A bulk retry or cancel: which requests (``filter``, ANDed with the caller's scope),
    and whether only to count them (``dry_run``, the default: the answer has the count and
    a sample) or to act."""

    model_config = ConfigDict(extra="forbid")

    filter: FilterBody = Field(default_factory=FilterBody)
    # Strict: a 0 or "no" must not be read as "act".
    dry_run: bool = Field(default=True, strict=True)
    reason: str = Field(default="", max_length=500, pattern=TEXT_PATTERN)


async def _bulk(
    action: str,
    body: BulkBody,
    who: Principal,
    state: Any,
    conn: Any,
    response: Response,
    idempotency_key: str,
) -> dict[str, Any]:
    if who.role == "student":
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"students cannot bulk-{action} requests")
    flt = body.filter.resolve()
    given = body.filter.model_dump(mode="json", exclude_none=True)
    if action == "cancel" and flt.status in ("completed", "failed", "cancelled"):
        raise _conflict(
            actions.ActionRefused("finished", f"{flt.status} requests have finished: no cancel")
        )
    settings = state.settings
    try:
        if not body.dry_run:
            done = await actions.earlier(conn, who, idempotency_key, action, given)
            if done is not None:
                response.status_code = status.HTTP_200_OK
                return done
        the_plan = await actions.plan(
            conn,
            who,
            action,
            flt,
            max_retries=settings.max_manual_retries,
            expected=settings.stage_expected_s,
            default_expected=settings.expected_s(None),
            limit=settings.bulk_max_requests,
        )
        if body.dry_run:
            response.status_code = status.HTTP_200_OK
            return {
                "action": action,
                "dry_run": True,
                "filter": flt.as_json(),
                "matched": the_plan.matched,
                "eligible": len(the_plan.eligible),
                "skipped": the_plan.skipped,
                "sample": the_plan.sample,
            }
        return await actions.run_bulk(
            conn,
            state.tracker,
            state.publisher,
            who,
            action,
            flt,
            the_plan,
            idempotency_key,
            body.reason,
            given,
        )
    except actions.ActionRefused as exc:
        raise _conflict(exc) from exc
    except PublishFailed as exc:
        raise _unavailable(exc) from exc


_BULK_200 = (
    "A dry run (the count, the skipped reasons and a sample), or a repeat of a finished "
    "action with the same Idempotency-Key (its first answer, with repeated: true)"
)
_BULK_KEY = Header(
    alias="Idempotency-Key",
    pattern=r"^[\x21-\x7e]{1,200}$",
    description="The same key repeats the call safely (a dry run stores nothing under it)",
)


# Declared before /{request_id}/retry: routing matches the path template first (the id's
# pattern is checked after), so "bulk" would otherwise be taken for a request id.
@router.post(
    "/bulk/{action}",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Retry every failed, or cancel every unfinished, request a filter matches "
    "(dry run first)",
    responses={**errors(409), 200: {"description": _BULK_200}},
)
async def bulk(
    action: Annotated[Literal["retry", "cancel"], Path(description="retry or cancel")],
    body: BulkBody,
    who: Caller,
    state: State,
    conn: Conn,
    response: Response,
    idempotency_key: Annotated[str, _BULK_KEY],
) -> dict[str, Any]:
    return await _bulk(action, body, who, state, conn, response, idempotency_key)


@router.post(
    "/{request_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Cancel a request wherever it is (409 when it has finished)",
    responses=errors(404, 409),
)
async def cancel(
    request_id: Annotated[str, Path(pattern=REQUEST_ID_PATTERN)],
    who: Caller,
    state: State,
    after: ReadAfter,
    conn: Conn,
    body: Annotated[CancelBody | None, Body()] = None,
) -> dict[str, Any]:
    # A student may cancel its own request (found only within its scope); teachers their
    # organization's; admins and services any.
    found = await views.get_request(conn, who.for_one_request(), request_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"request {request_id} not found")
    try:
        position = await actions.cancel_one(
            conn,
            state.tracker,
            state.publisher,
            found,
            who.requested_by,
            body.reason if body else "",
        )
    except actions.ActionRefused as exc:
        raise _conflict(exc) from exc
    except PublishFailed as exc:
        raise _unavailable(exc) from exc
    return {
        "request_id": request_id,
        "status": "cancelling",
        "requested_by": who.requested_by,
        "location": f"/api/v1/monitoring/requests/{request_id}",
        "position": position,
    }


@router.post(
    "/{request_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Retry a failed request from its failed stage",
    responses=errors(404, 409),
)
async def retry(
    request_id: Annotated[str, Path(pattern=REQUEST_ID_PATTERN)],
    who: Caller,
    state: State,
    after: ReadAfter,
    conn: Conn,
    body: Annotated[RetryBody | None, Body()] = None,
) -> dict[str, Any]:
    if who.role == "student":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "students cannot retry requests")
    found = await views.get_request(conn, who.for_one_request(), request_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"request {request_id} not found")
    try:
        accepted = await retry_failed(
            conn,
            state.tracker,
            state.publisher,
            found,
            body.stage if body else None,
            who.requested_by,
            state.settings.max_manual_retries,
        )
    except RetryRefused as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, {"code": exc.code, "message": str(exc)}
        ) from exc
    except PublishFailed as exc:
        raise _unavailable(exc) from exc
    return {
        "request_id": accepted.request_id,
        "stage": accepted.stage,
        "attempt": accepted.attempt,
        "requested_by": accepted.requested_by,
        "location": f"/api/v1/monitoring/requests/{request_id}",
        "position": accepted.position,
        "dispatched": accepted.dispatched,
    }


def _conflict(exc: actions.ActionRefused) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT, {"code": exc.code, "message": str(exc), **exc.extra}
    )


def _forbidden(field: str, message: str) -> HTTPException:
    """403 naming the body field the caller may not set to that value."""
    return HTTPException(
        status.HTTP_403_FORBIDDEN,
        [{"loc": ["body", field], "msg": message, "type": "forbidden"}],
    )


def _author(who: Principal, body: NewRequest) -> tuple[str, str, str]:
    """Who a new request belongs to and where its emails go: (student, organization,
    recipient). A student writes only as itself in its token's organization, a teacher only
    into its own; the recipient comes from the token (students) or from a trusted caller
    (admin, service), never from a student's or teacher's body."""
    student_id, org, email = body.student_id, body.organization_id, body.student_email
    if who.role == "student":
        if student_id not in (None, who.sub):
            raise _forbidden("student_id", "a student submits only as itself")
        if org not in (None, who.org or ""):
            raise _forbidden("organization_id", "a student submits only into its organization")
        if email is not None:
            raise _forbidden("student_email", "the recipient comes from the token's email claim")
        return who.sub, who.org or "", who.email or ""
    if who.role == "teacher":
        if org not in (None, who.org):
            raise _forbidden("organization_id", "a teacher submits only into its organization")
        if email is not None:
            raise _forbidden("student_email", "a teacher cannot choose the recipient")
        org = who.org
    if not student_id:
        # The caller has no student identity of its own to submit under.
        raise _forbidden("student_id", f"a {who.role} names the student it submits for")
    return student_id, org or "", email or ""


def _unavailable(exc: PublishFailed) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        {"code": "publish_failed", "message": str(exc)},
        headers={"Retry-After": "5"},
    )
