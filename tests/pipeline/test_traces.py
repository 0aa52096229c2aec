"""Traces an SRE can open: the whole pipeline exporting OTLP to a real Jaeger (v2, built by
``make setup``), read back from Jaeger's query API.

One request that completes, one that fails at video_generation after its retries and is
then retried from the API: each is one trace across the five services and the API, with
the Kafka hops as send/process spans (parent and child), a span per stage attempt, and the
external calls (Gemini through google-genai, the video API, S3, SMTP, Postgres) as client
spans under their stage.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import BrokerPool
from tests.e2e.test_dashboard import chromium
from tests.pipeline.conftest import API_SECRET, Harness, running_harness
from vividly.config import STAGE_INPUT_TOPICS, STAGES
from vividly.platform.jaeger import Jaeger, JaegerPorts
from vividly.runtime.auth import mint
from vividly.tracing import trace_id_hex

pytestmark = pytest.mark.integration

SERVICES_OF = {
    "validation": "ingest",
    "rag_retrieval": "rag",
    "script_generation": "script",
    "video_generation": "video",
    "video_processing": "video",
    "notification": "notify",
}
CALLER = "00-" + "c0ffee00" * 4 + "-" + "ba5eba11" * 2 + "-01"


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    assert Jaeger.available(), "no Jaeger binary: `make setup` builds it into .cache/jaeger"
    j = Jaeger(tmp_path_factory.mktemp("jaeger"), JaegerPorts.free())
    j.start()
    try:
        yield j
    finally:
        j.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Per test, not per module: while Playwright is open its event loop runs in this
    thread, and the fixtures and harnesses of later tests call asyncio.run."""
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def traced(
    broker_pool: BrokerPool,
    postgres: str,
    jaeger: Jaeger,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Harness]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "VIVIDLY_JAEGER_QUERY_URL": jaeger.query_url,
    }
    with running_harness(broker_pool, postgres, tmp_path_factory.mktemp("traced"), env) as h:
        yield h


def api_client(h: Harness) -> httpx.Client:
    token = mint(API_SECRET, role="admin", sub="sre-1")
    return httpx.Client(
        base_url=h.pipeline.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=15
    )


def submit(api: httpx.Client, topic: str) -> tuple[str, str]:
    r = api.post(
        "/api/v1/requests",
        json={
            "student_id": f"stu-{uuid.uuid4().hex[:6]}",
            "organization_id": "org-1",
            "topic": topic,
            "learning_objective": "Explain how plants turn light into food",
            "grade_level": "8",
            "duration_minutes": 1,
        },
        headers={"traceparent": CALLER},
    )
    assert r.status_code == 202, r.text
    return r.json()["request_id"], r.json()["correlation_id"]


class Trace:
    """One trace as Jaeger's query API returns it (``/api/traces/{id}``)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.trace_id = data["traceID"]
        procs = {k: v["serviceName"] for k, v in data["processes"].items()}
        self.spans = sorted(data["spans"], key=lambda s: (s["startTime"], s["spanID"]))
        for s in self.spans:
            s["service"] = procs[s["processID"]]
            s["tags_"] = {t["key"]: t["value"] for t in s.get("tags", [])}
        self.by_id = {s["spanID"]: s for s in self.spans}

    def parent(self, span: dict[str, Any]) -> dict[str, Any] | None:
        for ref in span.get("references", []):
            if ref["refType"] == "CHILD_OF" and ref["traceID"] == self.trace_id:
                return self.by_id.get(ref["spanID"])
        return None

    def connected(self) -> bool:
        """Every span's parent in this trace has arrived too."""
        return all(
            ref["spanID"] in self.by_id
            for s in self.spans
            for ref in s.get("references", [])
            if ref["refType"] == "CHILD_OF" and ref["traceID"] == self.trace_id
        )

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["operationName"] == name]

    def stage_spans(self, stage: str) -> list[dict[str, Any]]:
        return sorted(self.named(f"stage {stage}"), key=lambda s: s["tags_"]["vividly.attempt"])

    def under(self, span: dict[str, Any]) -> list[dict[str, Any]]:
        """Every descendant of ``span``."""
        out: list[dict[str, Any]] = []
        for s in self.spans:
            p = self.parent(s)
            while p is not None:
                if p is span:
                    out.append(s)
                    break
                p = self.parent(p)
        return out

    def summary(self) -> list[str]:
        return [
            f"{s['service']:>7} {s['operationName']} {s['duration'] / 1000:.1f} ms"
            for s in self.spans
        ]


def fetch_trace(jaeger: Jaeger, correlation_id: str, done: Any, timeout: float = 60) -> Trace:
    """The request's trace once ``done(trace)`` holds and no span's parent is still
    missing (each service exports its spans in its own batches)."""
    tid = trace_id_hex(correlation_id)
    deadline = time.monotonic() + timeout
    last: Trace | None = None
    while time.monotonic() < deadline:
        r = httpx.get(f"{jaeger.query_url}/api/traces/{tid}", timeout=5)
        if r.status_code == 200 and r.json().get("data"):
            last = Trace(r.json()["data"][0])
            if done(last) and last.connected():
                return last
        time.sleep(0.2)
    got = "\n".join(last.summary()) if last else "nothing"
    raise AssertionError(f"trace {tid} incomplete after {timeout}s; Jaeger has:\n{got}")


def assert_hop(t: Trace, process: dict[str, Any], group: str, rid: str) -> dict[str, Any]:
    """``process`` is a Kafka consumer span of request ``rid``'s work item whose parent is
    the producer span of the message it consumed; returns that send span."""
    tags = process["tags_"]
    topic = process["operationName"].removeprefix("process ")
    assert tags["span.kind"] == "consumer"
    assert tags["messaging.system"] == "kafka"
    assert tags["messaging.operation.type"] == "process"
    assert tags["messaging.destination.name"] == topic
    assert tags["messaging.consumer.group.name"] == group
    assert int(tags["messaging.destination.partition.id"]) >= 0
    assert int(tags["messaging.kafka.offset"]) >= 0
    assert tags["messaging.kafka.message.key"] == rid  # a work item is keyed by its request
    send = t.parent(process)
    assert send is not None, f"{process['operationName']} has no parent in the trace"
    assert send["operationName"] == f"send {topic}"
    assert send["tags_"]["span.kind"] == "producer"
    assert (
        send["tags_"]["messaging.destination.partition.id"]
        == tags["messaging.destination.partition.id"]
    )
    assert int(send["tags_"]["messaging.kafka.offset"]) == int(tags["messaging.kafka.offset"])
    return send


def complete(t: Trace) -> bool:
    return bool(t.named("stage notification")) and bool(t.named("smtp send"))


def test_a_request_is_one_trace_across_every_service_with_its_external_calls(
    traced: Harness, jaeger: Jaeger
) -> None:
    h = traced
    with api_client(h) as api:
        rid, cid = submit(api, "Photosynthesis")
    assert h.log.wait_outcomes([rid], 90)[rid] == "request_completed"
    t = fetch_trace(jaeger, cid, complete)
    print("\n".join(t.summary()))

    # The root: the API's submit, linked to the caller's own trace.
    root = t.named("submit request")
    assert len(root) == 1
    assert t.parent(root[0]) is None
    assert root[0]["service"] == "api"
    links = [r for r in root[0]["references"] if r["traceID"] != t.trace_id]
    # (to the API's server span for the call, the child of the caller's span)
    assert [r["traceID"] for r in links] == [CALLER[3:35]]
    assert links[0]["spanID"] != CALLER[36:52]
    assert all(s["traceID"] == t.trace_id for s in t.spans)
    assert {s["service"] for s in t.spans} >= {"api", "ingest", "rag", "script", "video", "notify"}

    starts = []
    for stage in STAGES:
        (span,) = t.stage_spans(stage)
        tags = span["tags_"]
        assert span["service"] == SERVICES_OF[stage]
        assert (tags["vividly.request_id"], tags["vividly.stage"]) == (rid, stage)
        assert (tags["vividly.attempt"], tags["vividly.outcome"]) == (1, "completed")
        process = t.parent(span)
        assert process is not None
        assert process["operationName"].startswith("process ")
        if stage != "video_processing":  # the video service runs both video stages
            assert process["operationName"] == f"process {STAGE_INPUT_TOPICS[stage]}"
        send = assert_hop(t, process, SERVICES_OF[stage], rid)
        if stage == "validation":
            assert t.parent(send) is root[0]
        else:  # handed on by the previous service, under its own process span
            assert t.parent(send) is not None
            assert t.parent(send)["operationName"].startswith("process ")  # type: ignore[index]
        starts.append(span["startTime"])
    assert starts == sorted(starts), "stages start in pipeline order"

    # The external calls, each a client span under its stage.
    def clients(stage: str) -> list[dict[str, Any]]:
        (span,) = t.stage_spans(stage)
        return [s for s in t.under(span) if s["tags_"].get("span.kind") == "client"]

    rag = clients("rag_retrieval")
    assert any(
        s["tags_"].get("db.system.name", s["tags_"].get("db.system")) == "postgresql" for s in rag
    ), t.summary()
    assert any(s["tags_"].get("gen_ai.operation.name") for s in rag + clients("script_generation"))
    script = clients("script_generation")
    assert any(
        s["tags_"].get("gen_ai.system", s["tags_"].get("gen_ai.provider.name")) for s in script
    ), t.summary()
    video = clients("video_generation")
    assert any(s["operationName"].startswith(("POST", "GET")) for s in video), t.summary()
    s3 = clients("video_processing")
    assert any(s["tags_"].get("rpc.service") == "S3" for s in s3), t.summary()
    smtp = clients("notification")
    assert [s["operationName"] for s in smtp if s["operationName"] == "smtp send"] == ["smtp send"]

    # The API's trace route draws the same trace, scope-checked.
    with api_client(h) as api:
        r = api.get(f"/api/v1/monitoring/requests/{rid}/trace")
    assert r.status_code == 200, r.text
    tree = r.json()
    assert (tree["request_id"], tree["trace_id"], tree["complete"]) == (rid, t.trace_id, True)
    assert tree["span_count"] == len(t.spans) == len(tree["spans"])
    assert {s["span_id"] for s in tree["spans"]} == set(t.by_id)
    first = tree["spans"][0]
    assert (first["name"], first["depth"], first["parent_id"]) == ("submit request", 0, None)
    assert [s["name"] for s in tree["spans"] if s["depth"] == 0] == ["submit request"]
    index = {s["span_id"]: i for i, s in enumerate(tree["spans"])}
    for i, s in enumerate(tree["spans"][1:], 1):  # depth-first: a parent right above
        parent = tree["spans"][index[s["parent_id"]]]
        assert index[s["parent_id"]] < i
        assert s["depth"] == parent["depth"] + 1
        assert s["parent_id"] == t.parent(t.by_id[s["span_id"]])["spanID"]  # type: ignore[index]
    stage = next(s for s in tree["spans"] if s["name"] == "stage notification")
    mail = next(s for s in tree["spans"] if s["name"] == "smtp send")
    assert (mail["kind"], mail["service"], mail["status"]) == ("client", "notify", "ok")
    assert mail["depth"] > stage["depth"]
    assert index[mail["span_id"]] > index[stage["span_id"]]
    assert stage["attributes"]["vividly.outcome"] == "completed"
    assert stage["offset_ms"] > 0
    assert stage["duration_ms"] > 0
    assert tree["duration_ms"] >= max(s["offset_ms"] + s["duration_ms"] for s in tree["spans"]) - 1
    # Jaeger has no login: the route checks scope first (another organization's
    # teacher sees no such request; a student no traces at all).
    for role, org, code in (
        ("teacher", "org-2", 404),
        ("teacher", "org-1", 200),
        ("student", None, 403),
    ):
        token = mint(API_SECRET, role=role, sub=f"{role}-x", org=org)
        r = httpx.get(
            f"{h.pipeline.api_url}/api/v1/monitoring/requests/{rid}/trace",
            headers={"Authorization": f"Bearer {token}"},
            timeout=15,
        )
        assert r.status_code == code, (role, org, r.text)


def test_the_dashboard_draws_a_request_trace_as_a_span_tree(
    traced: Harness, jaeger: Jaeger, browser: Browser, artifacts: Path
) -> None:
    h = traced
    with api_client(h) as api:
        rid, cid = submit(api, "Plate tectonics")
        assert h.log.wait_outcomes([rid], 90)[rid] == "request_completed"
        t = fetch_trace(jaeger, cid, complete)
        tree = api.get(f"/api/v1/monitoring/requests/{rid}/trace").json()
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    try:
        page.goto(f"{h.pipeline.api_url}/monitoring/dashboard")
        page.get_by_test_id("token-input").fill(mint(API_SECRET, role="admin", sub="sre-1"))
        page.get_by_test_id("sign-in").click()
        page.get_by_test_id("status-filter").select_option("completed")
        page.get_by_test_id("search").fill("tectonics")
        page.get_by_test_id("filter").click()
        page.locator(f"tr[data-id='{rid}']").click()
        rows = page.get_by_test_id("span-row")
        expect(rows).to_have_count(len(t.spans))
        expect(page.get_by_test_id("trace-meta")).to_contain_text(f"{len(t.spans)} spans")
        expect(rows.first).to_contain_text("submit request")
        names = rows.locator(".nm").all_inner_texts()
        depths = [int(d) for d in rows.evaluate_all("rs => rs.map(r => r.dataset.depth)")]
        assert names == [s["name"] for s in tree["spans"]]
        assert depths == [s["depth"] for s in tree["spans"]]
        stage, mail = names.index("stage notification"), names.index("smtp send")
        assert mail > stage
        assert depths[mail] > depths[stage]
        # Indented by depth and drawn on the time line (set through the DOM: the page's
        # policy refuses inline style attributes).
        pad = rows.nth(mail).locator(".nm").evaluate("e => getComputedStyle(e).paddingLeft")
        assert pad == f"{depths[mail] * 14}px"
        geometry = rows.evaluate_all(
            """rs => rs.map(r => {
                const b = r.querySelector('.bar').getBoundingClientRect();
                const l = r.querySelector('.lane').getBoundingClientRect();
                return [(b.left - l.left) / l.width, (b.right - l.left) / l.width];
            })"""
        )
        starts = {n: g[0] for n, g in zip(names, geometry, strict=True)}
        assert geometry[0][0] < 0.01  # the root starts the trace
        assert max(g[1] for g in geometry) > 0.98  # and the last span ends it
        order = [starts[f"stage {stage}"] for stage in STAGES]
        assert order == sorted(order), order
        assert order[-1] > 0.5, order
        shot = artifacts / "dashboard-trace.png"
        page.get_by_test_id("detail").screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000
        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        page.close()


def test_retries_and_a_manual_retry_from_the_api_stay_in_the_request_trace(
    traced: Harness, jaeger: Jaeger
) -> None:
    h = traced
    h.pipeline.set_knobs("video", job_fail_rate=1.0)
    with api_client(h) as api:
        rid, cid = submit(api, "Fractions")
        assert h.log.wait_outcomes([rid], 120)[rid] == "request_failed"

        def three_failed(t: Trace) -> bool:
            return len(t.stage_spans("video_generation")) == 3

        t = fetch_trace(jaeger, cid, three_failed)
        attempts = t.stage_spans("video_generation")
        assert [s["tags_"]["vividly.attempt"] for s in attempts] == [1, 2, 3]
        assert [s["tags_"]["vividly.outcome"] for s in attempts] == ["failed"] * 3
        assert all(s["tags_"].get("otel.status_code") == "ERROR" for s in attempts)
        # Each retry is consumed from the stage's own topic, sent by the attempt before.
        for before, after in itertools.pairwise(attempts):
            send = assert_hop(t, t.parent(after), "video", rid)  # type: ignore[arg-type]
            assert send["operationName"] == "send requests.scripted"
            assert t.parent(send) is t.parent(before)

        h.pipeline.set_knobs("video", job_fail_rate=0.0)
        other = "00-" + "feed" * 8 + "-" + "0ddba11f" * 2 + "-01"
        r = api.post(f"/api/v1/requests/{rid}/retry", headers={"traceparent": other})
        assert r.status_code == 202, r.text
    h.log.wait_for(lambda: h.log.outcome(rid) == "request_completed", 120, "the retried request")

    t = fetch_trace(jaeger, cid, complete)
    print("\n".join(t.summary()))
    (retry,) = t.named("retry video_generation")
    assert retry["service"] == "api"
    assert t.parent(retry) is None
    assert retry["tags_"]["vividly.attempt"] == 4
    assert retry["tags_"]["vividly.requested_by"] == "api:admin:sre-1"
    assert [r["traceID"] for r in retry["references"]] == [other[3:35]]
    fourth = t.stage_spans("video_generation")[3]
    assert fourth["tags_"]["vividly.outcome"] == "completed"
    send = assert_hop(t, t.parent(fourth), "video", rid)  # type: ignore[arg-type]
    assert t.parent(send) is retry
    (notification,) = t.stage_spans("notification")
    assert notification["tags_"]["vividly.outcome"] == "completed"
    # The error email (no stage: the failure item is handled by the notify service
    # itself) and the content email after the retry, both in this trace.
    mails = sorted(t.named("smtp send"), key=lambda s: s["startTime"])
    assert len(mails) == 2, t.summary()
    assert mails[0]["startTime"] < retry["startTime"] < mails[1]["startTime"]
    assert mails[1] in t.under(notification)
    first = t.parent(mails[0])
    assert first is not None
    assert first["operationName"] == "process requests.rendered"
