"""Spans with the SDK's in-memory exporter: when tracing is on, what each helper records and
how the spans chain (one request, one trace); when it is off, nothing changes at all."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from services.projector.api.traces import span_tree
from vividly import tracing
from vividly.config import Settings
from vividly.errors import ProviderError
from vividly.events import H_TRACEPARENT, MessageHeaders, WorkItem, traceparent_for
from vividly.runtime import telemetry
from vividly.runtime.bus import Delivery
from vividly.runtime.stage import MemoryLedger, Stage, StageContext, StageRunner
from vividly.testing import FakePublisher
from vividly.tracker import RequestTracker

CID = "0b6a3c1e-8f0e-4e36-9d0e-0f6c2b8e1a11"
SAMPLED = (Decision.RECORD_AND_SAMPLE,)
CALLER = "00-" + "c0ffee00" * 4 + "-" + "ba5eba11" * 2 + "-01"


def _install(provider: Any) -> None:
    # The API sets the global provider once per process; tests install and remove their
    # own (what opentelemetry-test-utils' reset_trace_globals does).
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=telemetry.NoOrphanClients(ALWAYS_ON), id_generator=telemetry.RequestTraceIds()
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _install(provider)
    try:
        yield exporter
    finally:
        _install(None)
        provider.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    out = {s.name: s for s in exporter.get_finished_spans()}
    assert len(out) == len(exporter.get_finished_spans()), "span names repeat"
    return out


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_ask(env: dict[str, str], on: bool) -> None:
    assert telemetry.requested(env) is on


def test_off_nothing_is_recorded_and_no_header_changes() -> None:
    _install(None)
    assert not tracing.active()
    headers = [(H_TRACEPARENT, traceparent_for(CID).encode()), ("x", b"1")]
    span, out = tracing.send_span("requests.submitted", b"r1", headers)
    assert span is None
    assert out == headers
    with tracing.stage_span("r1", "validation", 1) as st:
        assert st.span is None
        st.outcome("completed")  # no-ops
    with tracing.request_root("submit request", CID) as root:
        assert root is None
    assert telemetry.configure("x", {}) is False


@pytest.mark.parametrize(
    ("env", "bsp"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, {}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, {}),
        ({"OTEL_TRACES_EXPORTER": "console"}, {"OTEL_BSP_MAX_QUEUE_SIZE": "8"}),
    ],
)
def test_settings_the_sdk_refuses_turn_tracing_off_and_say_why(
    env: dict[str, str],
    bsp: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _install(None)
    for k, v in bsp.items():  # the SDK reads OTEL_BSP_* from the process environment
        monkeypatch.setenv(k, v)
    with caplog.at_level("ERROR", "vividly.runtime.telemetry"):
        assert telemetry.configure("ingest", env) is False
    assert not tracing.active()
    (record,) = caplog.records
    assert record.getMessage() == "tracing off: the OTEL_* settings are not usable"
    assert record.__dict__["service"] == "ingest"
    assert record.__dict__["reason"]


def test_the_standard_variable_turns_chosen_instrumentations_off() -> None:
    """``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (OpenTelemetry's own opt-out): the named
    clients are left unwrapped, the rest instrumented; ``*`` turns every one off. In a
    child process: an instrumentation, once on, stays on for the process."""
    import subprocess
    import sys

    probe = (
        "import json, asyncpg, httpx\n"
        "from vividly.runtime import telemetry\n"
        "none = telemetry.instrument({'OTEL_PYTHON_DISABLED_INSTRUMENTATIONS': '*'})\n"
        "wrapped = lambda f: hasattr(f, '__wrapped__')\n"
        "probe = lambda: [wrapped(asyncpg.connection.Connection.fetch),"
        " wrapped(httpx.AsyncHTTPTransport.handle_async_request)]\n"
        "before = probe()\n"
        "some = telemetry.instrument("
        "{'OTEL_PYTHON_DISABLED_INSTRUMENTATIONS': ' asyncpg, HTTPX ,'})\n"
        "after = probe()\n"
        "rest = telemetry.instrument({})\n"
        "print(json.dumps([none, before, some, after, probe()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    none, before, some, after, last = json.loads(out.stdout.strip().splitlines()[-1])
    assert none == []
    assert before == [False, False]
    assert "asyncpg" not in some
    assert "httpx" not in some
    assert {"botocore", "aiohttp-client"} <= set(some)
    assert after == [False, False]
    assert last == [True, True]  # the same probe sees an instrumented client
    assert telemetry.disabled_instrumentations({}) == set()


def test_a_root_carries_the_request_trace_id_and_links_the_caller(
    spans: InMemorySpanExporter,
) -> None:
    caller = tracing.parse_traceparent(CALLER)
    assert caller is not None
    parent = trace.set_span_in_context(trace.NonRecordingSpan(caller))
    with (
        tracer_span("caller's http", parent),
        tracing.request_root("submit request", CID, {"vividly.request_id": "r1"}) as root,
    ):
        assert root is not None
        assert tracing.current_traceparent()[3:35] == tracing.trace_id_hex(CID)
    s = by_name(spans)["submit request"]
    assert s.parent is None
    assert f"{s.context.trace_id:032x}" == tracing.trace_id_hex(CID)
    assert traceparent_for(CID)[3:35] == tracing.trace_id_hex(CID)
    (link,) = s.links
    assert link.context.trace_id == caller.trace_id  # the caller's own trace
    assert link.context.span_id == by_name(spans)["caller's http"].context.span_id


def tracer_span(name: str, ctx: Any) -> Any:
    return tracing.tracer().start_as_current_span(name, context=ctx, kind=SpanKind.SERVER)


def test_a_send_under_the_callers_trace_joins_the_trace_its_message_names(
    spans: InMemorySpanExporter,
) -> None:
    """The API publishes while its current span is the caller's HTTP request (another
    trace): the send span goes under the submit root the message names."""
    with tracing.request_root("submit request", CID) as root:
        assert root is not None
        named = tracing.with_traceparent([], root)
    caller = tracing.parse_traceparent(CALLER)
    assert caller is not None
    with tracer_span("http", trace.set_span_in_context(trace.NonRecordingSpan(caller))):
        span, headers = tracing.send_span("requests.submitted", b"r1", [*named, ("k", b"v")])
    tracing.end_send(span, 2, 41, None)
    s, r = by_name(spans)["send requests.submitted"], by_name(spans)["submit request"]
    assert s.kind is SpanKind.PRODUCER
    assert s.parent is not None
    assert s.parent.span_id == r.context.span_id
    assert s.context.trace_id == r.context.trace_id
    attrs = dict(s.attributes or {})
    assert attrs == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "requests.submitted",
        "messaging.kafka.message.key": "r1",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 41,
    }
    # The message now names the send span (one traceparent; other headers kept).
    tps = [v for k, v in headers if k == H_TRACEPARENT]
    assert tps == [tracing.format_traceparent(s.context).encode()]
    assert ("k", b"v") in headers


def test_a_failed_send_is_an_error_with_no_position(spans: InMemorySpanExporter) -> None:
    span, _ = tracing.send_span("requests.validated", b"r1", [])
    tracing.end_send(span, -1, -1, "KafkaError{code=_MSG_TIMED_OUT}")
    s = by_name(spans)["send requests.validated"]
    assert s.status.status_code is StatusCode.ERROR
    assert "_MSG_TIMED_OUT" in (s.status.description or "")
    assert "messaging.kafka.offset" not in (s.attributes or {})
    assert s.parent is None  # nothing current, nothing named: a root of its own


def test_a_consumed_message_is_processed_under_the_send_span_that_produced_it(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.request_root("submit request", CID):
        sent, headers = tracing.send_span("requests.submitted", b"r1", [])
        tracing.end_send(sent, 0, 5, None)
    tp = dict(headers)[H_TRACEPARENT].decode()
    with (
        tracing.process_span(
            topic="requests.submitted",
            partition=0,
            offset=5,
            key=b"r1",
            traceparent=tp,
            group="ingest",
            client_id="ingest-1",
            request_id="r1",
        ),
        tracing.client_span("smtp send", {"server.address": "127.0.0.1"}),
    ):
        pass
    got = by_name(spans)
    p, s = got["process requests.submitted"], got["send requests.submitted"]
    assert p.kind is SpanKind.CONSUMER
    assert p.parent is not None
    assert p.parent.span_id == s.context.span_id
    assert p.context.trace_id == s.context.trace_id
    assert dict(p.attributes or {})["messaging.consumer.group.name"] == "ingest"
    assert dict(p.attributes or {})["messaging.destination.partition.id"] == "0"
    assert dict(p.attributes or {})["vividly.request_id"] == "r1"
    c = got["smtp send"]
    assert c.kind is SpanKind.CLIENT
    assert c.parent is not None
    assert c.parent.span_id == p.context.span_id


@pytest.mark.parametrize("bad", [None, "", "garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01"])
def test_a_message_with_no_usable_traceparent_starts_a_trace_of_its_own(
    spans: InMemorySpanExporter, bad: str | None
) -> None:
    kw: dict[str, Any] = {"partition": 0, "offset": 1, "key": None, "group": "g"}
    with tracing.process_span(topic="t", traceparent=bad, client_id="c", **kw):
        pass
    assert by_name(spans)["process t"].parent is None


def test_a_client_span_with_no_parent_is_not_recorded(spans: InMemorySpanExporter) -> None:
    """The projector's own Postgres writes are nobody's request: no one-span traces."""
    with tracing.client_span("SELECT", {}) as orphan:
        assert orphan is not None
        assert not orphan.is_recording()
    with tracing.tracer().start_as_current_span("stage x"), tracing.client_span("INSERT", {}):
        pass
    assert set(by_name(spans)) == {"stage x", "INSERT"}


def test_the_sdks_ratio_sampler_keeps_all_or_none_of_uuid_trace_ids() -> None:
    """Why RequestRatio exists: a UUID's variant bits lead the low 64 bits the SDK's
    TraceIdRatioBased compares, so at 0.5 it keeps no request at all."""
    sdk = TraceIdRatioBased(0.5)
    tids = [int(tracing.trace_id_hex(str(uuid.uuid4())), 16) for _ in range(200)]
    assert not any(sdk.should_sample(None, t, "x").decision in SAMPLED for t in tids)


@pytest.mark.parametrize(
    ("env", "rate"),
    [
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            0.1,
        ),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}, 0.5),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.9"}, 0.9),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nonsense"}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 0.0),
        ({}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "no_such_sampler"}, 1.0),
    ],
)
def test_ratio_sampling_keeps_the_rate_asked_and_decides_alike_in_every_service(
    env: dict[str, str], rate: float
) -> None:
    """A request's trace id is fixed by its correlation id, so each service's sampler
    keeps or drops the whole trace, never a part of it, at the rate configured."""
    s = telemetry.NoOrphanClients(telemetry.sampler(env))
    n, kept = 2000, 0
    for i in range(n):
        cid = str(uuid.uuid4()) if i % 2 else f"order-{i}"
        tid = int(tracing.trace_id_hex(cid), 16)
        a = s.should_sample(None, tid, "process x", SpanKind.CONSUMER).decision
        b = s.should_sample(None, tid, "submit request", SpanKind.INTERNAL).decision
        assert a == b
        kept += a in SAMPLED
    assert abs(kept / n - rate) < 0.04, (kept, n, rate)


def test_a_stage_attempt_is_a_span_with_its_outcome_and_its_hand_on(
    spans: InMemorySpanExporter,
) -> None:
    pub = FakePublisher()
    runs = {"n": 0}

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        runs["n"] += 1
        if runs["n"] == 1:
            raise ProviderError("video API: HTTP 503", retryable=True, status=503)
        return {"job_id": "j1"}

    runner = StageRunner(
        tracker=RequestTracker(pub),
        settings=Settings(stage_max_attempts=3, retry_backoff_s=0.01),
        input_topic="requests.scripted",
        next_topic="requests.rendered",
        ledger=MemoryLedger(),
        stages=[Stage("video_generation", work)],
    )
    d = Delivery("requests.scripted", 0, 7, b"r1", MessageHeaders.parse(None), 0)
    w = WorkItem(request_id="r1", correlation_id=CID, stage="video_generation", attempt=1)
    asyncio.run(runner(d, w))
    w2 = WorkItem(request_id="r1", correlation_id=CID, stage="video_generation", attempt=2)
    asyncio.run(runner(d, w2))
    asyncio.run(runner(d, w2))  # a redelivery of the finished attempt
    stages = [s for s in spans.get_finished_spans() if s.name == "stage video_generation"]
    assert [dict(s.attributes or {}) for s in stages] == [
        {
            "vividly.request_id": "r1",
            "vividly.stage": "video_generation",
            "vividly.attempt": attempt,
            "vividly.outcome": outcome,
            **extra,
        }
        for attempt, outcome, extra in (
            (1, "failed", {}),
            (2, "completed", {}),
            (2, "completed", {"vividly.replayed": True}),
        )
    ]
    assert stages[0].status.status_code is StatusCode.ERROR
    assert "HTTP 503" in (stages[0].status.description or "")
    assert [e.name for e in stages[0].events] == ["exception"]
    assert stages[1].status.status_code is StatusCode.UNSET
    assert runs["n"] == 2  # the redelivery did no work


def jaeger_span(sid: str, parent: str | None, start: int, name: str, **tags: Any) -> dict[str, Any]:
    refs = [{"refType": "CHILD_OF", "traceID": "t1", "spanID": parent}] if parent else []
    return {
        "traceID": "t1",
        "spanID": sid,
        "operationName": name,
        "references": refs,
        "startTime": start,
        "duration": 1000,
        "processID": "p1",
        "tags": [{"key": k, "value": v} for k, v in tags.items()],
    }


def test_the_span_tree_puts_each_parent_right_above_its_children_in_start_order() -> None:
    data = {
        "traceID": "t1",
        "processes": {"p1": {"serviceName": "api"}},
        "spans": [
            jaeger_span("c2", "r", 3000, "second"),
            jaeger_span("g1", "c1", 2500, "grandchild", **{"span.kind": "client"}),
            jaeger_span("r", None, 1000, "root"),
            jaeger_span("c1", "r", 2000, "first", **{"otel.status_code": "ERROR", "x": 1}),
        ],
    }
    tree = span_tree(data)
    assert [(s["name"], s["depth"]) for s in tree["spans"]] == [
        ("root", 0),
        ("first", 1),
        ("grandchild", 2),
        ("second", 1),
    ]
    first = tree["spans"][1]
    assert (first["status"], first["attributes"], first["offset_ms"]) == ("error", {"x": 1}, 1.0)
    assert tree["spans"][2]["kind"] == "client"
    assert tree["complete"] is True
    assert tree["duration_ms"] == 3.0


def test_a_span_whose_parent_is_missing_or_looped_is_still_drawn_and_marked() -> None:
    data = {
        "traceID": "t1",
        "processes": {},
        "spans": [
            jaeger_span("a", "gone", 1000, "orphan"),
            jaeger_span("x", "y", 2000, "loop x"),
            jaeger_span("y", "x", 2100, "loop y"),
        ],
    }
    tree = span_tree(data)
    assert sorted(s["name"] for s in tree["spans"]) == ["loop x", "loop y", "orphan"]
    assert tree["complete"] is False
    assert tree["spans"][0]["service"] == "?"


def test_track_stage_is_a_span_in_the_request_trace_and_the_authors_spans_nest_in_it(
    spans: InMemorySpanExporter,
) -> None:
    """A worker of one's own (no consumer loop: nothing current) tracks a stage: the
    attempt is a span in the request's trace, the author's own spans nest under it, and
    the events published inside name it."""
    pub = FakePublisher()
    tracker = RequestTracker(pub)
    rid, cid = tracker.create_request("s1", "Volcanoes", "magma", "8", 3)
    author = trace.get_tracer("my_service")
    with (
        tracker.track_stage(rid, "validation") as stage,
        author.start_as_current_span("check the objective"),
    ):
        stage.output["ok"] = True
    with pytest.raises(ValueError, match="too vague"), tracker.track_stage(rid, "rag_retrieval"):
        raise ValueError("too vague")
    got = by_name(spans)
    v, mine, r = got["stage validation"], got["check the objective"], got["stage rag_retrieval"]
    tid = int(tracing.trace_id_hex(cid), 16)
    assert {v.context.trace_id, mine.context.trace_id, r.context.trace_id} == {tid}
    assert mine.parent is not None
    assert mine.parent.span_id == v.context.span_id
    assert dict(v.attributes or {}) == {
        "vividly.request_id": rid,
        "vividly.stage": "validation",
        "vividly.attempt": 1,
        "vividly.outcome": "completed",
    }
    assert dict(r.attributes or {})["vividly.outcome"] == "failed"
    assert r.status.status_code is StatusCode.ERROR
    started = [m for m in pub.messages if m.envelope().WhichOneof("event") == "stage_started"]
    # (each event is a point in the trace: its own span id, the stage span's trace)
    assert dict(started[0].headers)[H_TRACEPARENT].decode()[3:35] == f"{tid:032x}"
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left current


async def _async_stage(tracker: RequestTracker, rid: str) -> str:
    async with tracker.track_stage(rid, "notification"):
        await asyncio.sleep(0)
        return tracing.current_traceparent()


def test_async_track_stage_keeps_its_span_current_across_awaits(
    spans: InMemorySpanExporter,
) -> None:
    tracker = RequestTracker(FakePublisher())
    rid, cid = tracker.create_request("s1", "Tides", "the moon", "6", 2)
    inside = asyncio.run(_async_stage(tracker, rid))
    s = by_name(spans)["stage notification"]
    assert inside == tracing.format_traceparent(s.context)
    assert inside[3:35] == tracing.trace_id_hex(cid)


def test_an_error_leaving_a_span_block_marks_it_and_a_cancellation_does_not(
    spans: InMemorySpanExporter,
) -> None:
    """process spans record the exception and ERROR; a stage span sets ERROR (its own
    failed() records the exception); a BaseException (a cancelled task) is not an error;
    the span is ended and no longer current after the block either way."""
    kw: dict[str, Any] = {"partition": 0, "key": b"r1", "group": "g", "client_id": "c"}
    with (
        pytest.raises(ValueError, match="bad input"),
        tracing.process_span(topic="a", offset=1, traceparent=None, **kw),
    ):
        raise ValueError("bad input")
    with pytest.raises(RuntimeError), tracing.stage_span("r1", "validation", 1):
        raise RuntimeError("boom")
    with (
        pytest.raises(asyncio.CancelledError),
        tracing.process_span(topic="b", offset=2, traceparent=None, **kw),
    ):
        raise asyncio.CancelledError
    assert not trace.get_current_span().get_span_context().is_valid
    got = by_name(spans)
    failed, stage, cancelled = got["process a"], got["stage validation"], got["process b"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: bad input"
    assert [e.name for e in failed.events] == ["exception"]
    assert stage.status.status_code is StatusCode.ERROR
    assert stage.events == ()
    assert cancelled.status.status_code is StatusCode.UNSET
    assert all(s.end_time for s in (failed, stage, cancelled))
