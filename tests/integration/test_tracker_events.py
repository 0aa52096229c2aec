"""Every tracker call's event arrives on the real broker, decoded, in order per request."""

from __future__ import annotations

from collections import defaultdict

import orjson
import pytest

from tests.conftest import Broker
from tests.integration.kafka_util import headers_of, make_topics, read_topic
from vividly.events import H_CORRELATION, H_TRACEPARENT, WorkItem, decode_envelope, event_type_name
from vividly.publish import KafkaPublisher
from vividly.tracker import RequestTracker

pytestmark = pytest.mark.integration

FULL_RUN = [
    "request_created",
    "request_started",
    "event_logged",
    "stage_started",
    "stage_completed",  # validation
    "stage_started",
    "event_logged",
    "stage_completed",  # rag_retrieval
    "stage_started",
    "stage_failed",
    "stage_retry_scheduled",  # script_generation attempt 1
    "stage_started",
    "stage_completed",  # script_generation attempt 2
    "stage_started",
    "stage_failed",  # video_generation
    "request_failed",
    "request_retried",
    "stage_started",
    "stage_completed",  # video_generation after retry
    "stage_started",
    "stage_completed",  # video_processing
    "stage_started",
    "stage_completed",  # notification
    "request_completed",
]


def run_one_request(tracker: RequestTracker, n: int) -> str:
    rid, _cid = tracker.create_request(
        f"stu-{n}", f"Topic {n}", "objective", "10", 5, {"n": n}, organization_id="org-1"
    )
    tracker.start_request(rid)
    tracker.log_event(rid, "request_submitted", "submitted", severity="info")
    with tracker.track_stage(rid, "validation"):
        pass
    with tracker.track_stage(rid, "rag_retrieval") as s:
        tracker.log_event(
            rid, "cache_hit", "from cache", stage_name="rag_retrieval", event_data={"chunks": 5}
        )
        s.output["chunks_retrieved"] = 5
    with pytest.raises(TimeoutError), tracker.track_stage(rid, "script_generation", attempt=1):
        raise TimeoutError("gemini timed out")
    tracker.schedule_retry(rid, "script_generation", 2, 1_900_000_000.0, "timeout")
    tracker.start_stage(rid, "script_generation", attempt=2)
    tracker.complete_stage(rid, "script_generation", {"word_count": 700}, attempt=2)
    tracker.start_stage(rid, "video_generation")
    tracker.fail_stage(
        rid,
        "video_generation",
        "circuit open",
        {"circuit_breaker": "nano_banana"},
        is_retryable=True,
        work_item=WorkItem(request_id=rid, stage="video_generation", attempt=1),
    )
    tracker.fail_request(rid, "circuit open", "video_generation", {"k": "v"})
    # retry_stage itself needs the read side; its event is what the read side publishes.
    env = tracker._envelope(rid)
    env.request_retried.stage = "video_generation"
    env.request_retried.requested_by = "admin-1"
    env.request_retried.attempt = 2
    tracker._send(env, "request_retried")
    for stage in ("video_generation", "video_processing", "notification"):
        with tracker.track_stage(rid, stage, attempt=2 if stage == "video_generation" else None):
            pass
    tracker.complete_request(rid, "https://cdn/v.mp4", "script", "https://cdn/t.jpg")
    return rid


def test_every_call_arrives_decoded_and_in_order_per_request(broker: Broker, unique: str) -> None:
    settings = broker.settings()
    topic = f"tracking-{unique}"
    make_topics(settings, topic, partitions=3)
    pub = KafkaPublisher(settings, "itest")
    tracker = RequestTracker(pub, producer="itest", topic=topic)
    # Interleave requests so ordering is per key, not global.
    rids = [run_one_request(tracker, n) for n in range(20)]
    report = tracker.flush(30)
    assert report.ok, report
    expected_total = len(rids) * len(FULL_RUN)
    msgs = read_topic(settings, topic, lambda got: len(got) >= expected_total)
    assert len(msgs) == expected_total
    by_request: dict[str, list[str]] = defaultdict(list)
    for m in msgs:
        env = decode_envelope(m.value() or b"")
        assert m.key() == env.request_id.encode()
        headers = headers_of(m)
        assert headers[H_CORRELATION].decode() == env.correlation_id
        assert headers[H_TRACEPARENT].decode().split("-")[1] == env.correlation_id.replace("-", "")
        kind = event_type_name(env)
        assert kind is not None
        by_request[env.request_id].append(kind)
        if kind == "stage_completed" and env.stage_completed.stage == "rag_retrieval":
            assert orjson.loads(env.stage_completed.output_json) == {"chunks_retrieved": 5}
        if kind == "stage_failed" and env.stage_failed.stage == "video_generation":
            assert env.stage_failed.input.stage == "video_generation"
            assert env.stage_failed.is_retryable
    assert set(by_request) == set(rids)
    for rid in rids:
        assert by_request[rid] == FULL_RUN, rid
    pub.close(5)
