"""/healthz (alive), /readyz (database and live stream ready), /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.projector.api.deps import State

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Postgres or the live stream is not ready"}})
async def readyz(state: State, response: Response) -> dict[str, Any]:
    checks: dict[str, Any] = {"stream": state.hub.listening}
    try:
        async with state.pool.acquire() as conn:
            checks["database"] = await conn.fetchval("SELECT 1") == 1
    except Exception as exc:
        checks["database"] = False
        checks["error"] = str(exc)
    ok = checks["database"] and checks["stream"]
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ready" if ok else "not ready", "checks": checks}


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
