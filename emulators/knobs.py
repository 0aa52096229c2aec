"""Fault knobs and request recording shared by the HTTP emulators."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import uvloop
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Knobs:
    """What the emulator does to requests. All settable with POST /_emulator/config."""

    latency_s: float = 0.0  # added to every API response
    error_rate: float = 0.0  # fraction of API requests answered with `error_status`
    error_status: int = 503
    outage_until: float = 0.0  # epoch seconds; until then every API request fails
    outage_status: int = 503  # 503, 504, or 0 for "hang until the client times out"
    job_seconds: float = 2.0  # video emulator: how long a job takes
    job_fail_rate: float = 0.0  # video emulator: fraction of jobs that end "failed"
    seed: int | None = None

    def update(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            if key == "outage_for_s":
                self.outage_until = time.time() + float(value)
                continue
            if not hasattr(self, key):
                raise KeyError(key)
            setattr(self, key, type(getattr(self, key))(value) if value is not None else None)


#: Headers whose values are credentials: recorded as a fingerprint, never in clear.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-goog-api-key", "x-api-key", "cookie"}
)


def redact(name: str, value: str) -> str:
    """A credential header's value as ``[redacted sha256:<12 hex>]`` (tests can still
    tell which key was sent); any other header as it is."""
    if name.lower() not in SECRET_HEADERS:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:12]
    return f"[redacted sha256:{digest}]"


@dataclass
class Recorder:
    """The last requests received: method, path and headers (for correlation checks)."""

    limit: int = 20_000
    items: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, request: web.Request, status: int) -> None:
        self.items.append(
            {
                "method": request.method,
                "path": request.path,
                "status": status,
                "headers": {k.lower(): redact(k, v) for k, v in request.headers.items()},
                "at": time.time(),
            }
        )
        self.counts[str(status)] += 1
        while len(self.items) > self.limit:
            self.items.popleft()


def install(app: web.Application, knobs: Knobs, recorder: Recorder) -> None:
    """Add the knob/record endpoints and the fault-injecting middleware to ``app``."""
    rng = random.Random(knobs.seed)

    @web.middleware
    async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_emulator"):
            return await handler(request)
        if knobs.outage_until > time.time():
            if knobs.outage_status == 0:
                await asyncio.sleep(3600)
            recorder.add(request, knobs.outage_status)
            return web.json_response(
                {"error": {"code": knobs.outage_status, "message": "emulated outage"}},
                status=knobs.outage_status,
            )
        if knobs.error_rate and rng.random() < knobs.error_rate:
            recorder.add(request, knobs.error_status)
            return web.json_response(
                {"error": {"code": knobs.error_status, "message": "emulated error"}},
                status=knobs.error_status,
            )
        if knobs.latency_s:
            await asyncio.sleep(knobs.latency_s)
        response = await handler(request)
        recorder.add(request, response.status)
        return response

    async def get_config(_request: web.Request) -> web.Response:
        return web.json_response(asdict(knobs))

    async def set_config(request: web.Request) -> web.Response:
        # JSON only: a web page can post a form here without asking, never JSON.
        if request.content_type != "application/json":
            return web.json_response({"error": "send the knobs as application/json"}, status=415)
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise TypeError("the body is an object of knobs")
            knobs.update(data)
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"error": f"bad knob: {exc}"}, status=422)
        return web.json_response(asdict(knobs))

    async def get_requests(request: web.Request) -> web.Response:
        path = request.query.get("path", "")
        items = [r for r in recorder.items if r["path"].startswith(path)]
        return web.json_response({"requests": items, "counts": dict(recorder.counts)})

    async def clear_requests(request: web.Request) -> web.Response:
        if request.content_type not in ("application/json", "application/octet-stream"):
            return web.json_response({"error": "send no body, or JSON"}, status=415)
        recorder.items.clear()
        recorder.counts.clear()
        return web.json_response({"ok": True})

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.middlewares.append(faults)
    app.router.add_get("/_emulator/config", get_config)
    app.router.add_post("/_emulator/config", set_config)
    app.router.add_get("/_emulator/requests", get_requests)
    app.router.add_delete("/_emulator/requests", clear_requests)
    app.router.add_get("/_emulator/health", health)


def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, on uvloop (the emulators share the CPU with what they
    stand in for, so they should take as little of it as they can)."""
    web.run_app(
        app,
        loop=uvloop.new_event_loop(),
        host=host,
        port=port,
        print=None,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=2.0,
    )
