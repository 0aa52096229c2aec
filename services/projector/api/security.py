"""What every response of the monitoring API carries, and what every request must not
exceed: plain ASGI middleware (no body relaying through an extra stream, so the SSE
stream passes untouched).

- :class:`BodyLimit` answers 413 for a body over the limit before anything parses it: at
  once when ``Content-Length`` says so, else as soon as the bytes read pass it.
- :class:`SecurityHeaders` adds ``nosniff``, a Content Security Policy with
  ``frame-ancestors 'none'`` (JSON gets ``default-src 'none'``; an HTML page sets its own,
  see :func:`html_policy`), ``X-Frame-Options``, ``Referrer-Policy`` and, for the API's
  JSON, ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The policy of every response that does not set its own (JSON, errors, metrics).
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
_INLINE_STYLE = re.compile(r"<style[^>]*>(.*?)</style>", re.S | re.I)


def _hashes(pattern: re.Pattern[str], html: str) -> str:
    out = []
    for body in pattern.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        out.append(f"'sha256-{digest}'")
    return " ".join(out)


def html_policy(html: str, *, script_src: str = "", style_src: str = "") -> str:
    """A policy for one static page: its own inline scripts and styles (by hash) and
    nothing else inline; fetches to this origin only; never framed."""
    none = "'none'"
    scripts = " ".join(p for p in (_hashes(_INLINE_SCRIPT, html), script_src) if p) or none
    styles = " ".join(p for p in (_hashes(_INLINE_STYLE, html), style_src) if p) or none
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles};"
        " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none';"
        " form-action 'none'"
    )


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", API_POLICY.encode()),
                    (b"cache-control", b"no-store"),
                ]
                headers.extend((k, v) for k, v in extra if k not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


async def _reply(send: Send, status: int, detail: Any) -> None:
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a request body over ``max_bytes``, before the app (or a parser) sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> list[dict[str, Any]]:
        return [
            {
                "loc": ["body"],
                "msg": f"request body larger than {self.max_bytes} bytes",
                "type": "too_large",
            }
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = None
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
        if declared is not None and declared < 0:
            await _reply(
                send,
                400,
                [
                    {
                        "loc": ["header", "Content-Length"],
                        "msg": "not a length",
                        "type": "value_error",
                    }
                ],
            )
            return
        if declared is not None and declared > self.max_bytes:
            await _reply(send, 413, self._too_large())
            return
        # Read the whole (small) body here, counting, then hand it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _reply(send, 413, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _json_safe(value: Any, depth: int = 0) -> Any:
    """An echoed input that JSON can carry: NaN/inf as text, long text cut, deep or big
    structures summarised (an error must never fail to serialise into a 500)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "…"
    if isinstance(value, bytes):
        return _json_safe(value.decode("utf-8", "replace"), depth)
    if isinstance(value, dict):
        if depth > 3 or len(value) > 50:
            return f"<object of {len(value)} keys>"
        return {str(k)[:100]: _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if depth > 3 or len(value) > 50:
            return f"<array of {len(value)} items>"
        return [_json_safe(v, depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:200]


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming the field, as FastAPI answers, with the echoed input made JSON-safe."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = []
    for e in errors:
        item = {k: v for k, v in e.items() if k not in ("input", "ctx", "url")}
        if "input" in e:
            item["input"] = _json_safe(e["input"])
        if "ctx" in e:
            item["ctx"] = _json_safe(e["ctx"])
        detail.append(item)
    return JSONResponse({"detail": detail}, status_code=422)
