"""The fold's rules, on envelopes built by the real tracker into a fake publisher."""

from __future__ import annotations

from services.projector.fold import DURATION_BOUNDS_MS, Known, fold_batch, percentiles
from vividly.events import Envelope, decode_envelope
from vividly.testing import FakePublisher
from vividly.tracker import RequestTracker


def tracked() -> tuple[RequestTracker, FakePublisher]:
    pub = FakePublisher()
    return RequestTracker(pub, producer="unit"), pub


def envelopes(pub: FakePublisher) -> list[Envelope]:
    return [decode_envelope(m.value) for m in pub.messages]


def test_a_failed_request_is_not_reopened_by_later_stage_events() -> None:
    tracker, pub = tracked()
    rid, _ = tracker.create_request("s1", "Photosynthesis", "obj", "10", 5, organization_id="o1")
    tracker.start_stage(rid, "validation")
    tracker.fail_request(rid, "boom", "validation")
    tracker.start_stage(rid, "notification")  # the error email's own bookkeeping
    batch = fold_batch(envelopes(pub), {})
    delta = batch.requests[rid]
    assert delta.status == "failed"
    assert delta.error[:2] == ("validation", "boom")
    assert batch.status_counts == {("o1", "queued"): 0, ("o1", "running"): 0, ("o1", "failed"): 1}


def test_a_retry_reopens_a_failed_request_and_clears_its_error() -> None:
    tracker, pub = tracked()
    rid, _ = tracker.create_request("s1", "Photosynthesis", "obj", "10", 5, organization_id="o1")
    tracker.request_retried(rid, "script_generation", "admin-1", 2)
    batch = fold_batch(envelopes(pub)[1:], {rid: Known("failed", "o1", "s1")})
    delta = batch.requests[rid]
    assert delta.status == "queued"
    assert delta.error == (None, None, None)
    assert delta.retries == 1
    assert batch.status_counts == {("o1", "failed"): -1, ("o1", "queued"): 1}
    assert batch.stages[(rid, "script_generation", 2)].status == "scheduled"


def test_waiting_shows_the_reason_until_the_stage_runs_again() -> None:
    tracker, pub = tracked()
    rid, _ = tracker.create_request("s1", "Photosynthesis", "obj", "10", 5, organization_id="o1")
    tracker.mark_waiting(rid, "video_generation", "circuit_open", "nano_banana open", 1.9e9)
    mid = fold_batch(envelopes(pub), {})
    assert mid.requests[rid].status == "waiting"
    assert mid.requests[rid].waiting[0] == "circuit_open"
    tracker.start_stage(rid, "video_generation", attempt=1)
    after = fold_batch(envelopes(pub), {})
    assert after.requests[rid].status == "running"
    assert after.requests[rid].waiting == (None, None, None)


def test_unknown_event_types_are_skipped_not_fatal() -> None:
    env = Envelope(event_id="0190", request_id="r1")  # no event set: a newer schema's type
    batch = fold_batch([env], {})
    assert batch.skipped == 1
    assert batch.events == []


def test_percentiles_interpolate_within_histogram_buckets() -> None:
    buckets = [0] * (len(DURATION_BOUNDS_MS) + 1)
    buckets[DURATION_BOUNDS_MS.index(100)] = 10  # ten durations in (50, 100]
    p50, p95 = percentiles(buckets, (0.5, 0.95))
    assert p50 == 75.0
    assert p95 is not None
    assert 95 <= p95 <= 100
    assert percentiles([0] * len(buckets), (0.5,)) == [None]
    assert percentiles(buckets, (0.5,), ceiling=60.0) == [60.0]  # never above the max seen


def test_a_redelivered_stage_start_never_reopens_a_finished_attempt() -> None:
    tracker, pub = tracked()
    rid, _ = tracker.create_request("s1", "Photosynthesis", "obj", "10", 5, organization_id="o1")
    tracker.start_stage(rid, "rag_retrieval", attempt=1)
    tracker.complete_stage(rid, "rag_retrieval", {"n": 5}, attempt=1, duration_ms=12.0)
    tracker.start_stage(rid, "rag_retrieval", attempt=1)  # the same item, redelivered
    envs = envelopes(pub)
    first = envs[1].occurred_at.seconds
    envs[3].occurred_at.seconds = first + 5  # it arrives 5 s later
    batch = fold_batch(envs, {})
    row = batch.stages[(rid, "rag_retrieval", 1)]
    assert row.status == "completed"
    assert row.duration_ms == 12.0
    assert row.started_at is not None
    assert int(row.started_at.timestamp()) == first, "the first start is kept"


def test_poison_envelopes_are_named_and_good_ones_pass() -> None:
    import math

    from services.projector.fold import poison_reason

    tracker, pub = tracked()
    tracker.create_request("s1", "Photosynthesis", "obj", "10", 5)
    good = envelopes(pub)[0]
    assert poison_reason(good) is None
    no_id = Envelope()
    no_id.CopyFrom(good)
    no_id.event_id = ""
    assert poison_reason(no_id) == "no event_id"
    nan = Envelope()
    nan.CopyFrom(good)
    nan.stage_completed.stage = "validation"
    nan.stage_completed.duration_ms = math.inf
    assert poison_reason(nan) == "stage_completed.duration_ms is inf"
    late = Envelope()
    late.CopyFrom(good)
    late.occurred_at.seconds = 10**12
    assert "out of range" in (poison_reason(late) or "")


def test_a_failure_closes_every_open_attempt_stored_or_in_the_batch_and_none_reopens() -> None:
    """The request fails with video_generation (stored, from an earlier batch) and
    video_processing (this batch) still running: both end "abandoned"; a StageCompleted
    for one of them arriving after the failure does not reopen it; a retry after the
    failure opens a new attempt, which stays scheduled."""
    tracker, pub = tracked()
    rid, _ = tracker.create_request("s1", "Photosynthesis", "obj", "10", 5, organization_id="o1")
    pub.messages.clear()
    tracker.start_stage(rid, "video_processing")
    tracker.fail_request(rid, "worker died", "video_generation")
    tracker.complete_stage(rid, "video_generation", duration_ms=5.0)  # late, after the end
    tracker.request_retried(rid, "video_generation", "admin-1", 2)
    batch = fold_batch(
        envelopes(pub),
        {rid: Known("running", "o1", "s1")},
        {rid: [("video_generation", 1)]},
    )
    assert batch.stages[(rid, "video_generation", 1)].status == "abandoned"
    assert batch.stages[(rid, "video_generation", 1)].ended_at is not None
    assert batch.stages[(rid, "video_processing", 1)].status == "abandoned"
    assert batch.stages[(rid, "video_generation", 2)].status == "scheduled"


def test_the_close_is_the_same_however_the_log_is_cut_into_batches() -> None:
    """One event at a time or all at once, the attempts end the same way (a rebuild
    folds bigger batches than the live projector)."""
    tracker, pub = tracked()
    rid, _ = tracker.create_request("s1", "Photosynthesis", "obj", "10", 5, organization_id="o1")
    tracker.start_stage(rid, "rag_retrieval")
    tracker.start_stage(rid, "script_generation")
    tracker.cancel_request(rid, "admin-1", "not needed")
    tracker.complete_stage(rid, "script_generation", duration_ms=3.0)
    envs = envelopes(pub)
    whole = {k: v.status for k, v in fold_batch(envs, {}).stages.items()}
    # One at a time: what the store keeps between batches, fed back as the next batch's
    # known state and open attempts.
    stored: dict[tuple[str, str, int], str] = {}
    known: dict[str, Known] = {}
    for env in envs:
        open_now = [(s, a) for (r, s, a), st in stored.items() if st in ("running", "scheduled")]
        b = fold_batch([env], known, {rid: open_now} if known else {})
        for key, row in b.stages.items():
            if stored.get(key) not in ("completed", "failed", "abandoned", "cancelled"):
                stored[key] = row.status
        status = b.requests[rid].status or known[rid].status
        known = {rid: Known(status, "o1", "s1")}
    assert stored == whole
    assert whole == {
        (rid, "rag_retrieval", 1): "cancelled",
        (rid, "script_generation", 1): "cancelled",
    }


def test_each_stage_keeps_its_longest_attempt_completed_or_failed() -> None:
    """``slowest`` (the row's ``slowest_ms``) is the longest attempt per stage: a slow
    failed first attempt is not forgotten when a quick retry completes, and a stage
    with no ended attempt has no entry."""
    tracker, pub = tracked()
    rid, _ = tracker.create_request("s1", "Photosynthesis", "obj", "10", 5, organization_id="o1")
    tracker.start_stage(rid, "script_generation")
    tracker.fail_stage(rid, "script_generation", "gemini 503", duration_ms=9100.0)
    tracker.start_stage(rid, "script_generation", attempt=2)
    tracker.complete_stage(rid, "script_generation", duration_ms=120.0, attempt=2)
    tracker.start_stage(rid, "video_generation")
    tracker.complete_stage(rid, "rag_retrieval", duration_ms=40.5)
    assert fold_batch(envelopes(pub), {}).requests[rid].slowest == {
        "script_generation": 9100.0,
        "rag_retrieval": 40.5,
    }


def _percentiles_one_walk_per_quantile(
    buckets: list[int], qs: tuple[float, ...], ceiling: float | None
) -> list[float | None]:
    """The definition: for each quantile, the bucket its rank falls in, interpolated."""
    total = sum(buckets)
    out: list[float | None] = []
    for q in qs:
        if total == 0:
            out.append(None)
            continue
        rank, seen = q * total, 0
        for i, n in enumerate(buckets):
            if n and seen + n >= rank:
                lo = DURATION_BOUNDS_MS[i - 1] if i > 0 else 0.0
                hi = DURATION_BOUNDS_MS[i] if i < len(DURATION_BOUNDS_MS) else lo * 2
                value = lo + (hi - lo) * (rank - seen) / n
                out.append(min(value, ceiling) if ceiling is not None else value)
                break
            seen += n
    return out


def test_percentiles_match_the_definition_for_any_histogram() -> None:
    import random

    rng = random.Random(3)
    n = len(DURATION_BOUNDS_MS) + 1
    for _ in range(3000):
        buckets = [rng.choice([0, 0, 0, 1, rng.randint(0, 500)]) for _ in range(n)]
        qs = tuple(rng.choice([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]) for _ in range(rng.randint(1, 4)))
        ceiling = rng.choice([None, rng.uniform(0, 20000)])
        assert percentiles(buckets, qs, ceiling) == _percentiles_one_walk_per_quantile(
            buckets, qs, ceiling
        ), (buckets, qs, ceiling)
