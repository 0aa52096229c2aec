"""Every tracker call builds exactly the expected event; bad calls raise the documented
errors and publish nothing. No I/O: a FakePublisher records what would be sent."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import orjson
import pytest

from vividly.config import STAGES, TRACKING_TOPIC
from vividly.events import (
    H_CORRELATION,
    H_EVENT_TYPE,
    H_TRACEPARENT,
    H_TYPE,
    SCHEMA_VERSION,
    Envelope,
    Severity,
    WorkItem,
    event_type_name,
)
from vividly.publish import DeliveryFailed
from vividly.testing import FakePublisher
from vividly.tracker import (
    PayloadError,
    Position,
    ReadModelBehind,
    ReadSideUnavailable,
    RequestContext,
    RequestTracker,
    TrackingSession,
    UnknownSeverityError,
    UnknownStageError,
    current_request,
)


@pytest.fixture
def pub() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def tracker(pub: FakePublisher) -> RequestTracker:
    return RequestTracker(pub, producer="unit-test", max_payload_bytes=2048)


def only(pub: FakePublisher) -> Envelope:
    assert len(pub.messages) == 1, [m.header(H_EVENT_TYPE) for m in pub.messages]
    msg = pub.messages[0]
    assert msg.topic == TRACKING_TOPIC
    env = msg.envelope()
    assert msg.key == env.request_id.encode()
    assert msg.header(H_TYPE) == "vividly.v1.Envelope"
    assert msg.header(H_EVENT_TYPE) == event_type_name(env)
    return env


def new_request(tracker: RequestTracker, pub: FakePublisher) -> tuple[str, str]:
    rid, cid = tracker.create_request("stu-1", "Photosynthesis", "explain light", "10", 5)
    pub.messages.clear()
    return rid, cid


def test_create_request_publishes_request_created_with_every_field(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, cid = tracker.create_request(
        student_id="stu-1",
        topic="Photosynthesis",
        learning_objective="Explain the light reactions",
        grade_level="10",
        duration_minutes=5,
        metadata={"source": "web_app", "user_agent": "UA"},
        organization_id="org-9",
        student_email="s@example.edu",
    )
    env = only(pub)
    assert uuid.UUID(rid).version == 7
    assert uuid.UUID(env.event_id).version == 7
    assert env.request_id == rid
    assert env.correlation_id == cid
    assert env.producer == "unit-test"
    assert env.schema_version == SCHEMA_VERSION
    assert env.occurred_at.seconds > 1_700_000_000
    assert event_type_name(env) == "request_created"
    spec = env.request_created.request
    assert (spec.student_id, spec.organization_id, spec.topic) == (
        "stu-1",
        "org-9",
        "Photosynthesis",
    )
    assert spec.learning_objective == "Explain the light reactions"
    assert (spec.grade_level, spec.duration_minutes) == ("10", 5)
    assert spec.student_email == "s@example.edu"
    assert orjson.loads(spec.metadata_json) == {"source": "web_app", "user_agent": "UA"}
    msg = pub.messages[0]
    assert msg.header(H_CORRELATION) == cid
    traceparent = msg.header(H_TRACEPARENT)
    assert traceparent is not None
    assert traceparent.split("-")[1] == cid.replace("-", "")


def test_same_idempotency_key_gives_the_same_ids(tracker: RequestTracker) -> None:
    a = tracker.create_request(
        "s", "Topic", "o", "9", 3, organization_id="o1", idempotency_key="k-1"
    )
    b = tracker.create_request(
        "s", "Topic", "o", "9", 3, organization_id="o1", idempotency_key="k-1"
    )
    c = tracker.create_request(
        "s", "Topic", "o", "9", 3, organization_id="o1", idempotency_key="k-2"
    )
    assert a == b
    assert c[0] != a[0]


def test_start_request(tracker: RequestTracker, pub: FakePublisher) -> None:
    rid, cid = new_request(tracker, pub)
    tracker.start_request(rid)
    env = only(pub)
    assert event_type_name(env) == "request_started"
    assert env.correlation_id == cid


def test_log_event_carries_type_message_stage_severity_and_data(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.log_event(
        rid,
        "cache_hit",
        "Retrieved results from cache",
        stage_name="rag_retrieval",
        severity="warning",
        event_data={"chunks": 5},
    )
    ev = only(pub).event_logged
    assert (ev.event_type, ev.message, ev.stage) == (
        "cache_hit",
        "Retrieved results from cache",
        "rag_retrieval",
    )
    assert ev.severity == Severity.SEVERITY_WARNING
    assert orjson.loads(ev.event_data_json) == {"chunks": 5}


def test_log_event_without_stage_or_data(tracker: RequestTracker, pub: FakePublisher) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.log_event(rid, "request_submitted", "hello")
    ev = only(pub).event_logged
    assert ev.stage == ""
    assert ev.severity == Severity.SEVERITY_INFO
    assert ev.event_data_json == b""


def test_start_and_complete_stage_record_attempt_output_and_duration(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.start_stage(rid, "rag_retrieval")
    tracker.complete_stage(
        rid, "rag_retrieval", output_data={"chunks_retrieved": 5, "sources": ["a", "b"]}
    )
    started, completed = (m.envelope() for m in pub.messages)
    assert started.stage_started.stage == "rag_retrieval"
    assert started.stage_started.attempt == 1
    c = completed.stage_completed
    assert c.stage == "rag_retrieval"
    assert orjson.loads(c.output_json) == {"chunks_retrieved": 5, "sources": ["a", "b"]}
    assert c.duration_ms >= 0.0
    assert started.event_id < completed.event_id  # UUIDv7 orders by time


def test_explicit_duration_and_attempt_win(tracker: RequestTracker, pub: FakePublisher) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.complete_stage(rid, "notification", duration_ms=12.5, attempt=3)
    c = only(pub).stage_completed
    assert (c.duration_ms, c.attempt) == (12.5, 3)


def test_fail_stage_carries_error_retryability_and_the_input_work_item(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, cid = new_request(tracker, pub)
    item = WorkItem(request_id=rid, correlation_id=cid, stage="video_generation", attempt=2)
    token = current_request.set(RequestContext(rid, cid, attempt=2, work_item=item))
    try:
        tracker.fail_stage(
            rid,
            "video_generation",
            "Nano Banana API timeout",
            error_details={"status_code": 504},
            is_retryable=True,
        )
    finally:
        current_request.reset(token)
    f = only(pub).stage_failed
    assert (f.stage, f.attempt, f.error_message) == (
        "video_generation",
        2,
        "Nano Banana API timeout",
    )
    assert orjson.loads(f.error_details_json) == {"status_code": 504}
    assert f.is_retryable is True
    assert f.input == item


def test_schedule_retry(tracker: RequestTracker, pub: FakePublisher) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.schedule_retry(rid, "script_generation", 2, 1_800_000_000.5, "gemini 503")
    r = only(pub).stage_retry_scheduled
    assert (r.stage, r.attempt, r.reason) == ("script_generation", 2, "gemini 503")
    assert r.due_at.ToNanoseconds() == 1_800_000_000_500_000_000


def test_complete_request(tracker: RequestTracker, pub: FakePublisher) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.complete_request(
        rid, video_url="https://cdn/x.mp4", script_text="Hi", thumbnail_url="https://cdn/x.jpg"
    )
    ev = only(pub).request_completed
    assert (ev.video_url, ev.script_text, ev.thumbnail_url) == (
        "https://cdn/x.mp4",
        "Hi",
        "https://cdn/x.jpg",
    )


def test_fail_request(tracker: RequestTracker, pub: FakePublisher) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.fail_request(rid, "boom", "script_generation", {"exception_type": "ValueError"})
    ev = only(pub).request_failed
    assert (ev.error_message, ev.error_stage) == ("boom", "script_generation")
    assert orjson.loads(ev.error_details_json) == {"exception_type": "ValueError"}


def test_fail_request_outside_any_stage(tracker: RequestTracker, pub: FakePublisher) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.fail_request(rid, "boom", "unknown")
    assert only(pub).request_failed.error_stage == ""


def test_track_stage_success_records_started_then_completed_with_output(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, _ = new_request(tracker, pub)
    with tracker.track_stage(rid, "script_generation") as stage:
        stage.output["word_count"] = 750
    kinds = [event_type_name(m.envelope()) for m in pub.messages]
    assert kinds == ["stage_started", "stage_completed"]
    c = pub.messages[1].envelope().stage_completed
    assert orjson.loads(c.output_json) == {"word_count": 750}
    assert c.duration_ms > 0.0


def test_track_stage_failure_records_exception_type_and_traceback_and_reraises(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, _ = new_request(tracker, pub)
    with (
        pytest.raises(ValueError, match="Topic must be at least 3 characters"),
        tracker.track_stage(rid, "validation"),
    ):
        raise ValueError("Topic must be at least 3 characters")
    kinds = [event_type_name(m.envelope()) for m in pub.messages]
    assert kinds == ["stage_started", "stage_failed"]
    f = pub.messages[1].envelope().stage_failed
    details = json.loads(f.error_details_json)
    assert details["exception_type"] == "ValueError"
    assert "raise ValueError" in details["traceback"]
    assert f.error_message == "Topic must be at least 3 characters"
    assert f.is_retryable is False


def test_track_stage_timeouts_are_retryable_by_default(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, _ = new_request(tracker, pub)
    with pytest.raises(TimeoutError), tracker.track_stage(rid, "video_generation"):
        raise TimeoutError("poll timed out")
    assert pub.messages[1].envelope().stage_failed.is_retryable is True


def test_track_stage_works_with_async_with(tracker: RequestTracker, pub: FakePublisher) -> None:
    rid, _ = new_request(tracker, pub)

    async def work() -> None:
        async with tracker.track_stage(rid, "rag_retrieval") as stage:
            await asyncio.sleep(0.001)
            stage.output["chunks"] = 5
        with pytest.raises(ConnectionError):
            async with tracker.track_stage(rid, "script_generation"):
                raise ConnectionError("refused")

    asyncio.run(work())
    kinds = [event_type_name(m.envelope()) for m in pub.messages]
    assert kinds == ["stage_started", "stage_completed", "stage_started", "stage_failed"]
    assert pub.messages[1].envelope().stage_completed.duration_ms >= 1.0
    assert pub.messages[3].envelope().stage_failed.is_retryable is True


def test_attempt_comes_from_the_work_item_being_handled(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    token = current_request.set(RequestContext("r-1", "c-1", attempt=4))
    try:
        tracker.start_stage("r-1", "notification")
    finally:
        current_request.reset(token)
    env = only(pub)
    assert env.stage_started.attempt == 4
    assert env.correlation_id == "c-1"


def test_events_of_one_request_share_its_key_and_correlation(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, cid = tracker.create_request("s", "Cells", "o", "7", 2)
    tracker.start_request(rid)
    tracker.log_event(rid, "x", "y")
    assert {m.key for m in pub.messages} == {rid.encode()}
    assert {m.envelope().correlation_id for m in pub.messages} == {cid}
    ids = [m.envelope().event_id for m in pub.messages]
    assert len(set(ids)) == 3


# ----------------------------------------------------------------------- bad calls
@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.start_stage("r", "rendering"),
        lambda t: t.complete_stage("r", "RAG"),
        lambda t: t.fail_stage("r", "video", "x"),
        lambda t: t.log_event("r", "x", "y", stage_name="scripting"),
        lambda t: t.track_stage("r", "upload"),
        lambda t: t.fail_request("r", "x", "video"),
        lambda t: t.schedule_retry("r", "email", 2, 0.0, "x"),
    ],
)
def test_unknown_stage_is_rejected_naming_the_six(
    call: object, pub: FakePublisher, tracker: RequestTracker
) -> None:
    with pytest.raises(UnknownStageError) as info:
        call(tracker)  # type: ignore[operator]
    for stage in STAGES:
        assert stage in str(info.value)
    assert pub.messages == []


def test_unknown_severity_is_rejected(tracker: RequestTracker, pub: FakePublisher) -> None:
    with pytest.raises(UnknownSeverityError, match="debug, info, warning, error, critical"):
        tracker.log_event("r", "x", "y", severity="fatal")
    assert pub.messages == []


def test_unserialisable_data_is_rejected(tracker: RequestTracker, pub: FakePublisher) -> None:
    with pytest.raises(PayloadError, match="event_data is not JSON-serialisable"):
        tracker.log_event("r", "x", "y", event_data={"when": object()})
    with pytest.raises(PayloadError, match="output_data is not JSON-serialisable"):
        tracker.complete_stage("r", "validation", output_data={"s": {1, 2}})
    assert pub.messages == []


def test_data_over_the_limit_is_rejected_with_the_limit(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    with pytest.raises(PayloadError, match="the limit is 2048"):
        tracker.complete_stage("r", "validation", output_data={"blob": "x" * 3000})
    with pytest.raises(PayloadError, match="the limit is 2048"):
        tracker.fail_stage("r", "validation", "e", error_details={"tb": "x" * 3000})
    assert pub.messages == []


def test_data_that_is_not_an_object_is_rejected(tracker: RequestTracker) -> None:
    with pytest.raises(PayloadError, match="must be a mapping"):
        tracker.log_event("r", "x", "y", event_data=[1, 2])  # type: ignore[arg-type]


def test_empty_request_id_is_rejected(tracker: RequestTracker) -> None:
    with pytest.raises(ValueError, match="request_id is required"):
        tracker.start_request("")


def test_read_side_calls_without_a_reader_say_what_is_missing(tracker: RequestTracker) -> None:
    with pytest.raises(ReadSideUnavailable, match="status_reader"):
        tracker.get_request_status("r")
    with pytest.raises(ReadSideUnavailable, match="status_reader"):
        tracker.retry_stage("r", "script_generation")


def test_read_side_calls_go_to_the_reader(pub: FakePublisher) -> None:
    class Reader:
        def __init__(self) -> None:
            self.retries: list[tuple[str, str, str, Position | None]] = []

        def get_request_status(
            self, request_id: str, position: Position | None = None, wait_s: float = 5.0
        ) -> dict[str, object] | None:
            return (
                {"status": "failed", "error_stage": "video_generation"}
                if request_id == "r"
                else None
            )

        def retry_stage(
            self,
            request_id: str,
            stage: str,
            requested_by: str,
            position: Position | None = None,
            wait_s: float = 5.0,
        ) -> bool:
            self.retries.append((request_id, stage, requested_by, position))
            return True

    reader = Reader()
    tracker = RequestTracker(pub, status_reader=reader)
    assert tracker.get_request_status("r")["error_stage"] == "video_generation"
    with pytest.raises(KeyError):
        tracker.get_request_status("missing")
    assert tracker.retry_stage("r", "video_generation", requested_by="admin-1") is True
    # Nothing was published for "r" by this tracker: no position to wait for.
    assert reader.retries == [("r", "video_generation", "admin-1", None)]


class LaggingReadModel:
    """A read model over the fake log that has folded only the first ``folded`` messages
    of its topic, as a projector behind would: it answers a positioned read only once it
    has folded past the position, and folds one more message each time it is asked."""

    def __init__(self, pub: FakePublisher, topic: str = TRACKING_TOPIC) -> None:
        self.pub = pub
        self.topic = topic
        self.folded = 0
        self.waits: list[str] = []

    def _fold(self) -> None:
        self.folded += 1

    def _state(self, request_id: str) -> dict[str, object] | None:
        mine = [m.envelope() for m in self.pub.messages if m.topic == self.topic][: self.folded]
        state: dict[str, object] | None = None
        for env in mine:
            if env.request_id != request_id:
                continue
            kind = env.WhichOneof("event")
            if kind == "request_created":
                state = {"status": "queued", "current_stage": None, "topic": "t"}
            elif state is not None and kind == "stage_started":
                state.update(status="running", current_stage=env.stage_started.stage)
            elif state is not None and kind == "stage_failed":
                state["current_stage"] = env.stage_failed.stage
        return state

    def get_request_status(
        self, request_id: str, position: Position | None = None, wait_s: float = 5.0
    ) -> dict[str, object] | None:
        if position is not None:
            self.waits.append(str(position))
            for _ in range(1000):  # the API's bounded wait, in steps
                if self.folded > position.offset:
                    break
                self._fold()
            else:
                raise ReadModelBehind("behind", position, self.folded)
        return self._state(request_id)

    def retry_stage(
        self,
        request_id: str,
        stage: str,
        requested_by: str,
        position: Position | None = None,
        wait_s: float = 5.0,
    ) -> bool:
        return True


def test_get_request_status_reflects_the_trackers_own_writes(pub: FakePublisher) -> None:
    """The seed's first line: status right after create_request, with a read model that
    has folded nothing yet, is the request (not KeyError), and after a stage starts it
    shows that stage: the tracker hands the reader where its last event landed."""
    model = LaggingReadModel(pub)
    tracker = RequestTracker(pub, status_reader=model)
    other, _ = tracker.create_request("s0", "Other topic", "o", "5", 3)
    rid, _ = tracker.create_request("s1", "Photosynthesis", "o", "5", 3)
    assert tracker.get_request_status(rid)["status"] == "queued"
    assert model.waits == ["0:1"]  # the second message on the topic
    tracker.start_stage(rid, "validation")
    assert tracker.get_request_status(rid)["current_stage"] == "validation"
    assert tracker.position(rid) == Position(TRACKING_TOPIC, 0, 2)
    assert tracker.position(other) == Position(TRACKING_TOPIC, 0, 0)
    assert tracker.position("never-published") is None


def test_a_lost_event_is_reported_not_read_around() -> None:
    pub = FakePublisher(fail_topics=frozenset({TRACKING_TOPIC}))
    tracker = RequestTracker(pub, status_reader=LaggingReadModel(pub))
    rid, _ = tracker.create_request("s1", "Photosynthesis", "o", "5", 3)
    with pytest.raises(DeliveryFailed, match="not written to the log"):
        tracker.get_request_status(rid)


def test_a_read_model_that_cannot_catch_up_raises_read_model_behind(pub: FakePublisher) -> None:
    class Stuck(LaggingReadModel):
        def _fold(self) -> None:  # never folds
            pass

    tracker = RequestTracker(pub, status_reader=Stuck(pub))
    rid, _ = tracker.create_request("s1", "Photosynthesis", "o", "5", 3)
    with pytest.raises(ReadModelBehind) as caught:
        tracker.get_request_status(rid)
    assert caught.value.wanted == Position(TRACKING_TOPIC, 0, 0)
    assert isinstance(caught.value, TimeoutError)


def test_an_unacknowledged_write_times_out_as_read_model_behind() -> None:
    class Silent(FakePublisher):
        """Queues, never reports a delivery (a broker that does not answer)."""

        def publish(self, topic, key, value, headers, on_delivery=None):  # type: ignore[no-untyped-def]
            return super().publish(topic, key, value, headers, None)

    pub = Silent()
    tracker = RequestTracker(pub, status_reader=LaggingReadModel(pub), read_timeout_s=0.2)
    rid, _ = tracker.create_request("s1", "Photosynthesis", "o", "5", 3)
    started = time.monotonic()
    with pytest.raises(ReadModelBehind, match="not acknowledged"):
        tracker.get_request_status(rid)
    assert time.monotonic() - started < 5


def test_fail_request_without_a_stage_records_the_stage_this_tracker_last_started(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.start_stage(rid, "validation")
    tracker.complete_stage(rid, "validation")
    tracker.start_stage(rid, "video_generation")
    pub.messages.clear()
    tracker.fail_request(rid, "boom", error_stage="unknown")
    tracker.fail_request(rid, "boom")
    assert [e.request_failed.error_stage for e in pub.envelopes()] == ["video_generation"] * 2
    other, _ = new_request(tracker, pub)
    pub.messages.clear()
    tracker.fail_request(other, "never started")  # nothing started: no stage
    assert only(pub).request_failed.error_stage == ""
    tracker.fail_request(rid, "explicit", error_stage="validation")
    assert pub.envelopes()[-1].request_failed.error_stage == "validation"


def test_a_tracking_session_hands_the_tracker_its_publisher_and_reader(
    pub: FakePublisher,
) -> None:
    model = LaggingReadModel(pub)
    tracker = RequestTracker(TrackingSession(pub, model, producer="worker"))
    rid, _ = tracker.create_request("s1", "Photosynthesis", "o", "5", 3)
    assert tracker.get_request_status(rid)["status"] == "queued"
    assert pub.envelopes()[0].producer == "worker"


def test_mark_waiting_records_reason_detail_and_until(
    tracker: RequestTracker, pub: FakePublisher
) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.mark_waiting(rid, "video_generation", "circuit_open", "nano_banana open", 1.9e9)
    ev = only(pub).request_waiting
    assert (ev.stage, ev.reason, ev.detail) == (
        "video_generation",
        "circuit_open",
        "nano_banana open",
    )
    assert ev.until.seconds == 1_900_000_000


def test_request_retried_names_who_asked(tracker: RequestTracker, pub: FakePublisher) -> None:
    rid, _ = new_request(tracker, pub)
    tracker.request_retried(rid, "video_generation", "admin-1", 2)
    ev = only(pub).request_retried
    assert (ev.stage, ev.requested_by, ev.attempt) == ("video_generation", "admin-1", 2)


def test_breaker_events_are_keyed_by_the_breaker(pub: FakePublisher) -> None:
    RequestTracker(pub, producer="video").breaker_state_changed(
        "nano_banana", "closed", "open", fail_counter=5, total_calls=40, total_failures=7
    )
    msg = pub.messages[0]
    assert msg.key == b"nano_banana"
    ev = msg.envelope().breaker_state_changed
    assert (ev.breaker, ev.old_state, ev.new_state) == ("nano_banana", "closed", "open")
    assert (ev.fail_counter, ev.total_calls, ev.total_failures) == (5, 40, 7)
    assert msg.envelope().request_id == ""


def test_nan_and_infinity_are_refused_before_anything_is_published() -> None:
    import math

    from vividly.testing import FakePublisher
    from vividly.tracker import PayloadError, RequestTracker

    pub = FakePublisher()
    t = RequestTracker(pub)
    with pytest.raises(PayloadError, match="duration_ms"):
        t.complete_stage("r1", "validation", {"ok": True}, duration_ms=float("nan"))
    with pytest.raises(PayloadError, match="duration_ms"):
        t.fail_stage("r1", "validation", "x", duration_ms=math.inf)
    with pytest.raises(PayloadError, match="NaN or infinity"):
        t.complete_stage("r1", "validation", {"score": [1.0, {"x": -math.inf}]})
    with pytest.raises(PayloadError, match="NaN or infinity"):
        t.log_event("r1", "perf", "m", event_data={"v": math.nan})
    assert pub.messages == []
    t.complete_stage("r1", "validation", {"none": None}, duration_ms=3.0)  # a real null
    assert len(pub.messages) == 1


@pytest.mark.parametrize("field", ["topic", "student_id", "organization_id", "student_email"])
def test_a_nul_character_is_refused_before_anything_is_published(
    pub: FakePublisher, field: str
) -> None:
    t = RequestTracker(pub, producer="t")
    spec: dict[str, object] = {
        "student_id": "s",
        "topic": "Tides",
        "learning_objective": "o",
        "grade_level": "5",
        "duration_minutes": 3,
        "organization_id": "org",
        "student_email": "a@b.c",
    }
    spec[field] = str(spec[field]) + "\x00"
    with pytest.raises(PayloadError, match=field):
        t.create_request(**spec)  # type: ignore[arg-type]
    assert pub.messages == []


def test_a_publish_that_raises_leaves_nothing_to_wait_for() -> None:
    """The queue refused the event (PublishError): the call fails, and a later read does
    not wait for an event that was never sent."""
    from vividly.publish import PublishError

    class Full(FakePublisher):
        refuse = False

        def publish(self, topic, key, value, headers, on_delivery=None):  # type: ignore[no-untyped-def]
            if self.refuse:
                raise PublishError("producer queue full")
            return super().publish(topic, key, value, headers, on_delivery)

    pub = Full()
    tracker = RequestTracker(pub, status_reader=LaggingReadModel(pub), read_timeout_s=0.5)
    rid, _ = tracker.create_request("s1", "Photosynthesis", "o", "5", 3)
    pub.refuse = True
    with pytest.raises(PublishError):
        tracker.start_stage(rid, "validation")
    assert tracker.position(rid) == Position(TRACKING_TOPIC, 0, 0)
    assert tracker.get_request_status(rid)["status"] == "queued"
