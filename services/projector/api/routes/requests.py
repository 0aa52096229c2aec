"""POST /api/v1/requests (submit) and POST /api/v1/requests/{id}/retry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Response, status
from pydantic import BaseModel, Field, field_validator

from services.ingest.handlers import (
    DURATION_MAX,
    DURATION_MIN,
    OBJECTIVE_MAX,
    TOPIC_MAX,
    TOPIC_MIN,
    normalise_grade,
)
from services.projector.api import views
from services.projector.api.commands import (
    PublishFailed,
    RetryRefused,
    publish_acked,
    retry_failed,
)
from services.projector.api.deps import Caller, Conn, State
from vividly.auth import Principal, is_email
from vividly.config import STAGES
from vividly.submit import build_submission

router = APIRouter(prefix="/api/v1/requests", tags=["requests"])

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$"


class NewRequest(BaseModel):
    """What a student asks for. Students may leave out student_id (their own is used);
    teachers may leave out organization_id (theirs is used)."""

    student_id: str | None = Field(default=None, pattern=ID_PATTERN)
    organization_id: str | None = Field(default=None, pattern=ID_PATTERN)
    topic: str = Field(min_length=TOPIC_MIN, max_length=TOPIC_MAX)
    learning_objective: str = Field(min_length=1, max_length=OBJECTIVE_MAX)
    grade_level: str = Field(description="K or 1-12")
    duration_minutes: int = Field(ge=DURATION_MIN, le=DURATION_MAX)
    metadata: dict[str, Any] = Field(default_factory=dict)
    student_email: str | None = Field(default=None, max_length=254)

    @field_validator("topic", "learning_objective")
    @classmethod
    def _stripped(cls, v: str) -> str:
        v = v.strip()
        if len(v) < 1:
            raise ValueError("must not be blank")
        return v

    @field_validator("topic")
    @classmethod
    def _topic_length(cls, v: str) -> str:
        if len(v) < TOPIC_MIN:
            raise ValueError(f"must be at least {TOPIC_MIN} characters")
        return v

    @field_validator("grade_level")
    @classmethod
    def _grade(cls, v: str) -> str:
        grade = normalise_grade(v)
        if grade is None:
            raise ValueError("must be one of K, 1-12")
        return grade

    @field_validator("student_email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is not None and not is_email(v):
            raise ValueError("must be an email address")
        return v


class RetryBody(BaseModel):
    stage: str | None = Field(default=None, description="The failed stage (default: it)")

    @field_validator("stage")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in STAGES:
            raise ValueError(f"must be one of {', '.join(STAGES)}")
        return v


@router.post("", status_code=status.HTTP_202_ACCEPTED, summary="Submit a request")
async def submit(
    body: NewRequest,
    who: Caller,
    state: State,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
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
        await publish_acked(state.publisher, events)
        await publish_acked(state.publisher, [(item.topic, item.key, item.value, item.headers)])
    except PublishFailed as exc:
        raise _unavailable(exc) from exc
    location = f"/api/v1/monitoring/requests/{rid}"
    response.headers["Location"] = location
    return {"request_id": rid, "correlation_id": cid, "status": "queued", "location": location}


@router.post(
    "/{request_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Retry a failed request from its failed stage",
    responses={
        404: {"description": "no such request in scope"},
        409: {"description": "not retryable now"},
    },
)
async def retry(
    request_id: str,
    who: Caller,
    state: State,
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
    }


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
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "student_id"], "msg": "Field required", "type": "missing"}],
        )
    return student_id, org or "", email or ""


def _unavailable(exc: PublishFailed) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        {"code": "publish_failed", "message": str(exc)},
        headers={"Retry-After": "5"},
    )
