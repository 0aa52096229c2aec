"""Shared dependencies, as ``Annotated`` aliases (full-stack-fastapi-template style)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from services.projector.api.stream import Hub
from vividly.config import Settings
from vividly.publish import KafkaPublisher
from vividly.runtime.auth import AuthError, Principal, verify
from vividly.tracker import RequestTracker


@dataclass
class AppState:
    settings: Settings
    secret: str
    pool: Any
    hub: Hub
    publisher: KafkaPublisher
    tracker: RequestTracker


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.vividly
    return state


State = Annotated[AppState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="JWT from `vividly token`")


def get_principal(
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
        return verify(state.secret, creds.credentials, state.settings.jwt_issuer)
    except AuthError as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}
        ) from exc


Caller = Annotated[Principal, Depends(get_principal)]


def get_reader(who: Caller) -> Principal:
    if not who.can_read:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {who.role} cannot read requests")
    return who


Reader = Annotated[Principal, Depends(get_reader)]


async def get_conn(state: State) -> AsyncIterator[Any]:
    async with state.pool.acquire() as conn:
        yield conn


Conn = Annotated[Any, Depends(get_conn)]


# ---------------------------------------------------------------------- documented errors
class FieldError(BaseModel):
    """One reason a request was refused, naming where: ``loc`` is ["body", field],
    ["query", name], ["path", name] or ["header", name]."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
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
    404: "No such request in the caller's scope",
    409: "Not possible in the request's current state (detail.code says why)",
    413: "The body is larger than the API reads (VIVIDLY_API_MAX_BODY_BYTES)",
    422: "A parameter or body field is invalid; the detail names it",
    429: "Too many stream clients on this API process; retry after Retry-After seconds",
    503: "The event log did not acknowledge the write (nothing was accepted); retry",
}
