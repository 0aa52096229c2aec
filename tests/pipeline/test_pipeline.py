"""The six stages end to end on a real broker, Postgres, emulators, S3 and SMTP.

All pipeline scenarios live in this one module so they share one running pipeline."""

from __future__ import annotations

import collections
import email.message
import functools
import signal
import time
import urllib.request
from typing import Any

import orjson
import pytest

from tests.pipeline.conftest import Harness, dlq_messages
from vividly.config import STAGES

pytestmark = pytest.mark.integration

TOPICS = [
    "Photosynthesis",
    "Volcanoes",
    "Fractions",
    "The Water Cycle",
    "Electric circuits",
    "Ancient Egypt",
    "DNA and genetics",
    "Newton's laws",
    "The solar system",
    "Chemical reactions",
]


def body_of(msg: email.message.Message) -> str:
    raw = msg.get_payload(decode=True)
    assert isinstance(raw, bytes)
    return raw.decode()


def has_email(h: Harness, rid: str) -> bool:
    return len(h.emails_for(rid)) >= 1


def stage_sequence(h: Harness, rid: str) -> list[tuple[str, str]]:
    out = []
    for e in h.log.events(rid):
        kind = e.WhichOneof("event")
        if kind == "stage_started":
            out.append(("started", e.stage_started.stage))
        elif kind == "stage_completed":
            out.append(("completed", e.stage_completed.stage))
    return out


def test_fifty_requests_complete_through_six_stages_in_order(harness: Harness) -> None:
    h = harness
    rids = [
        h.submit(
            topic=TOPICS[i % len(TOPICS)], grade_level=str(3 + i % 10), duration_minutes=1 + i % 3
        )
        for i in range(50)
    ]
    h.flush()
    outcomes = h.log.wait_outcomes(rids, timeout=240)
    assert set(outcomes.values()) == {"request_completed"}
    expected = [(step, stage) for stage in STAGES for step in ("started", "completed")]
    for rid in rids:
        assert stage_sequence(h, rid) == expected, rid
        done = next(e for e in h.log.events(rid) if e.WhichOneof("event") == "request_completed")
        rc = done.request_completed
        assert rc.video_url.endswith(f"/{rid}.mp4")
        assert rc.thumbnail_url.endswith(f"/{rid}.jpg")
        assert len(rc.script_text.split()) > 100
        mails = h.emails_for(rid)
        assert len(mails) == 1
        assert mails[0]["X-Vividly-Template"] == "content_ready"
        assert rc.video_url in body_of(mails[0])
    # The CDN URLs serve the real MP4 and a JPEG thumbnail.
    sample = next(
        e for e in h.log.events(rids[0]) if e.WhichOneof("event") == "request_completed"
    ).request_completed
    with urllib.request.urlopen(sample.video_url, timeout=10) as resp:
        video = resp.read()
    assert video[4:8] == b"ftyp"
    with urllib.request.urlopen(sample.thumbnail_url, timeout=10) as resp:
        assert resp.read()[:2] == b"\xff\xd8"
    # Scripts are sized to the requested duration (150 words a minute, give or take).
    for rid in rids[:6]:
        sg = next(
            e
            for e in h.log.events(rid)
            if e.WhichOneof("event") == "stage_completed"
            and e.stage_completed.stage == "script_generation"
        )
        out = orjson.loads(sg.stage_completed.output_json)
        assert 0.9 * out["target_words"] <= out["word_count"] <= 1.4 * out["target_words"]
    # RAG: the top passage is about the requested topic; the second request of a topic is
    # a cache hit.
    rag = next(
        e
        for e in h.log.events(rids[0])
        if e.WhichOneof("event") == "stage_completed" and e.stage_completed.stage == "rag_retrieval"
    )
    chunks = orjson.loads(rag.stage_completed.output_json)["chunks"]
    assert len(chunks) == 5
    assert "photosynthesis" in chunks[0]["id"]
    assert any(
        e.WhichOneof("event") == "event_logged" and e.event_logged.event_type == "cache_hit"
        for r in rids
        for e in h.log.events(r)
    )


def test_external_calls_carry_correlation_id_and_traceparent(harness: Harness) -> None:
    h = harness
    rid = h.submit(topic="Plate tectonics")
    h.flush()
    assert h.log.wait_outcomes([rid], 90)[rid] == "request_completed"
    cid = h.log.events(rid)[0].correlation_id
    trace = cid.replace("-", "")
    for which, path in (("gemini", "/v1/models"), ("video", "/v1/videos")):
        mine = [
            r
            for r in h.pipeline.received(which, path)
            if r["headers"].get("x-correlation-id") == cid
        ]
        assert mine, f"{which} got no call with the request's correlation id"
        for r in mine:
            assert r["headers"]["traceparent"].split("-")[1] == trace
    gemini_paths = {
        r["path"]
        for r in h.pipeline.received("gemini", "/v1/models")
        if r["headers"].get("x-correlation-id") == cid
    }
    assert any(p.endswith(":generateContent") for p in gemini_paths)
    video_calls = [
        r
        for r in h.pipeline.received("video", "/v1/videos")
        if r["headers"].get("x-correlation-id") == cid
    ]
    assert {r["method"] for r in video_calls} == {"POST", "GET"}
    assert any(r["path"].endswith("/content") for r in video_calls)


def test_invalid_requests_fail_at_validation_naming_the_field(harness: Harness) -> None:
    h = harness
    cases = {
        "topic": h.submit(topic="ab"),
        "grade_level": h.submit(grade_level="13"),
        "duration_minutes": h.submit(duration_minutes=20),
        "student_id": h.submit(student_id="not valid!"),
        "learning_objective": h.submit(learning_objective="   "),
    }
    h.flush()
    outcomes = h.log.wait_outcomes(list(cases.values()), 60)
    for field, rid in cases.items():
        assert outcomes[rid] == "request_failed", field
        failed = next(e for e in h.log.events(rid) if e.WhichOneof("event") == "request_failed")
        assert failed.request_failed.error_stage == "validation"
        assert failed.request_failed.error_message.startswith(f"{field}:")
        assert orjson.loads(failed.request_failed.error_details_json)["field"] == field
        stages = {s for _, s in stage_sequence(h, rid)}
        assert stages == {"validation"}, "no stage after validation ran"
        sf = next(e for e in h.log.events(rid) if e.WhichOneof("event") == "stage_failed")
        assert sf.stage_failed.is_retryable is False
        h.log.wait_for(functools.partial(has_email, h, rid), 30, "the error email")
        assert [m["X-Vividly-Template"] for m in h.emails_for(rid)] == ["error"]


def test_the_same_idempotency_key_twice_is_one_request(harness: Harness) -> None:
    h = harness
    a = h.submit(student_id="stu-idem", idempotency_key="form-42", topic="Volcanoes")
    b = h.submit(student_id="stu-idem", idempotency_key="form-42", topic="Volcanoes")
    h.flush()
    assert a == b
    assert h.log.wait_outcomes([a], 90)[a] == "request_completed"
    h.log.wait_for(
        lambda: (
            "duplicate_submission"
            in [
                e.event_logged.event_type
                for e in h.log.events(a)
                if e.WhichOneof("event") == "event_logged"
            ]
        ),
        30,
        "the duplicate to be noticed",
    )
    time.sleep(1.0)
    kinds = h.log.kinds(a)
    assert kinds.count("request_completed") == 1
    assert [s for s in stage_sequence(h, a) if s[0] == "completed"] == [
        ("completed", s) for s in STAGES
    ]
    assert len(h.emails_for(a)) == 1


def test_video_outage_opens_the_breaker_requests_wait_then_all_complete(
    harness: Harness,
) -> None:
    h = harness
    h.pipeline.set_knobs("video", outage_for_s=6, outage_status=503)
    rids = [h.submit(topic=TOPICS[i % 4]) for i in range(10)]
    h.flush()
    outcomes = h.log.wait_outcomes(rids, 180)
    assert set(outcomes.values()) == {"request_completed"}, collections.Counter(outcomes.values())
    waiting = [
        e for r in rids for e in h.log.events(r) if e.WhichOneof("event") == "request_waiting"
    ]
    assert waiting, "requests were shown as waiting while the circuit was open"
    assert {e.request_waiting.reason for e in waiting} == {"circuit_open"}
    assert {e.request_waiting.stage for e in waiting} <= {"video_generation", "video_processing"}
    changes = [
        (e.breaker_state_changed.old_state, e.breaker_state_changed.new_state)
        for e in h.log.breakers
        if e.breaker_state_changed.breaker == "nano_banana"
    ]
    assert ("closed", "open") in changes
    assert ("half-open", "closed") in changes
    # Only the calls that tripped the breaker cost attempts; nobody ran out.
    for rid in rids:
        assert "request_failed" not in h.log.kinds(rid)


def test_exhausted_retries_fail_at_the_stage_with_dlq_entry_and_one_error_email(
    harness: Harness,
) -> None:
    h = harness
    h.pipeline.set_knobs("video", job_fail_rate=1.0)
    rid = h.submit(topic="Fractions")
    h.flush()
    assert h.log.wait_outcomes([rid], 120)[rid] == "request_failed"
    events = h.log.events(rid)
    failed = next(e for e in events if e.WhichOneof("event") == "request_failed")
    assert failed.request_failed.error_stage == "video_generation"
    attempts = [e.stage_failed.attempt for e in events if e.WhichOneof("event") == "stage_failed"]
    assert attempts == [1, 2, 3]
    retries = [
        e.stage_retry_scheduled for e in events if e.WhichOneof("event") == "stage_retry_scheduled"
    ]
    assert [r.attempt for r in retries] == [2, 3]
    assert all(r.due_at.seconds > 0 for r in retries)
    last = [e for e in events if e.WhichOneof("event") == "stage_failed"][-1].stage_failed
    assert last.input.request_id == rid, "StageFailed keeps the input work item for retries"
    dead = dlq_messages(h.settings, {rid})
    assert dead[rid]["dlq-reason"] == b"retries_exhausted"
    assert dead[rid]["dlq-stage"] == b"video_generation"
    h.log.wait_for(lambda: len(h.emails_for(rid)) >= 1, 30, "the error email")
    time.sleep(1.0)
    mails = h.emails_for(rid)
    assert [m["X-Vividly-Template"] for m in mails] == ["error"]
    assert "Video generation failed" in body_of(mails[0])


def test_sigkill_a_stage_service_mid_flight_every_request_completes_once(
    harness: Harness,
) -> None:
    h = harness
    h.pipeline.set_knobs("video", job_seconds=2.0)
    rids = [h.submit(topic=TOPICS[i % len(TOPICS)]) for i in range(30)]
    h.flush()

    def video_busy() -> bool:
        started = sum(
            1
            for r in rids
            for e in h.log.events(r)
            if e.WhichOneof("event") == "stage_started"
            and e.stage_started.stage == "video_generation"
        )
        return started >= 10

    h.log.wait_for(video_busy, 120, "video jobs in flight")
    h.pipeline.stop_service("video", signal.SIGKILL)
    h.pipeline.stop_service("notify", signal.SIGKILL)
    time.sleep(0.5)
    h.pipeline.start_service("video")
    h.pipeline.start_service("notify")
    outcomes = h.log.wait_outcomes(rids, 240)
    assert set(outcomes.values()) == {"request_completed"}
    for rid in rids:
        completions = collections.Counter(
            (e.stage_completed.stage, e.stage_completed.attempt)
            for e in h.log.events(rid)
            if e.WhichOneof("event") == "stage_completed"
        )
        assert all(n == 1 for n in completions.values()), (rid, completions)
        assert h.log.kinds(rid).count("request_completed") == 1
        assert len(h.emails_for(rid)) == 1, rid


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum over series of ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_every_service_serves_metrics_that_move_when_work_flows(harness: Harness) -> None:
    h = harness
    names = ("ingest", "rag", "script", "video", "notify", "projector")
    before = {n: scrape(h.pipeline.metrics_url(n)) for n in names}
    rids = [h.submit(topic=t) for t in TOPICS[:3]]
    h.flush()
    assert set(h.log.wait_outcomes(rids, 120).values()) == {"request_completed"}
    # One request that exhausts its retries at video_generation: retries and a DLQ entry.
    h.pipeline.set_knobs("video", job_fail_rate=1.0)
    bad = h.submit(topic="Volcanoes")
    h.flush()
    assert h.log.wait_outcomes([bad], 120)[bad] == "request_failed"
    time.sleep(1.5)  # a stats interval and a fold
    after = {n: scrape(h.pipeline.metrics_url(n)) for n in names}

    def moved(service: str, name: str, by: float = 1, **labels: str) -> None:
        delta = metric(after[service], name, **labels) - metric(before[service], name, **labels)
        assert delta >= by, f"{service}: {name}{labels} moved by {delta}, expected >= {by}"

    count = "vividly_stage_duration_seconds_count"
    moved("ingest", count, 4, stage="validation", outcome="completed")
    moved("rag", count, 4, stage="rag_retrieval", outcome="completed")
    moved("script", count, 4, stage="script_generation", outcome="completed")
    moved("video", count, 3, stage="video_processing", outcome="completed")
    moved("video", count, 3, stage="video_generation", outcome="failed")
    moved("notify", count, 3, stage="notification", outcome="completed")
    moved("notify", "vividly_requests_finished_total", 3, status="completed")
    moved("video", "vividly_requests_finished_total", 1, status="failed")
    moved("video", "vividly_retries_scheduled_total", 2, stage="video_generation")
    moved(
        "video",
        "vividly_dlq_messages_total",
        1,
        stage="video_generation",
        reason="retries_exhausted",
    )
    moved("video", "vividly_breaker_calls_total", 4, breaker="nano_banana")
    # A failed job is an answer, not an outage: the breaker counts the calls, no failures.
    assert metric(after["video"], "vividly_breaker_failures_total", breaker="nano_banana") == (
        metric(before["video"], "vividly_breaker_failures_total", breaker="nano_banana")
    )
    for service in ("ingest", "rag", "script", "video", "notify"):
        moved(service, "vividly_events_published_total", 1, topic="tracking.events")
        assert metric(after[service], "vividly_publish_failures_total") == 0
        assert ("vividly_items_in_flight", (("service", service),)) in after[service]
        assert any(n == "vividly_consumer_lag_messages" for n, _ in after[service]), service
    assert metric(after["video"], "vividly_stage_expected_seconds", stage="video_generation") == 900
    assert ("vividly_breaker_state", (("breaker", "nano_banana"),)) in after["video"]
    moved("projector", "vividly_projector_events_folded_total", 60)
    assert ("vividly_projector_lag_seconds", (("schema", "vividly_read"),)) in after["projector"]
    assert not any(n.startswith("vividly_projector") for n, _ in after["ingest"])
    moved("projector", "vividly_projector_batch_seconds_count", 1)
    # The API times its routes by template (no request ids in labels).
    from tests.pipeline.conftest import API_SECRET
    from vividly.runtime.auth import mint

    token = mint(API_SECRET, role="admin", sub="sre")
    req = urllib.request.Request(
        f"{h.pipeline.api_url}/api/v1/monitoring/requests/{rids[0]}",
        headers={"Authorization": f"Bearer {token}"},
    )
    urllib.request.urlopen(req, timeout=10).read()

    def timed() -> bool:  # observed once the response has gone out
        got = metric(
            scrape(h.pipeline.metrics_url("api")),
            "vividly_api_request_duration_seconds_count",
            route="/api/v1/monitoring/requests/{request_id}",
            status="200",
        )
        return got >= 1

    h.log.wait_for(timed, 10, "the API to time the route")
    api = scrape(h.pipeline.metrics_url("api"))
    assert not any(rids[0] in str(labels) for _, labels in api)


def test_prometheus_scrapes_the_stack_with_our_config_and_rules(
    harness: Harness, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Debian's real Prometheus, with deploy/prometheus's rules and its jobs pointed at
    this stack's processes; a series read back through its HTTP API."""
    import json
    import shutil
    import subprocess
    from pathlib import Path
    from urllib.parse import quote

    import yaml

    from vividly.platform.stack import free_port, stop_pid

    h = harness
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is not installed: run `make setup`")
    deploy = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
    config = yaml.safe_load((deploy / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"stage-services", "projector", "api"}
    members = {
        "stage-services": ["ingest", "rag", "script", "video", "notify"],
        "projector": ["projector"],
        "api": ["api"],
    }
    for job_name, job in jobs.items():  # same jobs, static targets instead of DNS
        job.pop("dns_sd_configs")
        job["relabel_configs"] = []
        job["scrape_interval"] = "1s"
        job["static_configs"] = [
            {
                "targets": [h.pipeline.metrics_url(m).split("/")[2]],
                "labels": {"service": m},
            }
            for m in members[job_name]
        ]
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(deploy / "alerts.yml")]
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> dict[str, Any]:
        with urllib.request.urlopen(base + path, timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body

    try:

        def series() -> list[dict[str, Any]]:
            try:
                q = quote("sum by (service) (vividly_stage_duration_seconds_count)")
                result: list[dict[str, Any]] = get(f"/api/v1/query?query={q}")["data"]["result"]
                return result
            except OSError:
                return []

        h.log.wait_for(lambda: len(series()) >= 5, 60, "Prometheus to scrape the services")
        got = {r["metric"]["service"]: float(r["value"][1]) for r in series()}
        assert set(got) >= {"ingest", "rag", "script", "video", "notify"}
        assert all(v > 0 for v in got.values())
        targets = get("/api/v1/targets")["data"]["activeTargets"]
        assert len(targets) == 7
        h.log.wait_for(
            lambda: all(
                t["health"] == "up" for t in get("/api/v1/targets")["data"]["activeTargets"]
            ),
            30,
            "every target up",
        )
        rules = [r["name"] for g in get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        assert "VividlyBreakerOpen" in rules
        assert "VividlyRequestStuckInStage" in rules
        q = quote("sum by (service) (vividly_projector_events_folded_total)")
        folded = get(f"/api/v1/query?query={q}")["data"]["result"]
        assert [r["metric"]["service"] for r in folded] == ["projector"]
        assert float(folded[0]["value"][1]) > 0
    finally:
        stop_pid(proc.pid, 10)
        proc.wait(5)
        log.close()


def test_cancel_stops_a_request_wherever_it_is_and_no_email_is_sent(harness: Harness) -> None:
    """Two requests cancelled through the API: one while its video job renders (the
    video stage sees it between polls and cancels the job at the video API), one while
    its script is being written (the video stage finds the fence before it starts and
    submits no job). Neither goes further, both end cancelled, no email for either."""
    import httpx

    from tests.pipeline.conftest import API_SECRET
    from vividly.runtime.auth import mint

    h = harness
    api = httpx.Client(
        base_url=h.pipeline.api_url,
        headers={"Authorization": f"Bearer {mint(API_SECRET, role='admin', sub='sre-2')}"},
        timeout=15,
    )
    h.pipeline.set_knobs("video", job_seconds=60)
    rendering = h.submit(topic="Cancelled while rendering")
    h.flush()
    h.log.wait_for(
        lambda: (
            "video_progress" in h.log.kinds(rendering)
            or any(
                e.WhichOneof("event") == "stage_started"
                and e.stage_started.stage == "video_generation"
                for e in h.log.events(rendering)
            )
        ),
        60,
        "the video job to start",
    )
    h.pipeline.set_knobs("gemini", latency_s=3)
    writing = h.submit(topic="Cancelled while writing")
    h.flush()
    h.log.wait_for(
        lambda: any(
            e.WhichOneof("event") == "stage_started"
            and e.stage_started.stage == "script_generation"
            for e in h.log.events(writing)
        ),
        60,
        "the script stage to start",
    )
    for rid in (rendering, writing):
        r = api.post(f"/api/v1/requests/{rid}/cancel", json={"reason": "not needed"})
        assert r.status_code == 202, r.text

    def cancelled_at(rid: str, stage: str) -> bool:
        return any(
            e.WhichOneof("event") == "event_logged"
            and e.event_logged.event_type == "stage_cancelled"
            and e.event_logged.stage == stage
            for e in h.log.events(rid)
        )

    h.log.wait_for(lambda: cancelled_at(rendering, "video_generation"), 60, "the job cancelled")
    h.log.wait_for(lambda: cancelled_at(writing, "video_generation"), 60, "the skip")
    jobs = h.pipeline.received("video")
    cancels = [j for j in jobs if j["method"] == "POST" and j["path"].endswith("/cancel")]
    assert len(cancels) == 1  # the rendering job only
    submitted = [
        j
        for j in jobs
        if j["method"] == "POST"
        and j["path"] == "/v1/videos"
        and j["headers"].get("idempotency-key", "").startswith(writing)
    ]
    assert submitted == []  # the script-stage one never reached the video API
    for rid in (rendering, writing):
        kinds = h.log.kinds(rid)
        assert "request_cancelled" in kinds
        assert "request_completed" not in kinds
        started = {
            e.stage_started.stage
            for e in h.log.events(rid)
            if e.WhichOneof("event") == "stage_started"
        }
        assert not started & {"video_processing", "notification"}
        assert h.emails_for(rid) == []
        url = f"/api/v1/monitoring/requests/{rid}"

        def folded(url: str = url) -> bool:
            return bool(api.get(url).json()["status"] == "cancelled")

        h.log.wait_for(folded, 30, "cancelled in the read model")
        body = api.get(url).json()
        assert body["cancelled_by"] == "api:admin:sre-2"
        assert "running" not in {s["status"] for s in body["stages"]}


def test_read_model_matches_the_log_and_an_api_retry_completes_a_failed_request(
    harness: Harness,
) -> None:
    """Runs last: every request the scenarios above put through the pipeline is in the
    read model as the log says, stage attempt by stage attempt; then the request that
    failed at video_generation is retried through the API and completes."""
    import httpx

    from tests.pipeline.conftest import API_SECRET
    from vividly.runtime.auth import mint

    h = harness
    api = httpx.Client(
        base_url=h.pipeline.api_url,
        headers={"Authorization": f"Bearer {mint(API_SECRET, role='admin', sub='sre-1')}"},
        timeout=15,
    )
    with h.log.lock:  # this module's requests (other modules publish to the topic too)
        ours = [r for r, evs in h.log.by_request.items() if evs[0].producer == "tests"]
    rids = [r for r in ours if h.log.outcome(r)]
    assert len(rids) >= 60
    expected = {r: str(h.log.outcome(r)) for r in rids}

    def folded() -> bool:
        for rid in rids:
            r = api.get(f"/api/v1/monitoring/requests/{rid}")
            if r.status_code != 200 or r.json()["status"] != expected[rid].removeprefix("request_"):
                return False
        return True

    h.log.wait_for(folded, 60, "the read model to fold every request")
    for rid in rids:
        detail = api.get(f"/api/v1/monitoring/requests/{rid}").json()
        last: dict[tuple[str, int], str] = {}
        for e in h.log.events(rid):
            kind = e.WhichOneof("event")
            if kind in ("stage_started", "stage_completed", "stage_failed"):
                ev = getattr(e, kind)
                last[(ev.stage, ev.attempt)] = kind.removeprefix("stage_").replace(
                    "started", "running"
                )
        stages = {
            (s["stage"], s["attempt"]): s["status"]
            for s in detail["stages"]
            if s["status"] != "scheduled"
        }
        assert stages == last, rid
        timeline = api.get(f"/api/v1/monitoring/requests/{rid}/events", params={"limit": 1000})
        assert len(timeline.json()["items"]) == len(h.log.events(rid)), rid

    failed = [
        r
        for r in rids
        if any(
            e.WhichOneof("event") == "request_failed"
            and e.request_failed.error_stage == "video_generation"
            for e in h.log.events(r)
        )
    ]
    assert failed, "the exhausted-retries scenario left a request failed at video_generation"
    rid = failed[0]
    emails_before = [m["X-Vividly-Template"] for m in h.emails_for(rid)]
    r = api.post(f"/api/v1/requests/{rid}/retry")
    assert r.status_code == 202, r.text
    assert r.json()["stage"] == "video_generation"
    assert r.json()["attempt"] == 4
    h.log.wait_for(lambda: h.log.outcome(rid) == "request_completed", 120, "the retried request")
    h.log.wait_for(
        lambda: api.get(f"/api/v1/monitoring/requests/{rid}").json()["status"] == "completed",
        30,
        "the read model to show it completed",
    )
    detail = api.get(f"/api/v1/monitoring/requests/{rid}").json()
    assert detail["retry_count"] == 1
    assert ("video_generation", 4, "completed") in {
        (s["stage"], s["attempt"], s["status"]) for s in detail["stages"]
    }
    retried = [e for e in h.log.events(rid) if e.WhichOneof("event") == "request_retried"]
    assert retried[0].request_retried.requested_by == "api:admin:sre-1"
    h.log.wait_for(
        lambda: "content_ready" in [m["X-Vividly-Template"] for m in h.emails_for(rid)],
        30,
        "the content-ready email after the retry",
    )
    assert emails_before == ["error"]
