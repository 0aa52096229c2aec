"""Every caller confined to what it may see and write, and hostile input answered with a
clear 4xx: against the real API process, projector, broker and Postgres."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import BrokerPool
from tests.integration.kafka_util import read_topic
from tests.integration.test_api import SSE
from tests.readside import SECRET, ReadSide, make_request, read_side, side, visible, wait_for
from vividly.config import SUBMITTED
from vividly.events import WorkItem
from vividly.runtime.auth import mint

pytestmark = pytest.mark.integration

__all__ = ["side"]

BODY = {
    "topic": "The water cycle",
    "learning_objective": "evaporation and condensation",
    "grade_level": "5",
    "duration_minutes": 3,
}


def submitted(side: ReadSide, rid: str) -> WorkItem:
    """The work item the API put on requests.submitted for ``rid``."""

    def has(msgs: list[Any]) -> bool:
        return any(m.key() == rid.encode() for m in msgs)

    for msg in read_topic(side.settings, SUBMITTED, has, timeout=30):
        if msg.key() == rid.encode():
            item = WorkItem()
            item.ParseFromString(msg.value() or b"")
            return item
    raise AssertionError(f"no work item for {rid}")


def refused_field(r: httpx.Response) -> list[Any]:
    assert r.status_code == 403, r.text
    loc: list[Any] = r.json()["detail"][0]["loc"]
    return loc


# ---------------------------------------------------------------------- who may write what
def test_a_student_submits_only_as_itself_into_its_organization_and_mails_its_token_address(
    side: ReadSide, unique: str
) -> None:
    org_a, org_b = f"a-{unique}", f"b-{unique}"
    email = f"ada-{unique}@school-a.example"
    student = httpx.Client(
        base_url=side.url,
        headers={
            "Authorization": "Bearer "
            + mint(SECRET, role="student", sub=f"s-{unique}", org=org_a, email=email)
        },
        timeout=15,
    )
    with student:
        r = student.post("/api/v1/requests", json={**BODY, "organization_id": org_b})
        assert refused_field(r) == ["body", "organization_id"]
        r = student.post("/api/v1/requests", json={**BODY, "student_email": "x@evil.example"})
        assert refused_field(r) == ["body", "student_email"]
        r = student.post("/api/v1/requests", json={**BODY, "student_id": "someone-else"})
        assert refused_field(r) == ["body", "student_id"]
        own = student.post("/api/v1/requests", json={**BODY, "organization_id": org_a})
        assert own.status_code == 202, own.text
        assert own.json()["visible"] is True
        rid = own.json()["request_id"]
    item = submitted(side, rid)
    assert item.request.organization_id == org_a
    assert item.request.student_id == f"s-{unique}"
    assert item.request.student_email == email
    # Nothing was written into the other school.
    with side.client("teacher", "t-b", org_b) as teacher_b:
        listed = teacher_b.get("/api/v1/monitoring/requests", params={"status": "all"}).json()
        assert listed["items"] == []
    with side.client("teacher", "t-a", org_a) as teacher_a:
        assert teacher_a.get(f"/api/v1/monitoring/requests/{rid}").status_code == 200


def test_a_teacher_submits_only_into_its_organization_and_cannot_pick_the_recipient(
    side: ReadSide, unique: str
) -> None:
    org_a = f"a-{unique}"
    with side.client("teacher", "t-a", org_a) as teacher:
        body = {**BODY, "student_id": f"s-{unique}"}
        r = teacher.post("/api/v1/requests", json={**body, "organization_id": f"b-{unique}"})
        assert refused_field(r) == ["body", "organization_id"]
        r = teacher.post("/api/v1/requests", json={**body, "student_email": "x@evil.example"})
        assert refused_field(r) == ["body", "student_email"]
        r = teacher.post("/api/v1/requests", json=BODY)  # whose request is it?
        assert refused_field(r) == ["body", "student_id"]
        ok = teacher.post("/api/v1/requests", json=body)
        assert ok.status_code == 202, ok.text
    item = submitted(side, ok.json()["request_id"])
    assert item.request.organization_id == org_a
    assert item.request.student_email == ""  # notify mails the school's directory address


def test_a_trusted_caller_names_the_recipient(side: ReadSide, unique: str) -> None:
    with side.client("service", "web-app") as svc:
        ok = svc.post(
            "/api/v1/requests",
            json={
                **BODY,
                "student_id": f"s-{unique}",
                "organization_id": f"a-{unique}",
                "student_email": f"s-{unique}@school.example",
            },
        )
        assert ok.status_code == 202, ok.text
    assert submitted(side, ok.json()["request_id"]).request.student_email == (
        f"s-{unique}@school.example"
    )


def test_the_same_student_id_in_another_school_sees_none_of_it(side: ReadSide, unique: str) -> None:
    sid = f"1001-{unique}"
    rid = make_request(side.tracker, f"a-{unique}", sid)
    side.flush()
    wait_for(lambda: visible(side, rid, "completed"), what="fold")
    with side.client("student", sid, f"b-{unique}") as other:
        assert (
            other.get("/api/v1/monitoring/requests", params={"status": "all"}).json()["items"] == []
        )
        assert other.get(f"/api/v1/monitoring/requests/{rid}").status_code == 404
        assert other.get(f"/api/v1/monitoring/requests/{rid}/events").status_code == 404
        dash = other.get("/api/v1/monitoring/dashboard").json()
        assert dash["total"] == 0
        assert dash["last_hour"]["completed"] == 0
        assert all(s["started"] == 0 for s in dash["last_hour"]["stages"])
        hours = other.get("/api/v1/monitoring/metrics", params={"hours": 2}).json()["buckets"]
        assert sum(h["requests"]["created"] for h in hours) == 0
    with side.client("student", sid, f"a-{unique}") as owner:
        assert owner.get(f"/api/v1/monitoring/requests/{rid}").status_code == 200
        assert owner.get("/api/v1/monitoring/dashboard").json()["total"] == 1


# ---------------------------------------------------------------------- aggregates
def test_every_figure_is_the_callers_own(side: ReadSide, unique: str) -> None:
    org_a, org_b = f"a-{unique}", f"b-{unique}"
    mine = [make_request(side.tracker, org_a, f"s1-{unique}")]
    mine += [make_request(side.tracker, org_a, f"s2-{unique}") for _ in range(2)]
    theirs = [make_request(side.tracker, org_b, f"s3-{unique}", outcome="failed") for _ in range(2)]
    theirs.append(make_request(side.tracker, org_b, f"s3-{unique}"))
    side.flush()
    wait_for(
        lambda: (
            all(visible(side, r) for r in mine + theirs)
            and all(visible(side, r, "failed") for r in theirs[:2])
        ),
        what="fold",
    )

    def figures(client: httpx.Client) -> dict[str, Any]:
        dash = client.get("/api/v1/monitoring/dashboard").json()
        hours = client.get("/api/v1/monitoring/metrics", params={"hours": 2}).json()["buckets"]
        stages = {s["stage"]: s for s in dash["last_hour"]["stages"]}
        hourly = [h["stages"].get("validation", {}).get("started", 0) for h in hours]
        return {
            "counts": {k: v for k, v in dash["counts"].items() if v},
            "last_hour": (dash["last_hour"]["completed"], dash["last_hour"]["failed"]),
            "validation_started": stages["validation"]["started"],
            "script_failed": stages["script_generation"]["failed"],
            "created": sum(h["requests"]["created"] for h in hours),
            "hourly_validation_started": sum(hourly),
            "breakers": dash["breakers"],
        }

    with side.client("teacher", "t-a", org_a) as teacher_a:
        a = figures(teacher_a)
    assert a["counts"] == {"completed": 3}
    assert a["last_hour"] == (3, 0)
    assert (a["validation_started"], a["script_failed"]) == (3, 0)
    assert (a["created"], a["hourly_validation_started"]) == (3, 3)
    with side.client("teacher", "t-b", org_b) as teacher_b:
        b = figures(teacher_b)
    assert b["counts"] == {"completed": 1, "failed": 2}
    assert b["last_hour"] == (1, 2)
    assert (b["validation_started"], b["script_failed"]) == (3, 2)
    assert b["created"] == 3
    with side.client("student", f"s1-{unique}", org_a) as student:
        s = figures(student)
    assert s["counts"] == {"completed": 1}
    assert s["last_hour"] == (1, 0)
    assert (s["validation_started"], s["created"], s["hourly_validation_started"]) == (1, 1, 1)
    with side.client() as admin:
        everyone = figures(admin)
    assert everyone["last_hour"][0] >= 4
    assert everyone["validation_started"] >= 6
    assert everyone["created"] >= 6
    # Breaker counters are every school's traffic: an admin's only.
    for caller in (a, b, s):
        for br in caller["breakers"]:
            assert set(br) == {"name", "state", "opened_at", "changed_at"}


def test_the_streams_first_frame_says_nothing_of_other_schools(side: ReadSide, unique: str) -> None:
    org_a, org_b = f"a-{unique}", f"b-{unique}"
    # Plenty of other schools' events before it connects.
    for _ in range(3):
        make_request(side.tracker, org_b, f"x-{unique}")
    side.flush()
    sse = SSE(f"{side.url}/api/v1/monitoring/stream", side.token("teacher", "t", org_a))
    try:
        wait_for(lambda: sse.comments, what="the first frame")
        assert sse.comments[0] == ": connected", sse.comments
        rid_b = make_request(side.tracker, org_b, f"x-{unique}")
        rid_a = make_request(side.tracker, org_a, f"y-{unique}")
        side.flush()
        wait_for(lambda: any(f[2]["request_id"] == rid_a for f in sse.frames), what="own frames")
        assert {f[2]["request_id"] for f in sse.frames if f[2]["request_id"]} == {rid_a}
        assert rid_b not in str(sse.frames)
    finally:
        sse.close()


# ---------------------------------------------------------------------- hostile input
def raw_http(url: str, head: str, body: bytes = b"", read_s: float = 10.0) -> bytes:
    """Send exactly these bytes and return what the server answers (it may close early)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=read_s) as s:
        s.sendall(head.encode() + body)
        got = b""
        try:  # the server answers and closes (connection: close): read to the end
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return got


def test_a_body_over_the_limit_is_413_before_anything_reads_it(side: ReadSide) -> None:
    auth = f"Authorization: Bearer {side.token()}\r\n"
    host = urlsplit(side.url).netloc
    declared = raw_http(
        side.url,
        f"POST /api/v1/requests HTTP/1.1\r\nHost: {host}\r\n{auth}"
        "Content-Type: application/json\r\nContent-Length: 20000000\r\n\r\n",
        b"",  # the body never comes: a 413 must not wait for it
    )
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b"request body larger than" in declared
    chunk = b"x" * 32768
    chunked = raw_http(
        side.url,
        f"POST /api/v1/requests HTTP/1.1\r\nHost: {host}\r\n{auth}"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        # Three chunks: the third passes the limit, and nothing is left unread.
        (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 3,
    )
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    with side.client() as c:  # and it is still serving
        assert c.get("/api/v1/monitoring/dashboard").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "loc"),
    [
        (
            "POST",
            "/api/v1/requests",
            {"json": {**BODY, "metadata": {"n": 2**70}}},
            422,
            ["body", "metadata", "n"],
        ),
        (
            "POST",
            "/api/v1/requests",
            {
                "content": b'{"topic": "Tides", "learning_objective": "o", "grade_level": "5",'
                b' "duration_minutes": 3, "metadata": {"n": 1e400, "m": NaN}}',
                "headers": {"Content-Type": "application/json"},
            },
            422,
            None,
        ),
        (
            "POST",
            "/api/v1/requests",
            {"json": {**BODY, "metadata": {"deep": {"a": [1]}}}},
            422,
            ["body", "metadata", "deep"],
        ),
        (
            "POST",
            "/api/v1/requests",
            {"json": {**BODY, "metadata": {f"k{i}": i for i in range(40)}}},
            422,
            ["body", "metadata"],
        ),
        (
            "POST",
            "/api/v1/requests",
            {"json": {**BODY, "topic": "Tides\x00"}},
            422,
            ["body", "topic"],
        ),
        (
            "POST",
            "/api/v1/requests",
            {"json": {**BODY, "learning_objective": "x" * 1001}},
            422,
            ["body", "learning_objective"],
        ),
        (
            "POST",
            "/api/v1/requests",
            {"json": {**BODY, "grade_level": "9" * 5000}},
            422,
            ["body", "grade_level"],
        ),
        (
            "POST",
            "/api/v1/requests",
            {"json": {**BODY, "duration_minutes": "5"}},
            422,
            ["body", "duration_minutes"],
        ),
        (
            "POST",
            "/api/v1/requests",
            {"json": {**BODY, "duration_minutes": 5.5}},
            422,
            ["body", "duration_minutes"],
        ),
        (
            "POST",
            "/api/v1/requests",
            {"json": {**BODY, "studentEmail": "x@y.z"}},
            422,
            ["body", "studentEmail"],
        ),
        (
            "POST",
            "/api/v1/requests",
            {"content": b"[" * 30000, "headers": {"Content-Type": "application/json"}},
            None,
            None,
        ),
        (
            "POST",
            "/api/v1/requests",
            {"content": b"\xff\xfe{", "headers": {"Content-Type": "application/json"}},
            400,
            None,
        ),
        (
            "GET",
            "/api/v1/monitoring/requests/x/events",
            {"params": {"after": "9" * 20}},
            422,
            ["query", "after"],
        ),
        (
            "GET",
            "/api/v1/monitoring/requests",
            {"params": {"cursor": "nope"}},
            422,
            ["query", "cursor"],
        ),
        (
            "GET",
            "/api/v1/monitoring/requests",
            {"params": {"cursor": "99999999999999999_x"}},
            200,
            None,
        ),
        ("GET", "/api/v1/monitoring/requests", {"params": {"q": "a\x00b"}}, 422, ["query", "q"]),
        (
            "GET",
            "/api/v1/monitoring/requests",
            {"params": {"student_id": "\x00"}},
            422,
            ["query", "student_id"],
        ),
        (
            "GET",
            "/api/v1/monitoring/requests",
            {"params": {"limit": 10**30}},
            422,
            ["query", "limit"],
        ),
        ("GET", "/api/v1/monitoring/metrics", {"params": {"hours": -1}}, 422, ["query", "hours"]),
        ("GET", "/api/v1/monitoring/requests/" + "r" * 500, {}, 422, ["path", "request_id"]),
        (
            "GET",
            "/api/v1/monitoring/stream",
            {"headers": {"Last-Event-ID": "9" * 19}},
            422,
            ["header", "Last-Event-ID"],
        ),
        (
            "GET",
            "/api/v1/monitoring/stream",
            {"headers": {"Last-Event-ID": "abc"}},
            422,
            ["header", "Last-Event-ID"],
        ),
        ("POST", "/api/v1/requests/x/retry", {"json": {"stage": "nope"}}, 422, ["body", "stage"]),
    ],
)
def test_hostile_input_gets_a_4xx_naming_the_field(
    side: ReadSide,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int | None,
    loc: list[Any] | None,
) -> None:
    with side.client() as admin:
        r = admin.request(method, path, **kwargs)
    assert r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    if status is not None:
        assert r.status_code == status, r.text[:500]
    else:
        assert 400 <= r.status_code < 500, r.text[:500]
    if loc is not None:
        assert r.json()["detail"][0]["loc"][: len(loc)] == loc, r.text[:800]


def test_responses_carry_csp_frame_ancestors_and_nosniff(side: ReadSide) -> None:
    with side.client() as admin:
        for r in (
            admin.get("/api/v1/monitoring/dashboard"),
            admin.get("/api/v1/monitoring/requests/nope"),
            httpx.get(f"{side.url}/api/v1/monitoring/dashboard"),  # 401
            httpx.get(f"{side.url}/healthz"),
        ):
            assert r.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert "default-src 'none'" in r.headers["content-security-policy"]
    page = httpx.get(f"{side.url}/monitoring/dashboard")
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'sha256-" in policy
    assert "unsafe-inline" not in policy
    assert 'style="' not in page.text  # every style is in the hashed <style> block


# ---------------------------------------------------------------------- streams under pressure
@pytest.fixture(scope="module")
def tight(
    broker_pool: BrokerPool, postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReadSide]:
    env = {
        "VIVIDLY_SSE_MAX_CLIENTS": "3",
        "VIVIDLY_SSE_SEND_TIMEOUT_S": "1",
        "VIVIDLY_SSE_MAX_CLIENT_BYTES": str(256 * 1024 * 1024),
    }
    with read_side(broker_pool, postgres, tmp_path_factory.mktemp("tight"), env) as rs:
        yield rs


def _metric(side: ReadSide, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{side.url}/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_clients_beyond_the_cap_get_429_and_a_freed_place_is_taken_again(tight: ReadSide) -> None:
    url = f"{tight.url}/api/v1/monitoring/stream"
    clients = [SSE(url, tight.token()) for _ in range(3)]
    try:
        assert [c.status for c in clients] == [200, 200, 200]
        r = httpx.get(url, headers={"Authorization": f"Bearer {tight.token()}"}, timeout=10)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "5"
        clients.pop().close()

        # The closed one is noticed at its next heartbeat (1 s); then a place is free.
        def connect() -> SSE | None:
            c = SSE(url, tight.token())
            if c.status == 200:
                return c
            c.close()
            return None

        again = wait_for(connect, what="a freed place")
        clients.append(again)
    finally:
        for c in clients:
            c.close()


def test_a_client_that_stops_reading_is_closed_and_resumes_without_a_gap(
    tight: ReadSide, unique: str, tmp_path: Path
) -> None:
    rid, _ = tight.tracker.create_request(
        f"s-{unique}",
        "Tides and the moon",
        "why two tides a day",
        "7",
        3,
        organization_id=f"o-{unique}",
    )
    tight.flush()
    # A fresh read side folds the session's whole log first: give it time.
    wait_for(lambda: visible(tight, rid), timeout=180, what="fold")
    parts = urlsplit(tight.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
    sock.connect((parts.hostname, parts.port))
    sock.sendall(
        f"GET /api/v1/monitoring/stream?request_id={rid} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {tight.token()}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    wait_for(lambda: _metric(tight, "vividly_sse_clients") >= 1, what="the client connected")
    stuck_before = _metric(tight, 'vividly_sse_closed_total{reason="stuck"}')
    blob = "x" * 60_000  # under the tracker's 64 KiB payload limit
    for i in range(200):  # ~12 MB of frames: more than every buffer on the way holds
        tight.tracker.log_event(rid, "progress", f"chunk {i}", event_data={"i": i, "blob": blob})
    tight.flush()
    wait_for(
        lambda: _metric(tight, 'vividly_sse_closed_total{reason="stuck"}') > stuck_before,
        timeout=60,
        what="the stuck client closed",
    )
    wait_for(lambda: _metric(tight, "vividly_sse_clients") == 0, what="its place freed")
    # Now read what did arrive: whole frames up to some id, then the end.
    sock.settimeout(10)
    got = b""
    while chunk := sock.recv(1 << 20):
        got += chunk
    sock.close()
    frames = [f for f in got.split(b"\n\n") if b"\nid: " in b"\n" + f or f.startswith(b"id: ")]
    ids = []
    for f in frames:
        lines = f.split(b"\n")
        idl = [ln for ln in lines if ln.startswith(b"id: ")]
        if idl and any(ln.startswith(b"data: ") for ln in lines):
            ids.append(int(idl[0][4:]))
    whole = ids[:-1] if got and not got.endswith(b"\n\n") else ids
    last = whole[-1] if whole else 0
    # Resume from the last whole frame: every later event, once.
    with tight.client() as admin:
        timeline = admin.get(
            f"/api/v1/monitoring/requests/{rid}/events", params={"limit": 1000}
        ).json()["items"]
    expected = [e["seq"] for e in timeline if e["seq"] > last]
    assert expected, "the client saw everything: the test did not fill the buffers"
    resumed = SSE(
        f"{tight.url}/api/v1/monitoring/stream", tight.token(), {"request_id": rid}, last_id=last
    )
    try:
        wait_for(lambda: len(resumed.frames) >= len(expected), timeout=30, what="the rest")
        assert [f[0] for f in resumed.frames][: len(expected)] == expected
    finally:
        resumed.close()
    assert sorted(set(whole)) == whole  # in order, no frame twice
