"""GET /api/v1/monitoring/*: the seed's monitoring endpoints, scoped to the caller."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, status
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from services.projector.api import traces, views
from services.projector.api.deps import Caller, Conn, ReadAfter, Reader, State, errors
from services.projector.api.filters import query_filter
from services.projector.api.stream import EventStreamResponse, StreamFilter, TooManyClients
from services.projector.api.views import RequestFilter
from vividly.rules import ID_PATTERN, REQUEST_ID_PATTERN
from vividly.tracing import trace_id_hex

router = APIRouter(prefix="/api/v1/monitoring", tags=["monitoring"], responses=errors(401, 422))

#: Sequence numbers and offsets are Postgres bigints.
SEQ_MAX = 2**63 - 1
ID = ID_PATTERN
RequestId = Annotated[str, Path(pattern=REQUEST_ID_PATTERN, description="A request id (UUID)")]


def _not_found(request_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"request {request_id} not found")


@router.get(
    "/dashboard",
    summary="Overview: counts, active, stage p50/p95, failure rate, breakers",
    responses=errors(403),
)
async def dashboard(who: Reader, conn: Conn, state: State) -> dict[str, Any]:
    settings = state.settings
    return await views.dashboard(
        conn, who, settings.stage_expected_s, settings.expected_s(None), state.stalled
    )


@router.get(
    "/requests",
    summary="Request summaries, newest first, keyset-paginated; filter by status (also "
    "active, stalled), stage, failed stage, organization, student, words, error words, "
    "time range and slowness",
    responses=errors(403),
)
async def list_requests(
    who: Reader,
    conn: Conn,
    state: State,
    flt: Annotated[RequestFilter, Depends(query_filter)],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: Annotated[
        str | None,
        Query(pattern=views.CURSOR_PATTERN, description="next_cursor of the previous page"),
    ] = None,
) -> dict[str, Any]:
    settings = state.settings
    try:
        return await views.list_requests(
            conn,
            who,
            flt,
            limit=limit,
            cursor=cursor,
            expected=settings.stage_expected_s,
            default_expected=settings.expected_s(None),
        )
    except views.BadCursor as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}],
        ) from exc


@router.get(
    "/requests/{request_id}",
    summary="One request: stages, waiting reason, error, outputs",
    responses=errors(404, 409, 503),
)
async def get_request(
    request_id: RequestId, who: Caller, state: State, after: ReadAfter, conn: Conn
) -> dict[str, Any]:
    settings = state.settings
    found = await views.get_request(
        conn,
        who.for_one_request(),
        request_id,
        settings.stage_expected_s,
        settings.expected_s(None),
    )
    if found is None:
        raise _not_found(request_id)
    return found


@router.get(
    "/requests/{request_id}/events",
    summary="A request's event timeline, paginated",
    responses=errors(403, 404),
)
async def request_events(
    request_id: RequestId,
    who: Reader,
    conn: Conn,
    after: Annotated[
        int, Query(ge=0, le=SEQ_MAX, description="next_after of the previous page")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    page = await views.request_events(conn, who, request_id, after, limit)
    if page is None:
        raise _not_found(request_id)
    return page


@router.get(
    "/requests/{request_id}/trace",
    summary="A request's trace (every stage attempt, Kafka hop and external call) as a span "
    "tree, read from the trace backend",
    responses=errors(403, 404, 503),
)
async def request_trace(
    request_id: RequestId, who: Reader, conn: Conn, state: State
) -> dict[str, Any]:
    if who.role not in ("admin", "teacher"):
        # A trace names the stack's insides (SQL statements, hosts, topics): staff only.
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"role {who.role} cannot read traces (staff only)"
        )
    correlation_id = await views.correlation_id(conn, who, request_id)
    if correlation_id is None:
        raise _not_found(request_id)
    trace_id = trace_id_hex(correlation_id)
    query_url = state.settings.jaeger_query_url
    if not query_url or state.traces is None:
        # Not an outage: this deployment keeps no traces, so there is none to give.
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            {
                "code": "tracing_off",
                "message": "this API reads no trace backend (VIVIDLY_JAEGER_QUERY_URL is "
                "not set): no request has a trace here",
                "trace_id": trace_id,
            },
        )
    try:
        data = await traces.fetch(
            state.traces, query_url, trace_id, state.settings.api_trace_timeout_s
        )
    except traces.TraceUnavailable as exc:
        raise _no_traces(str(exc)) from exc
    if data is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            {
                "code": "trace_not_found",
                "message": f"the trace backend holds no trace {trace_id} for request "
                f"{request_id} (not sampled, not exported yet, or expired)",
                "trace_id": trace_id,
            },
        )
    return {"request_id": request_id, **traces.span_tree(data)}


def _no_traces(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        {"code": "trace_backend_unavailable", "message": message},
    )


@router.get(
    "/metrics",
    summary="Hourly buckets per stage: counts, failures, duration percentiles",
    responses=errors(403),
)
async def metrics(
    who: Reader, conn: Conn, hours: Annotated[int, Query(ge=1, le=24 * 31)] = 24
) -> dict[str, Any]:
    return await views.hourly_metrics(conn, who, hours)


@router.get(
    "/quarantine",
    summary="Tracking events the fold set aside (undecodable, invalid, rejected), newest first",
    responses=errors(403),
)
async def quarantine(
    who: Reader, conn: Conn, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    if who.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the quarantine is for admins")
    return await views.quarantine(conn, limit)


@router.get("/breakers", summary="Circuit breaker states", responses=errors(403))
async def breakers(who: Reader, conn: Conn) -> list[dict[str, Any]]:
    return await views.breakers(conn, who)


@router.get(
    "/stream",
    summary="Server-Sent Events: every folded event in scope; ids are the read model's seq",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **errors(403, 429),
    },
)
async def stream(
    request: Request,
    who: Reader,
    state: State,
    request_id: Annotated[str | None, Query(pattern=REQUEST_ID_PATTERN)] = None,
    organization_id: Annotated[str | None, Query(pattern=ID)] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", pattern=r"^[0-9]{1,19}$")
    ] = None,
    since: Annotated[
        int | None, Query(ge=0, le=SEQ_MAX, description="Same as Last-Event-ID")
    ] = None,
) -> StreamingResponse:
    resume: int | None = since
    if last_event_id:
        resume = int(last_event_id)
        if resume > SEQ_MAX:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                [
                    {
                        "loc": ["header", "Last-Event-ID"],
                        "msg": f"must be at most {SEQ_MAX}",
                        "type": "less_than_equal",
                    }
                ],
            )
    flt = StreamFilter(who, request_id=request_id, organization_id=organization_id)
    try:
        sub = state.hub.subscribe(flt)
    except TooManyClients as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": "5"}
        ) from exc
    frames = state.hub.stream(sub, resume, request.is_disconnected)
    return EventStreamResponse(
        frames,
        state.settings.sse_send_timeout_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # Runs however the response ends, even if the generator never started.
        background=BackgroundTask(state.hub.unsubscribe, sub),
    )
