"""The monitoring API as a real process, over the real projector, broker and Postgres:
auth and scopes, the seed's endpoints, submit, retry, the SSE stream, the SDK reader."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer

from tests.readside import SECRET, ReadSide, make_request, side, visible, wait_for
from vividly.config import RETRIEVED, STAGES, Settings
from vividly.events import WorkItem
from vividly.readside import ApiStatusReader
from vividly.runtime.auth import mint
from vividly.tracker import RequestTracker

pytestmark = pytest.mark.integration

__all__ = ["side"]  # the module-scoped read-side fixture


# ---------------------------------------------------------------------- auth
def test_every_endpoint_but_health_needs_a_token(side: ReadSide) -> None:
    spec = httpx.get(f"{side.url}/openapi.json").json()
    paths = spec["paths"]
    assert "/api/v1/monitoring/stream" in paths
    checked = 0
    for path, methods in paths.items():
        for method in methods:
            url = side.url + path.replace("{request_id}", "x")
            r = httpx.request(method.upper(), url, json={}, timeout=10)
            if path in ("/healthz", "/readyz"):
                assert r.status_code == 200, path
            else:
                assert r.status_code == 401, f"{method} {path} answered {r.status_code}"
                checked += 1
    assert checked >= 9
    expired = mint(SECRET, role="admin", sub="a", ttl_s=60, now=time.time() - 3600)
    for token in (expired, mint("another-secret", role="admin", sub="a"), "garbage"):
        r = httpx.get(
            f"{side.url}/api/v1/monitoring/dashboard", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 401
    with side.client("service", "ingest-svc") as svc:
        assert svc.get("/api/v1/monitoring/dashboard").status_code == 403
        assert svc.get("/api/v1/monitoring/requests").status_code == 403


def test_scopes_hide_other_organizations_and_students(side: ReadSide, unique: str) -> None:
    org_a, org_b = f"a-{unique}", f"b-{unique}"
    ra = make_request(side.tracker, org_a, f"s1-{unique}")
    rb = make_request(side.tracker, org_b, f"s2-{unique}", outcome="failed")
    side.flush()
    wait_for(lambda: visible(side, ra, "completed") and visible(side, rb, "failed"), what="fold")
    with side.client("teacher", "t1", org_a) as teacher:
        assert teacher.get(f"/api/v1/monitoring/requests/{ra}").status_code == 200
        for path in (
            f"/api/v1/monitoring/requests/{rb}",
            f"/api/v1/monitoring/requests/{rb}/events",
        ):
            r = teacher.get(path)
            assert r.status_code == 404
            assert rb in r.json()["detail"]
            assert "org" not in r.text.replace(rb, "")
        assert teacher.post(f"/api/v1/requests/{rb}/retry").status_code == 404
        listed = teacher.get(
            "/api/v1/monitoring/requests", params={"status": "all", "limit": 200}
        ).json()
        assert {i["organization_id"] for i in listed["items"]} == {org_a}
        # Asking for another organization explicitly gives nothing, not their data.
        other = teacher.get("/api/v1/monitoring/requests", params={"organization_id": org_b}).json()
        assert other["items"] == []
        dash = teacher.get("/api/v1/monitoring/dashboard").json()
        assert dash["counts"]["completed"] == 1
        assert dash["counts"]["failed"] == 0
    with side.client("student", f"s1-{unique}", org_a) as student:
        assert student.get(f"/api/v1/monitoring/requests/{ra}").status_code == 200
        assert student.get(f"/api/v1/monitoring/requests/{rb}").status_code == 404
        mine = student.get("/api/v1/monitoring/requests").json()
        assert {i["student_id"] for i in mine["items"]} <= {f"s1-{unique}"}
    with side.client("service", "script-svc") as svc:  # pipeline code reads one request
        assert (
            svc.get(f"/api/v1/monitoring/requests/{rb}").json()["error_stage"]
            == "script_generation"
        )


# ---------------------------------------------------------------------- reads
def test_list_filters_and_keyset_pagination(side: ReadSide, unique: str) -> None:
    org = f"org-{unique}"
    made: dict[str, str] = {}
    for i, outcome in enumerate(
        ["completed"] * 12 + ["failed"] * 5 + ["waiting"] * 4 + ["running"] * 4
    ):
        topic = "Volcanoes and plate tectonics" if i % 5 == 0 else f"Fractions lesson {i}"
        made[make_request(side.tracker, org, f"st-{unique}-{i % 3}", topic, outcome)] = outcome
    side.flush()
    with side.client("teacher", "t", org) as c:

        def all_folded() -> bool:
            d = c.get("/api/v1/monitoring/dashboard").json()
            return bool(d["total"] == 25 and d["counts"]["completed"] == 12)

        wait_for(all_folded, what="25 requests folded")
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"status": "all", "limit": 10}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/api/v1/monitoring/requests", params=params).json()
            seen += [i["request_id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == 25
        assert set(seen) == set(made)
        active = c.get(
            "/api/v1/monitoring/requests", params={"status": "active", "limit": 50}
        ).json()
        assert {made[i["request_id"]] for i in active["items"]} == {"waiting", "running"}
        assert len(active["items"]) == 8
        waiting = c.get("/api/v1/monitoring/requests", params={"status": "waiting"}).json()["items"]
        assert {i["waiting_reason"] for i in waiting} == {"circuit_open"}
        assert {i["current_stage"] for i in waiting} == {"video_generation"}
        failed = c.get(
            "/api/v1/monitoring/requests", params={"status": "failed", "stage": "script_generation"}
        ).json()
        assert len(failed["items"]) == 5
        found = c.get(
            "/api/v1/monitoring/requests", params={"q": "volcanoes", "status": "all"}
        ).json()["items"]
        assert len(found) == 5
        assert all("Volcanoes" in i["topic"] for i in found)
        by_student = c.get(
            "/api/v1/monitoring/requests", params={"student_id": f"st-{unique}-0", "status": "all"}
        ).json()
        assert len(by_student["items"]) == 9
        assert "outputs" not in by_student["items"][0]  # summaries only
        bad = c.get("/api/v1/monitoring/requests", params={"status": "bogus"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["query", "status"]
        assert c.get("/api/v1/monitoring/requests", params={"cursor": "nope"}).json()["detail"][0][
            "loc"
        ] == ["query", "cursor"]


def test_request_detail_events_metrics_and_breakers(side: ReadSide, unique: str) -> None:
    org = f"org-{unique}"
    rid = make_request(side.tracker, org, "s")
    waiting = make_request(side.tracker, org, "s", outcome="waiting")
    side.tracker.breaker_state_changed(
        "gemini", "closed", "open", fail_counter=5, total_calls=7, total_failures=5
    )
    side.flush()
    d = wait_for(lambda: visible(side, rid, "completed"), what="completed request")
    assert tuple(s["stage"] for s in d["stages"]) == STAGES
    assert all(s["duration_ms"] is not None and s["status"] == "completed" for s in d["stages"])
    assert d["outputs"]["script_generation"] == {"word_count": 700}
    assert d["video_url"] == "https://cdn/v.mp4"
    w = wait_for(lambda: visible(side, waiting, "waiting"), what="waiting request")
    assert w["waiting_reason"] == "circuit_open"
    assert "circuit_open at video_generation" in w["reason"]
    with side.client() as c:
        first = c.get(f"/api/v1/monitoring/requests/{rid}/events", params={"limit": 10}).json()
        assert len(first["items"]) == 10
        rest = c.get(
            f"/api/v1/monitoring/requests/{rid}/events", params={"after": first["next_after"]}
        ).json()
        kinds = [e["event_type"] for e in first["items"] + rest["items"]]
        assert kinds[0] == "request_created"
        assert kinds[-1] == "request_completed"
        assert rest["next_after"] is None
        seqs = [e["seq"] for e in first["items"] + rest["items"]]
        assert seqs == sorted(set(seqs))
        metrics = c.get("/api/v1/monitoring/metrics", params={"hours": 2}).json()
        assert len(metrics["buckets"]) == 2
        now = metrics["buckets"][-1]
        assert now["stages"]["validation"]["completed"] >= 1
        assert now["stages"]["validation"]["p50_ms"] is not None
        assert now["requests"]["completed"] >= 1
        breakers = wait_for(
            lambda: [
                b
                for b in c.get("/api/v1/monitoring/breakers").json()
                if b["name"] == "gemini" and b["state"] == "open"
            ],
            what="breaker",
        )
        assert breakers[0]["opened_at"]
        dash = c.get("/api/v1/monitoring/dashboard").json()
        assert {s["stage"] for s in dash["last_hour"]["stages"]} >= {"validation", "notification"}
        assert any(b["name"] == "gemini" for b in dash["breakers"])
        assert c.get("/api/v1/monitoring/requests/nope").status_code == 404
        assert "vividly_api_request_duration_seconds" in httpx.get(f"{side.url}/metrics").text


def test_without_a_trace_backend_a_trace_is_a_404_that_says_tracing_is_off(
    side: ReadSide, unique: str
) -> None:
    """This read side reads no Jaeger: every trace is a 404 naming why (never a 5xx),
    after the scope check (a request outside it is plainly not found)."""
    org = f"org-{unique}"
    rid = make_request(side.tracker, org, "s")
    side.flush()
    wait_for(lambda: visible(side, rid, "completed"), what="completed request")
    with side.client() as c:
        r = c.get(f"/api/v1/monitoring/requests/{rid}/trace")
    assert r.status_code == 404
    assert r.json()["detail"]["code"] == "tracing_off"
    assert len(r.json()["detail"]["trace_id"]) == 32
    with side.client("teacher", "t-1", f"other-{unique}") as c:
        r = c.get(f"/api/v1/monitoring/requests/{rid}/trace")
    assert r.status_code == 404
    assert "tracing_off" not in r.text  # says nothing of a request it may not see
    with side.client("student", "s", org) as c:
        assert c.get(f"/api/v1/monitoring/requests/{rid}/trace").status_code == 403


# ---------------------------------------------------------------------- writes
def test_submit_validates_names_the_field_and_honours_idempotency(
    side: ReadSide, unique: str
) -> None:
    body = {
        "student_id": f"stu-{unique}",
        "organization_id": f"org-{unique}",
        "topic": "The water cycle",
        "learning_objective": "evaporation and condensation",
        "grade_level": "5",
        "duration_minutes": 3,
    }
    with side.client("service", "web") as c:
        for field, value in (
            ("topic", "ab"),
            ("grade_level", "14"),
            ("duration_minutes", 30),
            ("student_id", "bad id!"),
        ):
            r = c.post("/api/v1/requests", json={**body, field: value})
            assert r.status_code == 422, field
            assert r.json()["detail"][0]["loc"] == ["body", field]
        missing = c.post(
            "/api/v1/requests", json={k: v for k, v in body.items() if k != "learning_objective"}
        )
        assert missing.json()["detail"][0]["loc"] == ["body", "learning_objective"]
        first = c.post("/api/v1/requests", json=body, headers={"Idempotency-Key": f"k-{unique}"})
        assert first.status_code == 202
        again = c.post("/api/v1/requests", json=body, headers={"Idempotency-Key": f"k-{unique}"})
        rid = first.json()["request_id"]
        assert again.json()["request_id"] == rid
        assert first.headers["Location"] == f"/api/v1/monitoring/requests/{rid}"
        assert first.json()["correlation_id"]
    d = wait_for(lambda: visible(side, rid), what="submitted request")
    assert d["topic"] == "The water cycle"
    assert d["status"] in ("queued", "running")
    with side.client("student", f"stu-{unique}", f"org-{unique}") as student:
        assert (
            student.post(
                "/api/v1/requests", json={**body, "student_id": "someone-else"}
            ).status_code
            == 403
        )
        own = student.post(
            "/api/v1/requests", json={k: v for k, v in body.items() if k != "student_id"}
        )
        assert own.status_code == 202


def read_work_items(
    settings: Settings, topic: str, rid: str, stop: threading.Event, out: list[WorkItem]
) -> None:
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"t-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    c.subscribe([topic])
    try:
        while not stop.is_set():
            m = c.poll(0.2)
            if m is None or m.error() is not None:
                continue
            item = WorkItem()
            item.ParseFromString(m.value() or b"")
            if item.request_id == rid:
                out.append(item)
    finally:
        c.close()


def test_retry_republishes_the_kept_work_item_and_records_who_asked(
    side: ReadSide, unique: str
) -> None:
    org = f"org-{unique}"
    rid = make_request(side.tracker, org, "s", outcome="failed")
    done = make_request(side.tracker, org, "s")
    side.flush()
    wait_for(lambda: visible(side, rid, "failed") and visible(side, done, "completed"), what="fold")
    got: list[WorkItem] = []
    stop = threading.Event()
    reader = threading.Thread(
        target=read_work_items, args=(side.settings, RETRIEVED, rid, stop, got)
    )
    reader.start()
    try:
        with side.client("teacher", "t-9", org) as c:
            assert c.post(f"/api/v1/requests/{done}/retry").json()["detail"]["code"] == "not_failed"
            wrong = c.post(f"/api/v1/requests/{rid}/retry", json={"stage": "validation"})
            assert wrong.status_code == 409
            bad = c.post(f"/api/v1/requests/{rid}/retry", json={"stage": "nope"})
            assert bad.status_code == 422
            r = c.post(f"/api/v1/requests/{rid}/retry", json={"stage": "script_generation"})
            assert r.status_code == 202, r.text
            assert r.json()["attempt"] == 2
            assert r.json()["requested_by"] == "api:teacher:t-9"
            twice = c.post(f"/api/v1/requests/{rid}/retry")  # a second click
            assert twice.status_code == 409, twice.text
            assert twice.json()["detail"]["code"] in ("retry_in_progress", "not_failed")
        wait_for(lambda: got, what="work item on requests.retrieved")
        assert got[0].stage == "script_generation"
        assert got[0].attempt == 2
        d = wait_for(lambda: visible(side, rid, "queued"), what="queued after retry")
        assert d["retry_count"] == 1
        assert d["error_stage"] is None
        with side.client() as c:
            events = c.get(
                f"/api/v1/monitoring/requests/{rid}/events", params={"limit": 100}
            ).json()["items"]
        retried = [e for e in events if e["event_type"] == "request_retried"]
        assert retried[0]["data"]["requested_by"] == "api:teacher:t-9"
    finally:
        stop.set()
        reader.join(10)


def test_sdk_reads_status_and_retries_through_the_api(side: ReadSide, unique: str) -> None:
    """The seed's retry example, with the tracker's read side pointed at the API; the
    retry budget (2 here) makes retry_stage answer False, as the seed expects."""
    rid = make_request(side.tracker, f"org-{unique}", "s", outcome="failed")
    side.flush()
    wait_for(lambda: visible(side, rid, "failed"), what="failed request")
    tracker = RequestTracker(side.publisher, status_reader=ApiStatusReader(side.url, side.token()))
    for attempt in range(3):
        status = tracker.get_request_status(rid)
        assert status["status"] == "failed"
        accepted = tracker.retry_stage(rid, status["error_stage"])
        assert accepted is (attempt < 2)
        if not accepted:
            break
        wait_for(lambda: visible(side, rid, "queued"), what="queued")
        # The stage fails again (no pipeline runs here): as the service would report it.
        item = WorkItem(request_id=rid, stage="script_generation", attempt=attempt + 2)
        side.tracker.fail_stage(
            rid,
            "script_generation",
            "again",
            is_retryable=False,
            work_item=item,
            attempt=item.attempt,
        )
        side.tracker.fail_request(rid, "again", "script_generation")
        side.flush()
        wait_for(lambda: visible(side, rid, "failed"), what="failed again")
    with pytest.raises(KeyError):
        tracker.get_request_status("no-such-request")


# ---------------------------------------------------------------------- the stream
class SSE:
    """A minimal SSE client on a thread: collects (id, event, data) frames and comments."""

    def __init__(
        self, url: str, token: str, params: dict[str, str] | None = None, last_id: int | None = None
    ) -> None:
        self.frames: list[tuple[int, str, dict[str, Any]]] = []
        self.comments: list[str] = []
        self.status = 0
        self._stop = threading.Event()
        headers = {"Authorization": f"Bearer {token}"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        self._args = (url, headers, params or {})
        self.ready = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        import orjson

        url, headers, params = self._args
        with httpx.stream("GET", url, headers=headers, params=params, timeout=30) as r:
            self.status = r.status_code
            self.ready.set()
            fid, kind, data = None, "", ""
            for line in r.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("id: "):
                    fid = int(line[4:])
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and fid is not None:
                    self.frames.append((fid, kind, orjson.loads(data)))
                    fid, kind, data = None, "", ""

    def close(self) -> None:
        self._stop.set()


def test_stream_is_live_scoped_and_resumes_without_gaps_or_duplicates(
    side: ReadSide, unique: str
) -> None:
    org = f"org-{unique}"
    url = f"{side.url}/api/v1/monitoring/stream"
    teacher = side.token("teacher", "t", org)
    live = SSE(url, teacher)
    other = SSE(url, side.token("teacher", "t", f"other-{unique}"))
    assert live.status == 200
    time.sleep(0.5)
    rid = make_request(side.tracker, org, "s")
    side.flush()
    wait_for(
        lambda: len([f for f in live.frames if f[2]["request_id"] == rid]) == 15, what="live frames"
    )
    mine = [f for f in live.frames if f[2]["request_id"] == rid]
    assert mine[0][1] == "request_created"
    ids = [f[0] for f in mine]
    assert ids == sorted(ids)
    assert not [f for f in other.frames if f[2]["request_id"] == rid]
    wait_for(lambda: any("heartbeat" in c for c in live.comments), what="heartbeat", timeout=5)
    live.close()
    other.close()
    # Miss some events, then resume from the last id seen: exactly the missed ones.
    last = ids[-1]
    missed = make_request(side.tracker, org, "s", outcome="failed")
    side.flush()
    wait_for(lambda: visible(side, missed, "failed"), what="missed request folded")
    resumed = SSE(url, teacher, last_id=last)
    try:
        wait_for(
            lambda: any(f[2]["event_type"] == "request_failed" for f in resumed.frames),
            what="backfill",
        )
        got = [f for f in resumed.frames if f[2]["organization_id"] == org]
        assert [f[2]["request_id"] for f in got] == [missed] * len(got)
        assert len(got) == 9
        assert len({f[0] for f in got}) == len(got)
        assert all(f[0] > last for f in got)
        # And it continues live after the backfill.
        after = make_request(side.tracker, org, "s", outcome="running")
        side.flush()
        wait_for(
            lambda: any(f[2]["request_id"] == after for f in resumed.frames),
            what="live after resume",
        )
    finally:
        resumed.close()
    only = SSE(url, side.token(), params={"request_id": rid}, last_id=0)
    try:
        wait_for(lambda: len(only.frames) >= 15, what="request filter")
        time.sleep(0.3)
        assert {f[2]["request_id"] for f in only.frames} == {rid}
    finally:
        only.close()


def test_openapi_lists_the_seed_endpoints(side: ReadSide) -> None:
    paths = set(httpx.get(f"{side.url}/openapi.json").json()["paths"])
    assert {
        "/api/v1/monitoring/dashboard",
        "/api/v1/monitoring/requests",
        "/api/v1/monitoring/requests/{request_id}",
        "/api/v1/monitoring/requests/{request_id}/events",
        "/api/v1/monitoring/metrics",
        "/api/v1/monitoring/stream",
        "/api/v1/monitoring/breakers",
        "/api/v1/requests",
        "/api/v1/requests/{request_id}/retry",
        "/healthz",
        "/readyz",
    } <= paths
    assert httpx.get(f"{side.url}/docs").status_code == 200
    page = httpx.get(f"{side.url}/monitoring/dashboard")
    assert page.status_code == 200
    assert "Vividly" in page.text
    assert Path(__file__).exists()


def test_a_second_click_racing_the_first_retrys_fold_is_refused(
    side: ReadSide, unique: str
) -> None:
    """The second click reads the request as failed, then the first click's RequestRetried
    is folded (adding attempt 2's row) before it looks up what to retry. Reproduced by
    putting the status back to failed after the fold: it must still be one retry."""
    import asyncio

    import asyncpg

    org = f"org-{unique}"
    rid = make_request(side.tracker, org, "s", outcome="failed")
    side.flush()
    wait_for(lambda: visible(side, rid, "failed"), what="fold")
    with side.client("admin") as c:
        assert c.post(f"/api/v1/requests/{rid}/retry").status_code == 202
    wait_for(lambda: visible(side, rid, "queued"), what="the retry folded")

    async def as_if_unfolded() -> None:
        conn = await asyncpg.connect(side.pipeline.database_url)
        try:
            await conn.execute(
                "UPDATE vividly_read.requests SET status = 'failed',"
                " error_stage = 'script_generation' WHERE request_id = $1",
                rid,
            )
        finally:
            await conn.close()

    asyncio.run(as_if_unfolded())
    with side.client("admin") as c:
        again = c.post(f"/api/v1/requests/{rid}/retry")
    assert again.status_code == 409, again.text
    assert again.json()["detail"]["code"] == "retry_in_progress"


def test_quarantined_events_are_counted_on_the_dashboard_and_listed_for_admins(
    side: ReadSide, unique: str
) -> None:
    from confluent_kafka import Producer

    from vividly.config import TRACKING_TOPIC

    p = Producer({"bootstrap.servers": side.settings.kafka_bootstrap})
    p.produce(TRACKING_TOPIC, b"\xff not a protobuf " + unique.encode(), unique.encode())
    assert p.flush(20) == 0
    later = make_request(side.tracker, f"org-{unique}", "s")  # the fold goes on past it
    side.flush()
    wait_for(lambda: visible(side, later, "completed"), what="the request after the poison")
    with side.client("admin") as c:
        dash = c.get("/api/v1/monitoring/dashboard").json()
        assert dash["quarantined"] >= 1
        rows = c.get("/api/v1/monitoring/quarantine", params={"limit": 500}).json()
    assert any(r["reason"].startswith("undecodable") for r in rows), rows[:3]
    with side.client("teacher", "t-1", f"org-{unique}") as c:
        assert c.get("/api/v1/monitoring/dashboard").json()["quarantined"] is None
        assert c.get("/api/v1/monitoring/quarantine").status_code == 403


def test_the_stream_listens_again_after_losing_postgres_and_readyz_says_so(
    side: ReadSide, unique: str
) -> None:
    """The hub's LISTEN connection is cut (as when Postgres restarts): /readyz answers 503
    until it is back, and events folded meanwhile still reach a resuming client."""
    import asyncio

    import asyncpg

    async def cut() -> int:
        conn = await asyncpg.connect(side.pipeline.database_url)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'vividly-sse-hub'"
                )
            )
        finally:
            await conn.close()

    with side.client() as c:
        assert c.get("/readyz").status_code == 200
        last = c.get("/api/v1/monitoring/requests", params={"limit": 1}).status_code
        assert last == 200
    assert asyncio.run(cut()) >= 1
    log = side.pipeline.home / "logs" / "api.log"

    def relistened() -> bool:
        text = log.read_text()
        lost = text.rfind("lost the LISTEN connection")
        return lost >= 0 and text.find("listening again", lost) > lost

    # (readyz answers 503 only for the few milliseconds the reconnect takes: the hub's
    # own record of losing and regaining the connection is what can be waited on.)
    wait_for(relistened, what="the hub to notice the cut and LISTEN again", timeout=30)
    with side.client() as c:
        wait_for(lambda: c.get("/readyz").status_code == 200, what="ready again")
    rid = make_request(side.tracker, f"org-{unique}", "s")
    side.flush()
    sse = SSE(f"{side.url}/api/v1/monitoring/stream", side.token(), {"request_id": rid}, last_id=0)
    try:
        wait_for(
            lambda: any(f[1] == "request_completed" for f in sse.frames),
            what="the new request's events on the stream after the reconnect",
        )
    finally:
        sse.close()
