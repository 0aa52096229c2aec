"""A request's trace, read from Jaeger's query API and shaped into the span tree the
dashboard draws (``GET /api/v1/monitoring/requests/{id}/trace``).

Jaeger has no login, so callers never reach it: the API checks the caller's scope on the
request first, then reads ``/api/traces/{trace id}`` (the trace id comes from the request's
correlation id, :func:`vividly.tracing.trace_id_hex`) over the API's own connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import aiohttp
import orjson

#: Jaeger's own bookkeeping tags, folded into ``kind``/``status`` or of no use to a reader.
_HIDDEN_TAGS: Final = frozenset(
    {
        "span.kind",
        "otel.status_code",
        "otel.status_description",
        "otel.scope.name",
        "otel.scope.version",
        "error",
        "internal.span.format",
    }
)


class TraceUnavailable(Exception):
    """The trace backend is not configured, unreachable or answered nonsense."""


async def fetch(
    session: aiohttp.ClientSession, query_url: str, trace_id: str, timeout_s: float
) -> dict[str, Any] | None:
    """Jaeger's JSON for one trace, or None when it holds no such trace (yet)."""
    url = f"{query_url.rstrip('/')}/api/traces/{trace_id}"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            body = await r.read()
            if r.status == 404:
                return None
            if r.status != 200:
                raise TraceUnavailable(f"the trace backend answered {r.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TraceUnavailable(f"the trace backend is unreachable: {exc}") from exc
    try:
        data = orjson.loads(body).get("data") or []
    except (orjson.JSONDecodeError, AttributeError) as exc:
        raise TraceUnavailable("the trace backend answered something that is not a trace") from exc
    for t in data:
        if isinstance(t, dict) and t.get("traceID") == trace_id:
            return t
    return None


def _tags(tags: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {t["key"]: t.get("value") for t in tags if "key" in t}


def span_tree(data: dict[str, Any]) -> dict[str, Any]:
    """Jaeger's trace as the dashboard draws it: every span once, depth-first in start
    order (a parent before its children), each with its depth, offset from the trace's
    start and duration in ms, service, kind, status and attributes. A span whose parent
    has not arrived (still in an exporter's queue, or dropped) is drawn at depth 0 and
    the tree is marked incomplete."""
    trace_id = data["traceID"]
    services = {k: v.get("serviceName", "?") for k, v in (data.get("processes") or {}).items()}
    spans = data.get("spans") or []
    by_id = {s["spanID"]: s for s in spans}
    parent_of: dict[str, str | None] = {}
    links: dict[str, list[dict[str, str]]] = {}
    for s in spans:
        parent_of[s["spanID"]] = None
        for ref in s.get("references") or []:
            if ref.get("refType") == "CHILD_OF" and ref.get("traceID") == trace_id:
                parent_of[s["spanID"]] = ref.get("spanID")
            else:
                links.setdefault(s["spanID"], []).append(
                    {"trace_id": ref.get("traceID", ""), "span_id": ref.get("spanID", "")}
                )
    children: dict[str | None, list[dict[str, Any]]] = {}
    orphans = 0
    for s in spans:
        parent = parent_of[s["spanID"]]
        if parent is not None and parent not in by_id:
            orphans += 1
            parent = None
        children.setdefault(parent, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: (s.get("startTime", 0), s["spanID"]))
    start = min((s.get("startTime", 0) for s in spans), default=0)
    out: list[dict[str, Any]] = []
    stack = [(s, 0) for s in reversed(children.get(None, []))]
    seen: set[str] = set()
    while stack or len(seen) < len(by_id):
        if not stack:
            # Spans whose parents form a loop (no well-behaved tracer makes one): drawn
            # at the top, so nothing Jaeger holds is left out.
            orphans += 1
            stack.append((next(s for s in spans if s["spanID"] not in seen), 0))
        s, depth = stack.pop()
        if s["spanID"] in seen:
            continue
        seen.add(s["spanID"])
        tags = _tags(s.get("tags") or [])
        error = tags.get("otel.status_code") == "ERROR" or tags.get("error") is True
        out.append(
            {
                "span_id": s["spanID"],
                "parent_id": parent_of[s["spanID"]],
                "depth": depth,
                "name": s.get("operationName", ""),
                "service": services.get(s.get("processID", ""), "?"),
                "kind": str(tags.get("span.kind", "internal")),
                "status": "error" if error else "ok",
                "error": tags.get("otel.status_description") if error else None,
                "offset_ms": round((s.get("startTime", 0) - start) / 1000, 3),
                "duration_ms": round(s.get("duration", 0) / 1000, 3),
                "attributes": {k: v for k, v in tags.items() if k not in _HIDDEN_TAGS},
                "links": links.get(s["spanID"], []),
            }
        )
        stack.extend((c, depth + 1) for c in reversed(children.get(s["spanID"], [])))
    end = max((s.get("startTime", 0) + s.get("duration", 0) for s in spans), default=start)
    return {
        "trace_id": trace_id,
        "services": sorted(set(services.values())),
        "span_count": len(out),
        "duration_ms": round((end - start) / 1000, 3),
        "complete": orphans == 0,
        "spans": out,
    }
