"""The StageRunner with fakes: retries, failure routing, circuit holds, ledger dedupe."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pybreaker
import pytest

from vividly.breakers import CircuitOpen
from vividly.config import DLQ_TOPIC, RENDERED, Settings
from vividly.errors import ProviderError
from vividly.events import MessageHeaders, WorkItem
from vividly.runtime.bus import Delivery
from vividly.runtime.stage import (
    H_NOT_BEFORE,
    Cancelled,
    MemoryLedger,
    Stage,
    StageContext,
    StageRunner,
)
from vividly.testing import FakePublisher
from vividly.tracker import RequestTracker

D = Delivery("requests.scripted", 0, 7, b"r1", MessageHeaders.parse(None), 0)
SETTINGS = Settings(
    stage_max_attempts=3, retry_backoff_s=1.0, retry_backoff_max_s=30, retry_jitter=0.2
)


def item(stage: str = "video_generation", attempt: int = 1) -> WorkItem:
    w = WorkItem(request_id="r1", correlation_id="c1", stage=stage, attempt=attempt)
    w.request.topic = "Volcanoes"
    return w


def runner(
    work: Any,
    pub: FakePublisher,
    ledger: MemoryLedger | None = None,
    breaker: pybreaker.CircuitBreaker | None = None,
) -> StageRunner:
    return StageRunner(
        tracker=RequestTracker(pub),
        settings=SETTINGS,
        input_topic="requests.scripted",
        next_topic="requests.rendered",
        ledger=ledger or MemoryLedger(),
        stages=[Stage("video_generation", work, breakers=(breaker,) if breaker else ())],
    )


def kinds(pub: FakePublisher) -> list[str]:
    return [m.envelope().WhichOneof("event") or "?" for m in pub.messages]


def test_success_tracks_the_stage_and_forwards_the_output() -> None:
    pub = FakePublisher()

    async def work(_i: WorkItem, ctx: StageContext) -> dict[str, Any]:
        return {"job_id": "j1"}

    out = asyncio.run(runner(work, pub)(D, item()))
    assert kinds(pub) == ["stage_started", "stage_completed"]
    assert len(out) == 1
    assert out[0].topic == "requests.rendered"
    nxt = WorkItem.FromString(out[0].value)
    assert nxt.stage == "video_processing"
    assert nxt.attempt == 1
    assert orjson.loads(nxt.outputs_json["video_generation"]) == {"job_id": "j1"}


def test_a_retryable_failure_schedules_the_next_attempt_with_backoff() -> None:
    pub = FakePublisher()

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        raise ProviderError("video API: HTTP 503", retryable=True, status=503)

    before = time.time()
    out = asyncio.run(runner(work, pub)(D, item(attempt=2)))
    assert kinds(pub) == ["stage_started", "stage_failed", "stage_retry_scheduled"]
    failed = pub.messages[1].envelope().stage_failed
    assert failed.is_retryable
    assert failed.attempt == 2
    assert failed.input.request_id == "r1"
    assert orjson.loads(failed.error_details_json)["status_code"] == 503
    retry = pub.messages[2].envelope().stage_retry_scheduled
    assert retry.attempt == 3
    delay = retry.due_at.ToNanoseconds() / 1e9 - before
    assert 2.0 * 0.8 - 0.1 <= delay <= 2.0 * 1.2 + 0.1  # 1 s · 2^(attempt-1), ±20 % jitter
    (again,) = out
    assert again.topic == "requests.scripted"
    assert WorkItem.FromString(again.value).attempt == 3
    assert (
        dict(again.headers)[H_NOT_BEFORE] == str(int(retry.due_at.ToNanoseconds() / 1e6)).encode()
    )


@pytest.mark.parametrize(
    ("attempt", "retryable", "reason"),
    [(3, True, b"retries_exhausted"), (1, False, b"non_retryable")],
)
def test_exhausted_or_non_retryable_fails_the_request_dead_letters_and_notifies(
    attempt: int, retryable: bool, reason: bytes
) -> None:
    pub = FakePublisher()

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        raise ProviderError("nope", retryable=retryable)

    out = asyncio.run(runner(work, pub)(D, item(attempt=attempt)))
    assert kinds(pub) == ["stage_started", "stage_failed", "request_failed"]
    rf = pub.messages[2].envelope().request_failed
    assert rf.error_stage == "video_generation"
    dead, notify = out
    assert dead.topic == DLQ_TOPIC
    assert dict(dead.headers)["dlq-reason"] == reason
    assert notify.topic == RENDERED
    failure = WorkItem.FromString(notify.value)
    assert failure.failure.stage == "video_generation"
    assert failure.failure.error_message == "nope"


def test_an_open_circuit_holds_the_item_without_burning_the_attempt() -> None:
    pub = FakePublisher()
    calls = {"n": 0}

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise CircuitOpen("nano_banana", time.time() + 0.2)
        return {"job_id": "j"}

    t0 = time.monotonic()
    out = asyncio.run(runner(work, pub)(D, item()))
    assert time.monotonic() - t0 >= 0.2
    assert kinds(pub) == ["stage_started", "request_waiting", "stage_completed"]
    waiting = pub.messages[1].envelope().request_waiting
    assert (waiting.reason, waiting.stage) == ("circuit_open", "video_generation")
    assert pub.messages[2].envelope().stage_completed.attempt == 1
    assert out[0].topic == "requests.rendered"


def test_the_gate_closes_while_a_breaker_is_open() -> None:
    pub = FakePublisher()
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=60, name="t")

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        return {}

    r = runner(work, pub, breaker=breaker)
    assert r.accepting()
    breaker.open()
    assert not r.accepting()
    breaker.close()
    assert r.accepting()


def test_a_redelivered_item_is_never_worked_twice_and_republishes_the_same_events() -> None:
    pub = FakePublisher()
    ledger = MemoryLedger()
    outputs = iter([{"job_id": "first"}, {"job_id": "second"}])
    calls = 0

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return next(outputs)

    r = runner(work, pub, ledger)
    first = asyncio.run(r(D, item()))
    second = asyncio.run(r(D, item()))
    assert calls == 1, "the ledger is consulted before the work starts"
    assert kinds(pub) == ["stage_started", "stage_completed", "stage_completed"]
    completed = [e for e in pub.envelopes() if e.WhichOneof("event") == "stage_completed"]
    # The first publish may not have reached the broker: the redelivery publishes it
    # again, as the same event (one id), which the projector keeps once.
    assert len({e.event_id for e in completed}) == 1
    assert completed[0] == completed[1]
    assert first[0].value == second[0].value
    assert WorkItem.FromString(second[0].value).outputs_json["video_generation"] == (
        b'{"job_id":"first"}'
    )


def test_a_redelivered_failure_is_not_retried_again_but_resends_the_same_retry() -> None:
    pub = FakePublisher()
    ledger = MemoryLedger()
    calls = 0

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise ProviderError("video API 503", retryable=True, status=503)

    r = runner(work, pub, ledger)
    first = asyncio.run(r(D, item()))
    second = asyncio.run(r(D, item()))
    assert calls == 1
    assert [o.topic for o in second] == ["requests.scripted"]
    assert first == second, "the same retry item, with the same not-before header"
    failed = [e for e in pub.envelopes() if e.WhichOneof("event") == "stage_failed"]
    scheduled = [e for e in pub.envelopes() if e.WhichOneof("event") == "stage_retry_scheduled"]
    assert len(failed) == 2
    assert len({e.event_id for e in failed}) == 1
    assert len({e.event_id for e in scheduled}) == 1


def test_an_attempt_recorded_by_another_delivery_first_publishes_that_outcome() -> None:
    """Two copies of one item in flight: the one that records second publishes the
    first one's events, not its own, so the log holds one outcome per attempt."""
    pub = FakePublisher()
    ledger = MemoryLedger()
    gate = asyncio.Event()

    async def work(i: WorkItem, _c: StageContext) -> dict[str, Any]:
        if i.correlation_id == "slow":
            await gate.wait()
            return {"job_id": "slow"}
        gate.set()
        return {"job_id": "fast"}

    async def both() -> list[Any]:
        r = runner(work, pub, ledger)
        slow, fast = item(), item()
        slow.correlation_id = "slow"
        return list(await asyncio.gather(r(D, slow), r(D, fast)))

    outs = asyncio.run(both())
    completed = [e for e in pub.envelopes() if e.WhichOneof("event") == "stage_completed"]
    assert len({e.event_id for e in completed}) == 1
    assert {WorkItem.FromString(o[0].value).outputs_json["video_generation"] for o in outs} == {
        b'{"job_id":"fast"}'
    }


def test_an_item_addressed_to_another_stage_is_refused() -> None:
    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="runs video_generation"):
        asyncio.run(runner(work, FakePublisher())(D, item(stage="notification")))


def test_a_cancelled_request_is_skipped_once_and_sends_nothing_on() -> None:
    """The fence says cancelled: the work never runs, nothing goes downstream (no retry,
    dead letter or email), and a redelivery publishes the same skip event again."""
    pub = FakePublisher()
    ledger = MemoryLedger()
    ledger.cancelled_ids.add("r1")
    ran: list[str] = []

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        ran.append("work")
        return {}

    run = runner(work, pub, ledger)
    assert asyncio.run(run(D, item())) == []
    assert asyncio.run(run(D, item())) == []  # redelivered
    assert ran == []
    events = [m.envelope() for m in pub.messages]
    assert [e.event_logged.event_type for e in events] == ["stage_cancelled"] * 2
    assert events[0].event_id == events[1].event_id
    assert ledger.rows[("r1", "video_generation", 1)].outcome == "cancelled"


def test_work_that_sees_the_cancel_midway_ends_cancelled_without_retry_or_email() -> None:
    pub = FakePublisher()
    ledger = MemoryLedger()

    async def work(_i: WorkItem, ctx: StageContext) -> dict[str, Any]:
        ledger.cancelled_ids.add("r1")  # someone cancels while the job runs
        if await ctx.is_cancelled():
            raise Cancelled("the request was cancelled; video job j1 cancelled")
        return {}

    out = asyncio.run(runner(work, pub, ledger)(D, item()))
    assert out == []
    assert kinds(pub) == ["stage_started", "event_logged"]
    assert ledger.rows[("r1", "video_generation", 1)].outcome == "cancelled"


def test_a_request_cancelled_while_held_at_an_open_circuit_is_not_run_after_it() -> None:
    pub = FakePublisher()
    ledger = MemoryLedger()
    calls = {"n": 0}

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        calls["n"] += 1
        ledger.cancelled_ids.add("r1")  # cancelled while the breaker holds it
        raise CircuitOpen("nano_banana", time.time() + 0.05)

    out = asyncio.run(runner(work, pub, ledger)(D, item()))
    assert out == []
    assert calls["n"] == 1
    assert kinds(pub) == ["stage_started", "request_waiting", "event_logged"]
    assert ledger.rows[("r1", "video_generation", 1)].outcome == "cancelled"
