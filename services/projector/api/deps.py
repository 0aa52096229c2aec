"""Shared dependencies, as ``Annotated`` aliases (full-stack-fastapi-template style)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from services.projector.api.logends import LogEnds
from services.projector.api.stream import Hub
from vividly.config import TRACKING_TOPIC, Settings
from vividly.publish import KafkaPublisher
from vividly.runtime.auth import AuthError, Principal, TokenCache
from vividly.tracker import RequestTracker


@dataclass
class AppState:
    settings: Settings
    secret: str
    pool: Any
    hub: Hub
    publisher: KafkaPublisher
    tracker: RequestTracker
    log_ends: LogEnds | None = None
    #: Stalled requests per (organization, stage), as last counted (None: not yet).
    stalled: dict[tuple[str, str], int] | None = None
    #: The connection the trace route reads Jaeger's query API with (None: no backend).
    traces: Any = None
    #: Bearer tokens already verified (until they expire).
    tokens: TokenCache = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = TokenCache(self.secret, self.settings.jwt_issuer)


# The dependencies are ``async def`` though they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hop for each of them on every call (py-spy:
# run_in_threadpool was 6% of the API's samples on metrics calls, the waits not counted).
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.vividly
    return state


State = Annotated[AppState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="JWT from `vividly token`")


async def get_principal(
    state: State,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return state.tokens.verify(creds.credentials)
    except AuthError as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}
        ) from exc


Caller = Annotated[Principal, Depends(get_principal)]


async def get_reader(who: Caller) -> Principal:
    if not who.can_read:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {who.role} cannot read requests")
    return who


Reader = Annotated[Principal, Depends(get_reader)]


async def get_conn(state: State) -> AsyncIterator[Any]:
    async with state.pool.acquire() as conn:
        yield conn


Conn = Annotated[Any, Depends(get_conn)]

#: A log position as the tracker hands it back (``partition:offset`` of tracking.events).
POSITION_PATTERN = r"^[0-9]{1,5}:[0-9]{1,18}$"


async def read_after(
    state: State,
    position: Annotated[
        str | None,
        Query(
            pattern=POSITION_PATTERN,
            description="Read your writes: answer only once the read model has folded "
            "tracking.events past this `partition:offset` (the position a write returned)",
        ),
    ] = None,
    wait_s: Annotated[
        float, Query(ge=0, le=10, description="How long to wait for `position` (seconds)")
    ] = 5.0,
) -> str | None:
    """Waits, boundedly, until the projector has folded past ``position``; 503
    ``read_model_behind`` (with how far it got) when it has not in time; 409
    ``position_not_in_log`` for a position the log has not given (no such partition, or
    past the log's end)."""
    if position is None:
        return None
    partition, offset = (int(x) for x in position.split(":"))
    reached, folded = await state.hub.folded_past(TRACKING_TOPIC, partition, offset, 0)
    if reached:
        return position
    # Wait for the projector and, beside it (off the wait's path), ask the broker whether
    # the log has such a position at all: if not, answer at once.
    waiting = asyncio.ensure_future(
        state.hub.folded_past(TRACKING_TOPIC, partition, offset, wait_s)
    )
    checking = asyncio.ensure_future(_log_end(state, partition))
    try:
        done, _ = await asyncio.wait({waiting, checking}, return_when=asyncio.FIRST_COMPLETED)
        if checking not in done and not waiting.result()[0]:
            # Not folded in time: before saying "behind", make sure the position is real.
            await asyncio.wait({checking})
        if checking.done():
            end = checking.result()
            if end is not None and offset >= end:
                what = "no such partition" if end < 0 else f"the log ends at {partition}:{end}"
                # Not one the log has given (yet): a conflict with the log's state, not a
                # malformed value (the log may grow to it).
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    {
                        "code": "position_not_in_log",
                        "message": f"{position} is not a position of {TRACKING_TOPIC}: {what}",
                        "wanted": position,
                    },
                )
        reached, folded = await waiting
    finally:
        for task in (waiting, checking):
            if not task.done():
                task.cancel()
    if not reached:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            {
                "code": "read_model_behind",
                "message": f"the read model has not folded past {position} within {wait_s:g} s",
                "wanted": position,
                "folded": None if folded is None else f"{partition}:{folded - 1}",
            },
            headers={"Retry-After": "1"},
        )
    return position


async def _log_end(state: AppState, partition: int) -> int | None:
    return None if state.log_ends is None else await state.log_ends.end(partition)


ReadAfter = Annotated[str | None, Depends(read_after)]


# ---------------------------------------------------------------------- documented errors
class FieldError(BaseModel):
    """One reason a request was refused, naming where: ``loc`` is ["body", field],
    ["query", name], ["path", name] or ["header", name]."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorBody(BaseModel):
    detail: str | list[FieldError] | Problem


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (every one with the same body)."""
    return {code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in codes}


ERROR_TEXT = {
    400: "The body is not JSON (or not UTF-8)",
    401: "No bearer token, or one that is expired, malformed or signed with another secret",
    403: "The token's role may not do this; the detail names the field when one is to blame",
    404: "No such request in the caller's scope (for a trace, also: detail.code "
    "trace_not_found or tracing_off)",
    409: "Not possible in the request's current state (detail.code says why)",
    413: "The body is larger than the API reads (VIVIDLY_API_MAX_BODY_BYTES)",
    422: "A parameter or body field is invalid; the detail names it",
    429: "Too many stream clients on this API process; retry after Retry-After seconds",
    503: "The event log did not acknowledge the write (nothing was accepted), or the read "
    "model has not reached the given position in time (code read_model_behind); retry; "
    "or, for a trace, the trace backend is unreachable (code trace_backend_unavailable)",
}
