"""Shared dependencies, as ``Annotated`` aliases (full-stack-fastapi-template style)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.projector.api.stream import Hub
from vividly.auth import AuthError, Principal, verify
from vividly.config import Settings
from vividly.publish import KafkaPublisher
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
