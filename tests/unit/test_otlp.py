"""The OTLP encoder (vividly.runtime.otlp) against the SDK's: for every span shape the
SDK produces, our bytes parse to a message equal to the SDK encoder's, and the
exporters built on it send those bytes."""

from __future__ import annotations

import http.server
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from vividly.runtime import otlp

INT64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False)  # NaN != NaN: equal messages could not compare equal
TEXT = st.text(max_size=40)
SCALAR = st.one_of(TEXT, st.booleans(), INT64, FLOATS)
VALUE = st.one_of(
    SCALAR,
    st.lists(TEXT, max_size=4),
    st.lists(st.booleans(), max_size=4),
    st.lists(INT64, max_size=4),
    st.lists(FLOATS, max_size=4),
    st.binary(max_size=16),
)
ATTRS = st.dictionaries(st.text(min_size=1, max_size=30), VALUE, max_size=8)
IDS = st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1))


def record(
    provider: TracerProvider, memory: InMemorySpanExporter, spec: dict[str, Any]
) -> ReadableSpan:
    tracer = provider.get_tracer(spec["scope"], spec["version"])
    parent = None
    if spec["parent"] is not None:
        (tid, sid), remote, sampled, state = spec["parent"]
        ctx = SpanContext(
            tid,
            sid,
            is_remote=remote,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else 0),
            trace_state=TraceState(state),
        )
        parent = set_span_in_context(NonRecordingSpan(ctx))
    links = [
        Link(SpanContext(t, s, is_remote=r, trace_flags=TraceFlags(1)), attrs)
        for (t, s), r, attrs in spec["links"]
    ]
    span = tracer.start_span(
        spec["name"],
        context=parent,
        kind=spec["kind"],
        attributes=spec["attributes"],
        links=links,
        start_time=spec["start"],
    )
    for name, attrs, at in spec["events"]:
        span.add_event(name, attrs, timestamp=at)
    for key, value in spec["later"].items():
        span.set_attribute(key, value)
    code, text = spec["status"]
    if code is not StatusCode.UNSET:
        span.set_status(Status(code, text if code is StatusCode.ERROR else None))
    span.end(end_time=spec["start"] + spec["duration"])
    (done,) = memory.get_finished_spans()
    memory.clear()
    return done


SPANS = st.fixed_dictionaries(
    {
        "scope": st.sampled_from(["vividly", "opentelemetry.instrumentation.asyncpg"]),
        "version": st.sampled_from([None, "", "0.66b1"]),
        "name": TEXT,
        "kind": st.sampled_from(list(SpanKind)),
        "attributes": ATTRS,
        "later": ATTRS,
        "parent": st.none()
        | st.tuples(
            IDS,
            st.booleans(),
            st.booleans(),
            st.lists(
                st.tuples(st.sampled_from(["vendor", "a1", "x@y"]), st.sampled_from(["1", "abc"])),
                max_size=2,
                unique_by=lambda kv: kv[0],
            ),
        ),
        "links": st.lists(st.tuples(IDS, st.booleans(), ATTRS), max_size=3),
        "events": st.lists(st.tuples(TEXT, ATTRS, st.integers(0, 2**63)), max_size=3),
        "status": st.tuples(st.sampled_from(list(StatusCode)), TEXT),
        "start": st.integers(0, 2**62),
        "duration": st.integers(0, 10**12),
    }
)


def provider_for(resource: Resource, limits: SpanLimits | None = None) -> tuple[Any, Any]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(  # every span recorded: an unsampled parent is a shape too
        resource=resource, span_limits=limits or SpanLimits(), sampler=ALWAYS_ON
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def assert_same(spans: list[ReadableSpan]) -> bytes:
    ours = otlp.encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(ours) == sdk_encode(spans)
    return ours


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(SPANS, min_size=1, max_size=6), split=st.booleans())
def test_every_span_shape_encodes_as_the_sdk_does(specs: list[dict[str, Any]], split: bool) -> None:
    resources = [
        Resource.create({"service.name": "rag", "deployment.environment": "test"}),
        Resource({"service.name": "video", "host.cores": 2}, schema_url="https://x/1.27"),
    ]
    tracers = [provider_for(r) for r in resources]
    spans = [record(*tracers[i % 2 if split else 0], spec) for i, spec in enumerate(specs)]
    assert_same(spans)


def test_limits_and_dropped_counts_are_encoded() -> None:
    limits = SpanLimits(max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1)
    provider, memory = provider_for(Resource.create({}), limits)
    tracer = provider.get_tracer("t")
    other = SpanContext(1, 2, is_remote=True)
    span = tracer.start_span(
        "s", attributes={"a": 1, "b": 2, "c": 3}, links=[Link(other), Link(other)]
    )
    span.add_event("e1", {"x": 1, "y": 2})
    span.add_event("e2")
    span.end()
    (done,) = memory.get_finished_spans()
    assert (done.dropped_attributes, done.dropped_events, done.dropped_links) == (1, 1, 1)
    message = ExportTraceServiceRequest.FromString(assert_same([done]))
    got = message.resource_spans[0].scope_spans[0].spans[0]
    assert (got.dropped_attributes_count, got.dropped_events_count) == (1, 1)
    assert got.dropped_links_count == 1


def test_equal_resources_of_two_providers_share_one_resource_spans() -> None:
    """The SDK groups by an equal resource, not the same object; so do we."""
    a, b = (
        provider_for(Resource.create({"service.name": "x"})),
        provider_for(Resource.create({"service.name": "x"})),
    )
    spans = []
    for provider, memory in (a, b):
        provider.get_tracer("t").start_span("s").end()
        spans.extend(memory.get_finished_spans())
    message = ExportTraceServiceRequest.FromString(assert_same(spans))
    assert len(message.resource_spans) == 1


def test_a_value_otlp_cannot_carry_is_left_out_like_the_sdk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An int past int64 reaches the encoder (the SDK keeps it); both encoders drop that
    attribute alone and export the rest of the span."""
    provider, memory = provider_for(Resource.create({}))
    provider.get_tracer("t").start_span("s", attributes={"big": 2**70, "ok": 1}).end()
    spans = list(memory.get_finished_spans())
    message = ExportTraceServiceRequest.FromString(assert_same(spans))
    keys = [kv.key for kv in message.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert keys == ["ok"]
    assert any("big" in str(r.__dict__) for r in caplog.records)


def test_repeated_values_are_cached_and_the_cache_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(otlp, "_PAIRS", {})
    monkeypatch.setattr(otlp, "_PAIRS_MAX", 8)
    provider, memory = provider_for(Resource.create({}))
    tracer = provider.get_tracer("t")
    for i in range(50):
        tracer.start_span("s", attributes={"topic": "requests.validated", "offset": i}).end()
    spans = list(memory.get_finished_spans())
    assert_same(spans)
    assert 0 < len(otlp._PAIRS) <= 8
    # Same text, other type or other key: never mistaken for a cached pair.
    for attrs in ({"v": 1}, {"v": True}, {"v": 1.0}, {"w": 1}, {"v": "1"}):
        tracer.start_span("t", attributes=attrs).end()
    assert_same(list(memory.get_finished_spans())[-5:])


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append((self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


def test_the_http_exporter_posts_what_the_sdk_would(collector: str) -> None:
    provider, memory = provider_for(Resource.create({"service.name": "ingest"}))
    with provider.get_tracer("vividly").start_as_current_span("process t", kind=SpanKind.CONSUMER):
        provider.get_tracer("vividly").start_span("stage validation").end()
    spans = list(memory.get_finished_spans())
    exporter = otlp.FastHttpSpanExporter(endpoint=collector, timeout=5)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    ((kind, body),) = _Collector.bodies
    assert kind == "application/x-protobuf"
    assert ExportTraceServiceRequest.FromString(body) == sdk_encode(spans)


def test_the_http_exporter_fails_a_batch_it_cannot_send_and_after_shutdown() -> None:
    provider, memory = provider_for(Resource.create({}))
    provider.get_tracer("t").start_span("s").end()
    spans = list(memory.get_finished_spans())
    # Nothing listens on port 9 of loopback: refused at once.
    exporter = otlp.FastHttpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=1)
    assert exporter.export(spans) is SpanExportResult.FAILURE
    exporter.shutdown()  # type: ignore[no-untyped-call]
    assert exporter.export(spans) is SpanExportResult.FAILURE


def test_the_grpc_exporter_translates_to_the_sdks_message() -> None:
    provider, memory = provider_for(Resource.create({"service.name": "video"}))
    provider.get_tracer("t").start_span("s", attributes={"pi": math.pi, "n": -3}).end()
    spans = list(memory.get_finished_spans())
    exporter = otlp.grpc_exporter()
    try:
        assert exporter._translate_data(spans) == sdk_encode(spans)  # type: ignore[attr-defined]
    finally:
        exporter.shutdown()
