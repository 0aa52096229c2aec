"""Spans for a request's path through the pipeline (OpenTelemetry's API only).

This module records spans through whatever tracer provider the process has. Without one
(the SDK core alone, or a service with no ``OTEL_*`` exporter set: see
:mod:`vividly.runtime.telemetry`) every helper here returns at once and records nothing.

One request is one trace: its trace id is the one :func:`vividly.events.traceparent_for`
derives from the correlation id, so the trace, the ``traceparent`` header on every
message and the read model's correlation id all name the same value. Spans follow
OpenTelemetry's messaging conventions for Kafka:

- ``send <topic>`` (PRODUCER) for each work item a service or the API hands on, ended when
  the broker acknowledges it; the message's ``traceparent`` header names this span;
- ``process <topic>`` (CONSUMER) for each message a service handles, the child of the
  ``send`` span that produced it (the conventions make the creation context the parent
  of a message processed on its own, which keeps one request one trace across the hop);
- ``stage <name>`` (INTERNAL) for each tracked stage attempt, with the request id, stage,
  attempt and outcome; the external calls made during it (Gemini, the video API, S3,
  SMTP, Postgres) are client spans under it;
- ``submit request`` and ``retry <stage>`` (INTERNAL), the roots the API and the CLI start
  in the request's trace, linked to the caller's own trace (the HTTP request's span).

Tracking events are not exported as spans: each event's ``traceparent`` header is in the
trace of the span it was published under (a stage attempt, mostly), with the event id's
tail as its span id, so the read model and the trace backend join on the trace id.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from vividly.events import H_TRACEPARENT, traceparent_for

__all__ = [
    "ATTR_ATTEMPT",
    "ATTR_OUTCOME",
    "ATTR_REQUEST_ID",
    "ATTR_STAGE",
    "active",
    "client_span",
    "current_traceparent",
    "end_send",
    "enter",
    "error_status",
    "for_many_requests",
    "forced_trace_id",
    "leave",
    "parse_traceparent",
    "process_span",
    "request_root",
    "send_span",
    "stage_span",
    "start_root",
    "start_stage_span",
    "trace_id_hex",
    "tracer",
    "with_traceparent",
]

TRACER_NAME: Final = "vividly"

ATTR_REQUEST_ID: Final = "vividly.request_id"
ATTR_CORRELATION_ID: Final = "vividly.correlation_id"
ATTR_STAGE: Final = "vividly.stage"
ATTR_ATTEMPT: Final = "vividly.attempt"
ATTR_OUTCOME: Final = "vividly.outcome"

# OpenTelemetry's messaging attribute names (semantic conventions 1.27+; the constants
# live in opentelemetry-semantic-conventions' incubating module, which the SDK core does
# not depend on, so they are spelled here once).
M_SYSTEM: Final = "messaging.system"
M_OPERATION_TYPE: Final = "messaging.operation.type"
M_OPERATION_NAME: Final = "messaging.operation.name"
M_DESTINATION: Final = "messaging.destination.name"
M_PARTITION: Final = "messaging.destination.partition.id"
M_OFFSET: Final = "messaging.kafka.offset"
M_KEY: Final = "messaging.kafka.message.key"
M_GROUP: Final = "messaging.consumer.group.name"
M_CLIENT_ID: Final = "messaging.client.id"

#: The trace id a root span started now must have (read by the SDK's id generator in
#: :mod:`vividly.runtime.telemetry`); 0: any.
forced_trace_id: contextvars.ContextVar[int] = contextvars.ContextVar(
    "vividly_forced_trace_id", default=0
)


_tracer: tuple[object, trace.Tracer] | None = None


def _live() -> trace.Tracer | None:
    """This package's tracer when the process records spans (a provider was set), else
    None: one lookup of the provider, kept while that provider is the one installed
    (``get_tracer`` costs a quarter of a span's start; an ABC ``isinstance`` a tenth)."""
    global _tracer
    provider = trace.get_tracer_provider()
    cached = _tracer
    if cached is not None and cached[0] is provider:
        return cached[1]
    if type(provider) is trace.ProxyTracerProvider:
        return None
    got = provider.get_tracer(TRACER_NAME)
    _tracer = (provider, got)
    return got


def tracer() -> trace.Tracer:
    """This package's tracer from the process's provider (a no-op one when none is set)."""
    return _live() or trace.get_tracer_provider().get_tracer(TRACER_NAME)


def active() -> bool:
    """Whether this process records spans (a tracer provider was set up)."""
    return _live() is not None


def trace_id_hex(correlation_id: str) -> str:
    """The 32 hex digits of the trace of the request with ``correlation_id``."""
    return traceparent_for(correlation_id, "0" * 16)[3:35]


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The remote span context a W3C ``traceparent`` names, or None if it names none."""
    if not value or len(value) != 55 or value[2] != "-" or value[35] != "-":
        return None
    try:
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


_formatted: tuple[SpanContext | None, str] = (None, "")


def format_traceparent(ctx: SpanContext) -> str:
    """The W3C ``traceparent`` of ``ctx`` (the last one formatted is kept: a stage's
    events and its hand-on all name the same span)."""
    global _formatted
    last, value = _formatted
    if last is ctx:
        return value
    value = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    _formatted = (ctx, value)
    return value


def error_status(error: BaseException) -> Status:
    return Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500])


def current_traceparent() -> str:
    """The ``traceparent`` of the span current in this context ("" when there is none)."""
    ctx = trace.get_current_span().get_span_context()
    return format_traceparent(ctx) if ctx.is_valid else ""


def start_root(
    name: str, correlation_id: str, attributes: Mapping[str, Any] | None = None
) -> Span | None:
    """Start a span that begins the request's own trace (``submit request``, ``retry
    <stage>``): no parent, the trace id from ``correlation_id``, and a link to the span
    current here (the caller's HTTP request, in its own trace). None when not tracing;
    the caller ends it."""
    t = _live()
    if t is None:
        return None
    caller = trace.get_current_span().get_span_context()
    links = [Link(caller, {"vividly.link": "caller"})] if caller.is_valid else []
    token = forced_trace_id.set(int(trace_id_hex(correlation_id), 16))
    try:
        return t.start_span(
            name,
            context=otel_context.Context(),  # a root, whatever is current
            kind=SpanKind.INTERNAL,
            attributes={ATTR_CORRELATION_ID: correlation_id, **(attributes or {})},
            links=links,
        )
    finally:
        forced_trace_id.reset(token)


@contextmanager
def request_root(
    name: str, correlation_id: str, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span | None]:
    """:func:`start_root`'s span, current inside the block and ended after it."""
    span = start_root(name, correlation_id, attributes)
    if span is None:
        yield None
        return
    with trace.use_span(span, end_on_exit=True, record_exception=True):
        yield span


def with_traceparent(
    headers: Sequence[tuple[str, bytes]], span: Span | None
) -> list[tuple[str, bytes]]:
    """``headers`` with their ``traceparent`` naming ``span`` (unchanged for None)."""
    out = list(headers)
    if span is None or not span.get_span_context().is_valid:
        return out
    value = format_traceparent(span.get_span_context()).encode()
    return [*((hk, hv) for hk, hv in out if hk != H_TRACEPARENT), (H_TRACEPARENT, value)]


def send_span(
    topic: str, key: bytes, headers: Sequence[tuple[str, bytes]]
) -> tuple[Span | None, list[tuple[str, bytes]]]:
    """Start the ``send <topic>`` PRODUCER span of one message; returns it (None when not
    tracing) and the headers to publish, whose ``traceparent`` names the span. The caller
    ends the span when the broker's acknowledgement comes (:func:`end_send`).

    The span is in the message's trace (the request's, which its ``traceparent`` names):
    the child of the current span when that is in the same trace (a stage's ``process``
    span), else of the span the message names (the API's ``submit``/``retry`` root, while
    the current span is the caller's HTTP request in the caller's trace)."""
    t = _live()
    if t is None:
        return None, list(headers)
    named: SpanContext | None = None
    for hk, hv in headers:
        if hk == H_TRACEPARENT:
            named = parse_traceparent(hv.decode("ascii", "replace"))
            break
    current = trace.get_current_span().get_span_context()
    if current.is_valid and (named is None or named.trace_id == current.trace_id):
        ctx = None  # the current context
    elif named is not None:
        ctx = trace.set_span_in_context(NonRecordingSpan(named))
    else:
        ctx = otel_context.Context()
    span = t.start_span(
        f"send {topic}",
        context=ctx,
        kind=SpanKind.PRODUCER,
        attributes={
            M_SYSTEM: "kafka",
            M_OPERATION_TYPE: "send",
            M_OPERATION_NAME: "send",
            M_DESTINATION: topic,
            M_KEY: key.decode("utf-8", "replace"),
        },
    )
    return span, with_traceparent(headers, span)


def end_send(span: Span | None, partition: int, offset: int, error: str | None) -> None:
    """End a ``send`` span with where the message landed, or why it did not."""
    if span is None:
        return
    if error is None and partition >= 0:
        span.set_attribute(M_PARTITION, str(partition))
        span.set_attribute(M_OFFSET, offset)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error[:500]))
    span.end()


class _Current:
    """Makes a started span current for a block and ends it after, recording an
    ``Exception`` that leaves the block (as the SDK's ``use_span`` does; a class, where
    our generator around ``use_span``'s was two generator frames per span)."""

    __slots__ = ("record", "span", "token", "value")

    def __init__(self, span: Span | None, value: Any, record: bool = True) -> None:
        """``record``: whether the exception is recorded as an event too (the status is
        set either way)."""
        self.span, self.value, self.record = span, value, record
        self.token: object = None

    def __enter__(self) -> Any:
        if self.span is not None:
            self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.value

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        span = self.span
        if span is None:
            return
        otel_context.detach(self.token)  # type: ignore[arg-type]
        if isinstance(error, Exception) and span.is_recording():
            if self.record:
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


_NO_SPAN: Final = _Current(None, None)


def process_span(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    traceparent: str | None,
    group: str,
    client_id: str,
    request_id: str = "",
) -> AbstractContextManager[Span | None]:
    """The ``process <topic>`` CONSUMER span of one consumed message, current while the
    handler runs: the child of the span the message's ``traceparent`` names."""
    t = _live()
    if t is None:
        return _NO_SPAN
    remote = parse_traceparent(traceparent)
    ctx = trace.set_span_in_context(NonRecordingSpan(remote)) if remote is not None else None
    attributes: dict[str, Any] = {
        M_SYSTEM: "kafka",
        M_OPERATION_TYPE: "process",
        M_OPERATION_NAME: "process",
        M_DESTINATION: topic,
        M_PARTITION: str(partition),
        M_OFFSET: offset,
        M_GROUP: group,
        M_CLIENT_ID: client_id,
    }
    if key:
        attributes[M_KEY] = key.decode("utf-8", "replace")
    if request_id:
        attributes[ATTR_REQUEST_ID] = request_id
    span = t.start_span(
        f"process {topic}", context=ctx, kind=SpanKind.CONSUMER, attributes=attributes
    )
    return _Current(span, span)


class StageSpan:
    """The ``stage <name>`` span of one attempt (its methods do nothing when not tracing)."""

    __slots__ = ("span",)

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def outcome(self, outcome: str) -> None:
        """How the attempt ended: completed, failed or cancelled."""
        if self.span is not None:
            self.span.set_attribute(ATTR_OUTCOME, outcome)

    def failed(self, error: BaseException) -> None:
        if self.span is not None:
            self.span.record_exception(error)
            self.span.set_status(error_status(error))

    def replayed(self) -> None:
        """A redelivery of an attempt that had finished: its outcome was published again,
        the work not done again."""
        if self.span is not None:
            self.span.set_attribute("vividly.replayed", True)


_NO_STAGE: Final = _Current(None, StageSpan(None))


def stage_span(request_id: str, stage: str, attempt: int) -> AbstractContextManager[StageSpan]:
    """The span of one tracked stage attempt, current while its work runs (so the
    external calls it makes nest under it)."""
    t = _live()
    if t is None:
        return _NO_STAGE
    span = t.start_span(
        f"stage {stage}",
        kind=SpanKind.INTERNAL,
        attributes={ATTR_REQUEST_ID: request_id, ATTR_STAGE: stage, ATTR_ATTEMPT: attempt},
    )
    return _Current(span, StageSpan(span), False)


def start_stage_span(
    request_id: str, stage: str, attempt: int, correlation_id: str = ""
) -> Span | None:
    """Start the ``stage <name>`` span of an attempt tracked with
    :meth:`vividly.RequestTracker.track_stage` (None when not tracing); the caller makes
    it current (:func:`enter`) and ends it (:func:`leave`). Under the current span when
    that is in the request's trace (a handler the consumer loop runs); else, when the
    correlation id is known, a root in the request's trace (a worker of one's own)."""
    t = _live()
    if t is None:
        return None
    name = f"stage {stage}"
    attributes: dict[str, Any] = {
        ATTR_REQUEST_ID: request_id,
        ATTR_STAGE: stage,
        ATTR_ATTEMPT: attempt,
    }
    current = trace.get_current_span().get_span_context()
    if correlation_id:
        wanted = int(trace_id_hex(correlation_id), 16)
        if not (current.is_valid and current.trace_id == wanted):
            token = forced_trace_id.set(wanted)
            try:
                return t.start_span(
                    name,
                    context=otel_context.Context(),
                    kind=SpanKind.INTERNAL,
                    attributes=attributes,
                )
            finally:
                forced_trace_id.reset(token)
    return t.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)


def enter(span: Span) -> object:
    """Make ``span`` current; returns the token :func:`leave` takes."""
    return otel_context.attach(trace.set_span_in_context(span))


def leave(span: Span, token: object, error: BaseException | None) -> None:
    """End a span made current by :func:`enter`, with its outcome."""
    if error is None:
        span.set_attribute(ATTR_OUTCOME, "completed")
    else:
        span.set_attribute(ATTR_OUTCOME, "failed")
        span.record_exception(error)
        span.set_status(error_status(error))
    span.end()
    otel_context.detach(token)  # type: ignore[arg-type]


class for_many_requests:
    """Work done for many requests at once (a group-committed ledger statement) is no
    one request's call: inside the block no span is current and the maintained
    instrumentations record nothing (OpenTelemetry's suppress-instrumentation key), so
    such a call neither lands in the trace of whichever request happened to lead its
    batch nor costs a span. Its time shows in each waiting request's stage span."""

    __slots__ = ("token",)

    def __enter__(self) -> None:
        self.token = otel_context.attach(
            otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True, otel_context.Context())
        )

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self.token)


@contextmanager
def client_span(name: str, attributes: Mapping[str, Any]) -> Iterator[Span | None]:
    """A CLIENT span for a call to the outside that has no maintained instrumentation
    (SMTP: smtplib has none)."""
    t = _live()
    if t is None:
        yield None
        return
    with t.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=dict(attributes)) as span:
        yield span
