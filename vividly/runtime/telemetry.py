"""Exporting traces: the OpenTelemetry SDK, set up from the standard ``OTEL_*`` variables.

Every service calls :func:`configure` once at start. Tracing is off unless the
environment asks for it (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER``), and off when
``OTEL_SDK_DISABLED=true``; off, no provider is installed and :mod:`vividly.tracing`
records nothing. On, the SDK reads the rest of the standard variables itself:

- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``;
  ``parentbased_traceidratio`` with ``0.1`` keeps one request in ten, and since a
  request's trace id comes from its correlation id, every service decides the same way).
  The ratio is decided on a hash of the trace id (:class:`RequestRatio`): the SDK's own
  ratio sampler compares the id's low 64 bits, whose top bits are a UUID's fixed variant
  bits here (``10``), so it kept every request or none;
- ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (``http/protobuf``, the default, or ``grpc``),
  ``…_ENDPOINT``, ``…_HEADERS``, ``…_TIMEOUT``;
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_BSP_*`` for the batch queue.

Spans are exported by the SDK's batch processor on its own thread, through the SDK's OTLP
exporters with a faster span encoding (:mod:`vividly.runtime.otlp`): a request never waits
on the trace backend, and when the backend is slow or gone the queue drops spans (it is
bounded, ``OTEL_BSP_MAX_QUEUE_SIZE``) rather than grow or block.

The external calls are traced by OpenTelemetry's maintained instrumentations (asyncpg,
botocore, aiohttp-client, httpx, google-genai, FastAPI); SMTP has none, so the notify
service's provider opens its own client span (:func:`vividly.tracing.client_span`).
A client span with no parent (the projector's writes, the API's background refresh) is
not sampled: it would be a one-span trace of no request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from vividly import tracing

log = logging.getLogger("vividly.runtime.telemetry")

_configured: TracerProvider | None = None


def requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces to be exported."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER")
    if exporter is not None and exporter.strip():
        return exporter.strip().lower() != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


class RequestTraceIds(RandomIdGenerator):
    """Random ids, except the trace id of a root span that :func:`vividly.tracing.request_root`
    starts: the request's own, from its correlation id."""

    def generate_trace_id(self) -> int:
        forced = tracing.forced_trace_id.get()
        return forced or super().generate_trace_id()


class NoOrphanClients(Sampler):
    """The configured sampler, except that a CLIENT span with no parent is dropped."""

    def __init__(self, base: Sampler) -> None:
        self.base = base

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                return SamplingResult(Decision.DROP)
        return self.base.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoOrphanClients{{{self.base.get_description()}}}"


class RequestRatio(TraceIdRatioBased):
    """Keeps ``rate`` of the traces, decided on a hash of the trace id, so ids that are not
    uniformly random in their low bits (a UUID's: its variant bits lead them) still
    sample at the rate asked, and every service decides alike for one request."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        *args: Any,
        **kwargs: Any,
    ) -> SamplingResult:
        digest = hashlib.blake2b(trace_id.to_bytes(16, "big"), digest_size=8).digest()
        return super().should_sample(parent_context, int.from_bytes(digest, "big"), *args, **kwargs)

    def get_description(self) -> str:
        return f"RequestRatio{{{self.rate}}}"


def sampler(env: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` name (the standard
    values; default ``parentbased_always_on``), ratio ones as :class:`RequestRatio`."""
    name = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    arg = (env.get("OTEL_TRACES_SAMPLER_ARG") or "").strip()
    rate = 1.0
    if name.endswith("traceidratio"):
        try:
            rate = float(arg) if arg else 1.0
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            log.warning(
                "OTEL_TRACES_SAMPLER_ARG is not a ratio in [0, 1]; using 1.0", extra={"value": arg}
            )
            rate = 1.0
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": RequestRatio(rate),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(RequestRatio(rate)),
    }
    if name not in samplers:
        log.warning(
            "unknown OTEL_TRACES_SAMPLER; using parentbased_always_on", extra={"value": name}
        )
        name = "parentbased_always_on"
    return samplers[name]


def _exporter(env: Mapping[str, str]) -> SpanExporter:
    kind = (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")[0].strip().lower()
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r}: this build exports otlp or console")
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTLP protocol {protocol!r}: use http/protobuf or grpc")
    # The SDK's exporters, with the span encoding replaced by a faster one (otlp.py).
    from vividly.runtime import otlp

    return otlp.grpc_exporter() if protocol == "grpc" else otlp.FastHttpSpanExporter()


def configure(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Install the tracer provider for ``service`` when the environment asks for tracing,
    and the instrumentations of the external clients. Returns whether tracing is on."""
    global _configured
    env = os.environ if env is None else env
    if _configured is not None:
        return True
    if not requested(env):
        return False
    try:
        provider = TracerProvider(
            shutdown_on_exit=False,  # shutdown() does it, bounded (the SDK's atexit is not)
            resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service}),
            sampler=NoOrphanClients(sampler(env)),
            id_generator=RequestTraceIds(),
        )
        provider.add_span_processor(BatchSpanProcessor(_exporter(env)))
    except (ValueError, ImportError) as exc:
        # Traces are for looking at requests, never a reason to stop serving them: a
        # setting the SDK refuses turns tracing off, loudly.
        log.error(
            "tracing off: the OTEL_* settings are not usable",
            extra={"service": service, "reason": f"{type(exc).__name__}: {exc}"},
        )
        return False
    trace.set_tracer_provider(provider)
    _configured = provider
    instrument(env)
    log.info(
        "tracing on",
        extra={"sampler": provider.sampler.get_description(), "service": service},
    )
    return True


def disabled_instrumentations(env: Mapping[str, str] | None = None) -> set[str]:
    """The instrumentations ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` turns off (the
    standard variable of OpenTelemetry's Python auto-instrumentation: a comma-separated
    list of their entry-point names, such as ``asyncpg,botocore``; ``*`` is all)."""
    env = os.environ if env is None else env
    raw = env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    names = {n.strip().lower() for n in raw.split(",") if n.strip()}
    if "*" in names:
        names |= {name for name, _ in _INSTRUMENTORS} | {"fastapi"}
    return names


def instrument(env: Mapping[str, str] | None = None) -> list[str]:
    """Turn on the maintained instrumentations installed here, except those the
    environment turns off; returns their names."""
    off = disabled_instrumentations(env)
    done: list[str] = []
    for name, load in _INSTRUMENTORS:
        if name in off:
            continue
        try:
            instrumentor = load()
        except ImportError:
            continue  # the client (or its instrumentation) is not installed here
        if not instrumentor.is_instrumented_by_opentelemetry:
            # google-genai's instrumentation declares <3 while we pin 3.x; its wrappers
            # fit 3.x's Models API (the trace test checks its spans), so skip the check.
            instrumentor.instrument(skip_dep_check=True)
        done.append(name)
    return done


def _asyncpg() -> Any:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    return AsyncPGInstrumentor()  # type: ignore[no-untyped-call]


def _botocore() -> Any:
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    return BotocoreInstrumentor()  # type: ignore[no-untyped-call]


def _aiohttp() -> Any:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

    return AioHttpClientInstrumentor()


def _httpx() -> Any:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    return HTTPXClientInstrumentor()


def _genai() -> Any:
    from opentelemetry.instrumentation.google_genai import GoogleGenAiSdkInstrumentor

    return GoogleGenAiSdkInstrumentor()


_INSTRUMENTORS = (
    ("asyncpg", _asyncpg),
    ("botocore", _botocore),
    ("aiohttp-client", _aiohttp),
    ("httpx", _httpx),
    ("google-genai", _genai),
)


def instrument_app(app: Any) -> None:
    """Server spans for the monitoring API (FastAPI's instrumentation), when tracing is on.
    The live stream and the scrape endpoints are left out: a span per SSE connection
    lasts as long as the connection, and Prometheus scrapes are no one's request."""
    if _configured is None or "fastapi" in disabled_instrumentations():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="/metrics,/healthz,/readyz,/api/v1/monitoring/stream"
    )


def shutdown(timeout_s: float = 5.0) -> None:
    """Export what is queued and stop, in at most about ``timeout_s`` whatever the trace
    backend does (one that accepts and never answers holds an export for the exporter's
    whole timeout: the SDK's own shutdown would wait for it); a no-op when tracing is off."""
    global _configured
    provider, _configured = _configured, None
    if provider is None:
        return
    started = time.monotonic()
    provider.force_flush(int(timeout_s * 1000))
    stopper = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    stopper.start()
    stopper.join(max(0.5, timeout_s - (time.monotonic() - started)))
    if stopper.is_alive():
        log.warning("trace backend did not take the last spans in time; dropping them")


def configure_tracing(service: str) -> bool:
    """Turn tracing on for a worker of one's own when the ``OTEL_*`` environment asks for
    it (what :func:`vividly.runtime.run` does for a service); returns whether it is on."""
    return configure(service)


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Export the spans still queued (at most about ``timeout_s``) and stop tracing."""
    shutdown(timeout_s)
