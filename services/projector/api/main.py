"""The monitoring API process: ``python -m services.projector.api.main``.

Wiring only: settings → Postgres pool, SSE hub (LISTEN), Kafka publisher and tracker (for
submit and retry), routes, then uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.projector.api import views
from services.projector.api.deps import AppState
from services.projector.api.logends import LogEnds
from services.projector.api.routes import health, monitoring, requests
from services.projector.api.security import (
    BodyLimit,
    SecurityHeaders,
    html_policy,
    validation_error,
)
from services.projector.api.stream import Hub
from vividly import metrics
from vividly.config import STAGES, TRACKING_TOPIC, Settings, topic_plan
from vividly.logs import configure_logging
from vividly.publish import KafkaPublisher
from vividly.runtime import telemetry
from vividly.runtime.auth import WeakSecret, check_secret
from vividly.runtime.bus import ensure_topics
from vividly.runtime.db import migrate
from vividly.tracker import RequestTracker

log = logging.getLogger("vividly.api")
DASHBOARD = Path(__file__).resolve().parent / "static" / "dashboard.html"


class RouteTiming:
    """Latency per route template, as plain ASGI middleware: it only wraps ``send`` to see
    the status, so streaming responses pass through untouched (Starlette's
    BaseHTTPMiddleware would relay every SSE chunk through an extra stream)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith("/stream"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            metrics.api_latency.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - started
            )


async def _stalled_gauge(state: AppState) -> None:
    """Keep the stalled counts current (every stalled_refresh_s): the gauge
    vividly_requests_stalled{stage} and the per-organization counts the dashboard reads."""
    settings, pool = state.settings, state.pool
    while True:
        try:
            async with pool.acquire() as conn:
                by_org = await views.stalled_by_org(
                    conn, settings.stage_expected_s, settings.expected_s(None)
                )
            state.stalled = by_org
            totals: dict[str, int] = {}
            for (_org, stage), n in by_org.items():
                totals[stage] = totals.get(stage, 0) + n
            for stage in STAGES:
                metrics.requests_stalled.labels(stage).set(totals.get(stage, 0))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("cannot count stalled requests", extra={"error": str(exc)})
        await asyncio.sleep(settings.stalled_refresh_s)


def create_app(settings: Settings) -> FastAPI:
    secret = settings.effective_jwt_secret()
    check_secret(secret)  # before anything listens: WeakSecret

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.effective_database_url()
        await migrate(url)
        await asyncio.to_thread(
            ensure_topics,
            settings,
            topic_plan(settings),
        )
        # Custom plans: a filter's selectivity varies by orders of magnitude with its
        # values (a rare error word, a slowness bound), and a generic plan cached for the
        # prepared statement would be wrong for most of them. No parallel workers: their
        # start-up costs more than the short queries of an API gain (measured with
        # bench.api at 1M requests).
        pool = await asyncpg.create_pool(
            url,
            min_size=2,
            max_size=settings.api_db_pool_size,
            server_settings={
                "plan_cache_mode": "force_custom_plan",
                "max_parallel_workers_per_gather": "0",
            },
        )
        hub = Hub(
            url,
            pool,
            settings.sse_heartbeat_s,
            max_clients=settings.sse_max_clients,
            max_client_bytes=settings.sse_max_client_bytes,
        )
        await hub.start()
        publisher = KafkaPublisher(settings, "api")
        tracker = RequestTracker.from_settings(settings, publisher)
        log_ends = LogEnds(settings, TRACKING_TOPIC)
        app.state.vividly = AppState(settings, secret, pool, hub, publisher, tracker, log_ends)
        if settings.jaeger_query_url:
            app.state.vividly.traces = aiohttp.ClientSession()
        gauges = asyncio.create_task(_stalled_gauge(app.state.vividly), name="stalled-gauge")
        log.info("api ready", extra={"port": settings.api_port})
        try:
            yield
        finally:
            gauges.cancel()
            if app.state.vividly.traces is not None:
                await app.state.vividly.traces.close()
            await hub.stop()
            await pool.close()
            await asyncio.to_thread(publisher.close, 10.0)
            await asyncio.to_thread(log_ends.close)

    app = FastAPI(
        title="Vividly monitoring API",
        version="1.0",
        description="Request tracking for the Vividly pipeline: the read model, live "
        "events (SSE), submission and retries. Bearer JWT (`vividly token`).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(health.router)
    app.include_router(monitoring.router)
    app.include_router(requests.router)

    page = DASHBOARD.read_text()
    page_policy = html_policy(page)

    @app.get("/monitoring/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        # The page holds no data: everything it shows comes from the API with the token
        # pasted into it. Its policy allows its own inline script and style, by hash.
        return HTMLResponse(page, headers={"Content-Security-Policy": page_policy})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs_page() -> HTMLResponse:
        html = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")
        text = bytes(html.body).decode()
        cdn = "https://cdn.jsdelivr.net"
        policy = html_policy(text, script_src=cdn, style_src=cdn).replace(
            "img-src 'self' data:", "img-src 'self' data: https://fastapi.tiangolo.com"
        )
        return HTMLResponse(text, headers={"Content-Security-Policy": policy})

    # Outermost first: the body limit before anything reads a body; every response,
    # errors included, gets the security headers.
    app.add_middleware(RouteTiming)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(SecurityHeaders)
    telemetry.instrument_app(app)  # server spans, when tracing is on
    return app


def main() -> None:
    settings = Settings(producer_name="api")
    configure_logging("api", settings.log_level)
    telemetry.configure("api")  # spans exported only when OTEL_* asks
    try:
        app = create_app(settings)
    except WeakSecret as exc:
        log.critical("refusing to start", extra={"reason": str(exc)})
        print(f"vividly api: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    try:
        uvicorn.run(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,
            access_log=False,
            loop="uvloop",
            http="httptools",
            timeout_graceful_shutdown=5,
        )
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
