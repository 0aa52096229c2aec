"""For the people who act on requests, against the real API process, projector, broker and
Postgres: read-your-writes (the seed's worker unchanged, with no sleep), stalled requests,
cancel, bulk retry and cancel, and the dashboard's filters."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import BrokerPool
from tests.docs import seed_app, seed_worker
from tests.integration.kafka_util import read_topic
from tests.readside import ReadSide, make_request, read_side, visible, wait_for
from vividly import ApiStatusReader, RequestTracker, TrackingSession
from vividly.config import RETRIEVED, STAGES, TRACKING_TOPIC
from vividly.events import WorkItem, decode_envelope
from vividly.publish import KafkaPublisher

pytestmark = pytest.mark.integration

#: script_generation may stay silent 2 s here before it is stalled (the others: default).
EXPECTED = '{"script_generation": 2}'


@pytest.fixture(scope="module")
def side(
    broker_pool: BrokerPool, postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReadSide]:
    env = {"VIVIDLY_STAGE_EXPECTED_S": EXPECTED, "VIVIDLY_MAX_MANUAL_RETRIES": "2"}
    with read_side(broker_pool, postgres, tmp_path_factory.mktemp("actions"), env) as rs:
        yield rs


def fresh(db: TrackingSession, rid: str) -> dict[str, Any]:
    """The status after everything published through ``db`` so far: a write of our own
    after the worker's (one producer, so in order), read back with read-your-writes."""
    tracker = RequestTracker(db)
    tracker.log_event(rid, "checked", "read back by the test")
    return tracker.get_request_status(rid)


def until(side: ReadSide, rid: str, status: str | None = None) -> dict[str, Any]:
    return wait_for(lambda: visible(side, rid, status), what=f"{rid} {status or 'visible'}")


def stages_of(side: ReadSide, rid: str) -> dict[str, str]:
    d = visible(side, rid)
    assert d is not None
    return {f"{s['stage']}#{s['attempt']}": s["status"] for s in d["stages"]}


# ---------------------------------------------------------------------- read your writes
def test_the_seed_worker_runs_as_written_with_no_sleep(side: ReadSide) -> None:
    """The seed's process_content_request, pasted with only its imports changed: its
    first line reads the status right after create_request (no pause), and it completes
    all six stages; the read model then shows every stage completed, once."""
    publisher = KafkaPublisher(side.settings, "seed-worker")
    db = TrackingSession(publisher, ApiStatusReader(side.url, side.token()), producer="worker")
    try:
        creator = RequestTracker(db)
        rid, _ = creator.create_request("s-seed", "Photosynthesis", "light reactions", "10", 5)
        seed_worker.process_content_request(db, rid)
        assert fresh(db, rid)["status"] == "completed"
        assert stages_of(side, rid) == {f"{s}#1": "completed" for s in STAGES}
        assert seed_app.WORLD.emails[-1]["to"] == seed_app.student_email
    finally:
        publisher.close(10)


def test_the_seed_failure_path_records_the_stage_that_failed_and_its_retry_works(
    side: ReadSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Video generation fails: the seed's except block reads the status (fresh now),
    so fail_request records video_generation, not a stale validation; the request has
    no stage left running; the seed's retry_failed_request is accepted (the worker runs
    the stage itself: nothing of the pipeline's was kept)."""
    publisher = KafkaPublisher(side.settings, "seed-worker")
    db = TrackingSession(publisher, ApiStatusReader(side.url, side.token()), producer="worker")
    monkeypatch.setattr(seed_app.WORLD, "fail_video", "render farm on fire")
    try:
        rid, _ = RequestTracker(db).create_request("s-seed", "Volcanoes", "magma", "8", 3)
        with pytest.raises(Exception, match="render farm on fire"):
            seed_worker.process_content_request(db, rid)
        status = fresh(db, rid)
        assert status["status"] == "failed"
        assert status["error_stage"] == "video_generation"
        stages = stages_of(side, rid)
        # The seed's stage 4 catches only CircuitBreakerError, so it never reports this
        # failure: the stage it started would stay "running" for ever. The request's
        # failure closes it.
        assert stages["video_generation#1"] == "abandoned"
        assert "running" not in stages.values()
        assert (
            seed_app.WORLD.error_notifications[-1][2]
            == "Video generation failed: render farm on fire"
        )
        assert seed_worker.retry_failed_request(db, rid) is True
        assert seed_app.WORLD.resumed[-1] == (rid, "video_generation")
        again = wait_for(lambda: visible(side, rid, "queued"), what="queued by the retry")
        assert again["retry_count"] == 1
    finally:
        publisher.close(10)


def test_a_submit_hands_back_a_position_that_reads_its_own_write(side: ReadSide) -> None:
    body = {
        "student_id": "s-ryw",
        "topic": "The water cycle",
        "learning_objective": "evaporation",
        "grade_level": "5",
        "duration_minutes": 3,
    }
    with side.client() as c:
        r = c.post("/api/v1/requests", json=body)
        assert r.status_code == 202, r.text
        position = r.json()["position"]
        assert ":" in position
        got = c.get(r.json()["location"], params={"position": position, "wait_s": 5})
        assert got.status_code == 200, got.text
        assert got.json()["status"] in ("queued", "running")
        # Positions the log never gave: past its end, or a partition it does not have.
        partition = position.split(":")[0]
        for never in (f"{partition}:{10**15}", "99999:0"):
            started = time.monotonic()
            far = c.get(r.json()["location"], params={"position": never, "wait_s": 5})
            assert far.status_code == 409, far.text
            assert far.json()["detail"]["code"] == "position_not_in_log"
            assert time.monotonic() - started < 4
        bad = c.get(r.json()["location"], params={"position": "x:1"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["query", "position"]


# ---------------------------------------------------------------------- stalled
def test_a_stage_whose_worker_died_shows_as_stalled(side: ReadSide, unique: str) -> None:
    """A worker started script_generation and died: after its expected time (2 s here)
    the request is stalled, with the stage, how long and what was expected, in the list
    (status=stalled), in the request's reason, on the dashboard and as a metric."""
    org = f"org-{unique}"
    rid = make_request(side.tracker, org, "s1", outcome="running")  # then nothing, ever
    fine = make_request(side.tracker, org, "s2", outcome="completed")
    side.flush()

    def stalled() -> list[dict[str, Any]]:
        with side.client() as c:
            r = c.get(
                "/api/v1/monitoring/requests",
                params={"status": "stalled", "organization_id": org},
            )
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    items = wait_for(stalled, timeout=30, what="the request to be stalled")
    assert [i["request_id"] for i in items] == [rid]
    assert items[0]["stalled"]["stage"] == "script_generation"
    assert items[0]["stalled"]["expected_s"] == 2
    assert items[0]["stalled"]["for_s"] >= 2
    d = visible(side, rid)
    assert d is not None
    assert d["reason"].startswith("stalled at script_generation: no event for")
    assert visible(side, fine)["stalled"] is None  # type: ignore[index]

    def on_dashboard(role: str, sub: str, org_: str | None) -> bool:
        with side.client(role, sub, org_) as c:
            stalled = c.get("/api/v1/monitoring/dashboard").json()["stalled"]
        return int(stalled.get("script_generation", 0)) >= 1

    # Counted every VIVIDLY_STALLED_REFRESH_S for admins and teachers; a student's own
    # requests are counted on the call.
    wait_for(lambda: on_dashboard("admin", "a", None), timeout=30, what="admin dashboard")
    wait_for(lambda: on_dashboard("teacher", "t", org), timeout=30, what="teacher dashboard")
    assert on_dashboard("student", "s1", org)
    assert not on_dashboard("teacher", "t", f"{org}-elsewhere")

    def metric() -> float:
        total = 0.0
        for line in httpx.get(f"{side.url}/metrics").text.splitlines():
            if line.startswith('vividly_requests_stalled{stage="script_generation"}'):
                total += float(line.rsplit(" ", 1)[1])
        return total

    wait_for(lambda: metric() >= 1, timeout=30, what="the stalled gauge")


def test_every_unfinished_request_has_a_reason(side: ReadSide, unique: str) -> None:
    org = f"org-{unique}"
    rids = [
        make_request(side.tracker, org, f"s{i}", outcome=o)
        for i, o in enumerate(("running", "waiting"))
    ]
    side.flush()
    for rid in rids:
        d = until(side, rid)
        assert d["reason"]


# ---------------------------------------------------------------------- cancel
def test_cancel_stops_a_request_records_who_and_refuses_a_finished_one(
    side: ReadSide, unique: str
) -> None:
    org = f"org-{unique}"
    rid = make_request(side.tracker, org, "s1", outcome="running")
    done = make_request(side.tracker, org, "s2", outcome="completed")
    side.flush()
    wait_for(lambda: visible(side, rid, "running"), what="running")
    wait_for(lambda: visible(side, done, "completed"), what="completed")
    with side.client("teacher", "t-other", "org-elsewhere") as other:
        assert other.post(f"/api/v1/requests/{rid}/cancel").status_code == 404
    with side.client("teacher", "t-1", org) as c:
        r = c.post(f"/api/v1/requests/{rid}/cancel", json={"reason": "wrong topic"})
        assert r.status_code == 202, r.text
        after = c.get(r.json()["location"], params={"position": r.json()["position"]}).json()
        assert after["status"] == "cancelled"
        assert after["cancelled_by"] == "api:teacher:t-1"
        assert after["cancel_reason"] == "wrong topic"
        assert "running" not in stages_of(side, rid).values()
        assert stages_of(side, rid)["script_generation#1"] == "cancelled"
        again = c.post(f"/api/v1/requests/{rid}/cancel")
        assert again.status_code == 409
        assert again.json()["detail"]["code"] == "finished"
        finished = c.post(f"/api/v1/requests/{done}/cancel")
        assert finished.status_code == 409
        assert finished.json()["detail"]["code"] == "finished"
    # The stage services' fence: written before the event.
    import asyncio

    import asyncpg

    async def fenced() -> Any:
        conn = await asyncpg.connect(side.pipeline.database_url)
        try:
            return await conn.fetchrow(
                "SELECT requested_by, reason FROM vividly.cancellations WHERE request_id = $1",
                rid,
            )
        finally:
            await conn.close()

    row = asyncio.run(fenced())
    assert (row["requested_by"], row["reason"]) == ("api:teacher:t-1", "wrong topic")


# ---------------------------------------------------------------------- bulk
def _retried_items(side: ReadSide, rids: set[str], at_least: int) -> list[WorkItem]:
    def enough(msgs: list[Any]) -> bool:
        return sum(1 for m in msgs if (m.key() or b"").decode() in rids) >= at_least

    out = []
    for msg in read_topic(side.settings, RETRIEVED, enough, timeout=30):
        if (msg.key() or b"").decode() in rids:
            item = WorkItem()
            item.ParseFromString(msg.value() or b"")
            out.append(item)
    return out


def test_bulk_retry_dry_run_then_once_scoped_and_idempotent(side: ReadSide, unique: str) -> None:
    org, other = f"org-{unique}", f"org-{unique}-b"
    mine = {make_request(side.tracker, org, f"s{i}", outcome="failed") for i in range(5)}
    theirs = {make_request(side.tracker, other, f"s{i}", outcome="failed") for i in range(3)}
    ok = make_request(side.tracker, org, "s-ok", outcome="completed")
    side.flush()
    for rid in mine | theirs:
        until(side, rid, "failed")
    wait_for(lambda: visible(side, ok, "completed"), what="completed")
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    body = {"filter": {"failed_at": "script_generation", "since": hour_ago}, "dry_run": True}
    key = {"Idempotency-Key": f"bulk-{unique}"}
    with side.client("teacher", "t-1", org) as c:
        dry = c.post("/api/v1/requests/bulk/retry", json=body, headers=key)
        assert dry.status_code == 200, dry.text
        assert dry.json()["matched"] == 5  # only its organization's
        assert dry.json()["eligible"] == 5
        assert {s["request_id"] for s in dry.json()["sample"]} == mine
        missing_key = c.post("/api/v1/requests/bulk/retry", json={**body, "dry_run": False})
        assert missing_key.status_code == 422
        assert missing_key.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        run = c.post("/api/v1/requests/bulk/retry", json={**body, "dry_run": False}, headers=key)
        assert run.status_code == 202, run.text
        result = run.json()
        assert (result["matched"], result["applied"]) == (5, 5)
        again = c.post("/api/v1/requests/bulk/retry", json={**body, "dry_run": False}, headers=key)
        assert again.status_code == 200
        assert again.json()["repeated"] is True
        assert again.json()["bulk_id"] == result["bulk_id"]
        reused = c.post(
            "/api/v1/requests/bulk/retry",
            json={"filter": {"failed_at": "validation"}, "dry_run": False},
            headers=key,
        )
        assert reused.status_code == 409
        assert reused.json()["detail"]["code"] == "idempotency_key_reused"
    items = _retried_items(side, mine | theirs, 5)
    assert sorted(i.request_id for i in items) == sorted(mine)  # once each, none of theirs
    assert {(i.stage, i.attempt) for i in items} == {("script_generation", 2)}
    for rid in mine:
        d = until(side, rid, "queued")
        assert d["retry_count"] == 1
    for rid in theirs:
        assert visible(side, rid, "failed")
    # One event naming who, what filter and how many, and one per request.
    with side.client() as c:
        events = c.get(f"/api/v1/monitoring/requests/{next(iter(mine))}/events").json()["items"]
    retried = [e for e in events if e["event_type"] == "request_retried"]
    assert len(retried) == 1
    assert retried[0]["data"]["bulk_id"] == result["bulk_id"]

    def bulk_events(msgs: list[Any]) -> bool:
        return any((m.key() or b"").decode() == result["bulk_id"] for m in msgs)

    found = [
        decode_envelope(m.value() or b"")
        for m in read_topic(side.settings, TRACKING_TOPIC, bulk_events, timeout=30)
        if (m.key() or b"").decode() == result["bulk_id"]
    ]
    assert len(found) == 1
    ev = found[0].bulk_action_requested
    assert (ev.action, ev.requested_by, ev.count) == ("retry", "api:teacher:t-1", 5)
    assert ev.organization_id == org


def test_bulk_cancel_and_who_may_do_it(side: ReadSide, unique: str) -> None:
    org = f"org-{unique}"
    running = {make_request(side.tracker, org, f"s{i}", outcome="running") for i in range(3)}
    done = make_request(side.tracker, org, "s-done", outcome="completed")
    side.flush()
    for rid in running:
        until(side, rid, "running")
    wait_for(lambda: visible(side, done, "completed"), what="completed")
    with side.client("student", "s0", org) as student:
        r = student.post(
            "/api/v1/requests/bulk/cancel", json={"dry_run": True}, headers={"Idempotency-Key": "k"}
        )
        assert r.status_code == 403
    with side.client("teacher", "t-1", org) as c:
        finished = c.post(
            "/api/v1/requests/bulk/cancel",
            json={"filter": {"status": "completed"}},
            headers={"Idempotency-Key": "k"},
        )
        assert finished.status_code == 409
        body = {"filter": {"organization_id": org}, "dry_run": False, "reason": "term ended"}
        key = {"Idempotency-Key": str(uuid.uuid4())}
        r = c.post("/api/v1/requests/bulk/cancel", json=body, headers=key)
        assert r.status_code == 202, r.text
        assert r.json()["applied"] == 3
        assert r.json()["skipped"] == {"finished": 1}
    for rid in running:
        d = until(side, rid, "cancelled")
        assert d["cancelled_by"] == "api:teacher:t-1"
    assert visible(side, done, "completed")


# ---------------------------------------------------------------------- filters
def test_filters_by_error_words_time_range_and_slowness(side: ReadSide, unique: str) -> None:
    org = f"org-{unique}"
    t = side.tracker
    failed = make_request(t, org, "s1", outcome="failed")  # error "gemini 503"
    slow, _ = t.create_request("s2", "Slow one", "o", "5", 3, organization_id=org)
    t.start_stage(slow, "rag_retrieval")
    t.complete_stage(slow, "rag_retrieval", duration_ms=9000)
    side.flush()
    wait_for(lambda: visible(side, failed, "failed"), what="failed")
    wait_for(lambda: visible(side, slow), what="slow")

    def ids(**params: Any) -> set[str]:
        with side.client() as c:
            r = c.get("/api/v1/monitoring/requests", params={"organization_id": org, **params})
        assert r.status_code == 200, r.text
        return {i["request_id"] for i in r.json()["items"]}

    assert ids(error="gemini") == {failed}
    assert ids(error="nothing-like-it") == set()
    assert ids(slower_than_ms=5000, stage="rag_retrieval") == {slow}
    assert ids(slower_than_ms=5000, stage="validation") == set()
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert ids(since=hour_ago) == {failed, slow}
    assert ids(since=hour_ago, until=datetime.now(UTC).isoformat()) == {failed, slow}
    assert ids(until="2000-01-01T00:00:00Z") == set()
    with side.client() as c:
        bad = c.get("/api/v1/monitoring/requests", params={"since": "2026-13-40"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["query", "since"]
        relative = c.get("/api/v1/monitoring/requests", params={"since": "2h"})
        assert relative.status_code == 422  # the CLI and the dashboard resolve "2h"
        naive = c.get("/api/v1/monitoring/requests", params={"since": "2026-12-02T09:00:00"})
        assert naive.status_code == 422  # a date-time names its offset
        unix = c.get("/api/v1/monitoring/requests", params={"until": "0.5"})
        assert unix.status_code == 422
    assert ids(since=hour_ago, until="2000-01-01T00:00:00Z") == set()  # empty, not an error


# ---------------------------------------------------------------------- last: no projector
def test_with_the_projector_killed_a_positioned_read_says_the_read_model_is_behind(
    side: ReadSide,
) -> None:
    """The projector dies (SIGKILL) after a write: the read cannot reflect it, and says so
    in time (503 read_model_behind; the tracker raises ReadModelBehind), never an old
    answer; once a projector runs again, the same read answers with the write."""
    import signal

    from vividly.tracker import ReadModelBehind

    db = TrackingSession(side.publisher, ApiStatusReader(side.url, side.token()))
    tracker = RequestTracker(db, read_timeout_s=3)
    rid, _ = tracker.create_request("s-dead", "Glaciers", "ice ages", "6", 3)
    assert tracker.get_request_status(rid)["status"] == "queued"
    side.pipeline.stop_service("projector", signal.SIGKILL)
    try:
        tracker.start_stage(rid, "validation")
        position = tracker.position(rid)
        assert position is not None
        with side.client() as c:
            started = time.monotonic()
            r = c.get(
                f"/api/v1/monitoring/requests/{rid}",
                params={"position": str(position), "wait_s": 1},
            )
            assert r.status_code == 503, r.text
            assert r.json()["detail"]["code"] == "read_model_behind"
            assert r.json()["detail"]["wanted"] == str(position)
            assert time.monotonic() - started < 4
        with pytest.raises(ReadModelBehind):
            tracker.get_request_status(rid)
    finally:
        side.pipeline.start_service("projector")
    status = RequestTracker(db, read_timeout_s=30)
    status.log_event(rid, "after", "the projector is back")
    assert status.get_request_status(rid)["current_stage"] == "validation"


def test_the_cli_dry_runs_then_retries_by_filter(
    side: ReadSide, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vividly requests retry --failed-at STAGE --since 2h --dry-run`, then with --yes:
    the same filter, the dry run's count, then one bulk retry; a bad flag is usage."""
    from vividly.platform.cli import main

    org = f"org-{unique}"
    rids = {make_request(side.tracker, org, f"s{i}", outcome="failed") for i in range(3)}
    side.flush()
    for rid in rids:
        until(side, rid, "failed")
    base = ["requests", "retry", "--failed-at", "script_generation", "--since", "2h"]
    base += ["--org", org, "--api", side.url, "--token", side.token(), "--json"]
    assert main([*base, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["dry_run"], dry["matched"], dry["eligible"]) == (True, 3, 3)
    assert main([*base, "--yes", "--reason", "after the Gemini outage"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["applied"] == 3
    assert done["reason"] == "after the Gemini outage"
    for rid in rids:
        assert until(side, rid, "queued")["retry_count"] == 1
    assert (
        main(
            ["requests", "list", "--org", org, "--api", side.url, "--token", side.token(), "--json"]
        )
        == 0
    )
    listed = json.loads(capsys.readouterr().out)
    assert {i["request_id"] for i in listed["items"]} == rids
    assert main([*base, "--since", "yesterday-ish"]) == 2
    assert "--since" in capsys.readouterr().err


def test_both_ways_of_finding_slow_requests_give_the_same_page(
    side: ReadSide, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slower_than_ms` starts from the slow attempts when they are few and walks the
    newest requests when they are many: the same filter answers the same rows either way,
    for a stage and for any stage, within a teacher's scope too."""
    import asyncio

    import asyncpg

    from services.projector.api import views
    from vividly.runtime.auth import Principal

    org = f"org-{unique}"
    t = side.tracker
    made = []
    for i, ms in enumerate((50.0, 7000.0, 9000.0, 120.0, 8000.0)):
        rid, _ = t.create_request(f"s{i}", f"Slow {i}", "o", "5", 3, organization_id=org)
        t.start_stage(rid, "video_generation")
        t.complete_stage(rid, "video_generation", duration_ms=ms)
        made.append(rid)
    side.flush()
    for rid in made:
        until(side, rid)

    async def page(flt: views.RequestFilter, who: Principal) -> list[str]:
        conn = await asyncpg.connect(side.pipeline.database_url)
        try:
            out = await views.list_requests(
                conn, who, flt, limit=20, cursor=None, expected={}, default_expected=900.0
            )
        finally:
            await conn.close()
        return [i["request_id"] for i in out["items"]]

    admin = Principal(role="admin", sub="a", org=None)
    teacher = Principal(role="teacher", sub="t", org=org)
    for flt in (
        views.RequestFilter(slower_than_ms=5000, stage="video_generation", organization_id=org),
        views.RequestFilter(slower_than_ms=5000, organization_id=org),
    ):
        for who in (admin, teacher):
            monkeypatch.setattr(views, "SLOW_RARE", 10**9)  # always "few"
            few = asyncio.run(page(flt, who))
            monkeypatch.setattr(views, "SLOW_RARE", 0)  # always "many"
            many = asyncio.run(page(flt, who))
            assert few == many == [made[4], made[2], made[1]]


def test_a_request_keeps_each_stages_longest_attempt_across_batches(
    side: ReadSide, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's ``slowest_ms`` is merged with what is stored (one batch per step here): a
    slow failed first attempt stays after a quick retry, a later stage adds its own, and
    "slower than" finds the request by either path; a bound above it finds nothing."""
    import asyncio

    import asyncpg

    from services.projector.api import views
    from vividly.runtime.auth import Principal

    org = f"org-{unique}"
    t = side.tracker
    rid, _ = t.create_request("s1", "Slow retry", "o", "5", 3, organization_id=org)
    side.flush()
    until(side, rid)
    t.start_stage(rid, "script_generation")
    t.fail_stage(rid, "script_generation", "gemini 503", is_retryable=True, duration_ms=9100.0)
    side.flush()
    wait_for(lambda: stages_of(side, rid).get("script_generation#1") == "failed", what="fail")
    t.start_stage(rid, "script_generation", attempt=2)
    t.complete_stage(rid, "script_generation", duration_ms=120.0, attempt=2)
    t.complete_stage(rid, "rag_retrieval", duration_ms=40.5)
    side.flush()
    wait_for(lambda: stages_of(side, rid).get("script_generation#2") == "completed", what="retry")

    async def stored() -> Any:
        conn = await asyncpg.connect(side.pipeline.database_url)
        try:
            return await conn.fetchval(
                "SELECT slowest_ms FROM vividly_read.requests WHERE request_id = $1", rid
            )
        finally:
            await conn.close()

    assert json.loads(asyncio.run(stored())) == {"script_generation": 9100.0, "rag_retrieval": 40.5}

    async def page(flt: views.RequestFilter) -> list[str]:
        conn = await asyncpg.connect(side.pipeline.database_url)
        try:
            out = await views.list_requests(
                conn,
                Principal(role="teacher", sub="t", org=org),
                flt,
                limit=20,
                cursor=None,
                expected={},
                default_expected=900.0,
            )
        finally:
            await conn.close()
        return [i["request_id"] for i in out["items"]]

    for rare in (10**9, 0):  # "few" (the attempts' index) and "many" (the rows' walk)
        monkeypatch.setattr(views, "SLOW_RARE", rare)
        assert asyncio.run(page(views.RequestFilter(slower_than_ms=9000))) == [rid]
        assert asyncio.run(
            page(views.RequestFilter(slower_than_ms=9000, stage="script_generation"))
        ) == [rid]
        assert (
            asyncio.run(page(views.RequestFilter(slower_than_ms=9000, stage="rag_retrieval"))) == []
        )
        assert asyncio.run(page(views.RequestFilter(slower_than_ms=9200))) == []
