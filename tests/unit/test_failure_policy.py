"""The one failure policy (vividly.errors): every part that decides about a failure gives
the same answer, and the rules where the old copies disagreed are pinned."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from typing import Any

import pybreaker
import pytest

from vividly import breakers
from vividly.config import DLQ_TOPIC, Settings
from vividly.errors import (
    PermanentError,
    ProviderError,
    RetryableError,
    RetryPolicy,
    classify,
    counts_against_breaker,
    dead_letter,
    is_outage,
    is_retryable,
)
from vividly.events import MessageHeaders, WorkItem
from vividly.publish import DeliveryFailed
from vividly.runtime.bus import Delivery
from vividly.runtime.stage import MemoryLedger, Stage, StageContext, StageRunner, UnpairedBreaker
from vividly.testing import FakePublisher
from vividly.tracker import RequestTracker


class HttpStatusError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code


class FakeAsyncpgLost(Exception):
    """Named like asyncpg's, in a module that says asyncpg."""


FakeAsyncpgLost.__module__ = "asyncpg.exceptions"
FakeAsyncpgLost.__name__ = "ConnectionDoesNotExistError"

RETRYABLE: list[BaseException] = [
    TimeoutError("read timed out"),
    ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    ConnectionResetError(errno.ECONNRESET, "reset"),
    socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution"),
    OSError(errno.EHOSTUNREACH, "no route to host"),  # the case the old copies split on
    HttpStatusError(503),
    HttpStatusError(429),
    RetryableError("503 upstream"),
    ProviderError("video api: 502", retryable=True, status=502),
]
PERMANENT: list[BaseException] = [
    FileNotFoundError(errno.ENOENT, "ffmpeg"),
    PermissionError(errno.EACCES, "denied"),
    OSError(errno.ENOENT, "no such file"),
    HttpStatusError(404),
    HttpStatusError(400),
    ValueError("bad input"),
    KeyError("video_url"),
    PermanentError("script too long"),
    ProviderError("video api: 422", retryable=False, status=422),
    DeliveryFailed("not acknowledged"),
]


@pytest.mark.parametrize("exc", RETRYABLE, ids=repr)
def test_network_errors_5xx_and_429_are_retryable_and_count_against_a_breaker(
    exc: BaseException,
) -> None:
    assert is_retryable(exc)
    assert counts_against_breaker(exc)
    assert classify(exc, "call").is_retryable


@pytest.mark.parametrize("exc", PERMANENT, ids=repr)
def test_filesystem_errors_4xx_bugs_and_declared_permanent_ones_are_not(
    exc: BaseException,
) -> None:
    assert not is_retryable(exc)
    assert not counts_against_breaker(exc)
    assert not classify(exc, "call").is_retryable


def test_an_oserror_reads_the_same_to_the_runner_the_span_and_the_loop() -> None:
    """The old copies disagreed: the provider wrapper and the loop called an OSError
    retryable, the stage runner and track_stage did not."""
    exc = OSError(errno.EHOSTUNREACH, "no route to host")
    pub = FakePublisher()
    tracker = RequestTracker(pub)
    rid, _ = tracker.create_request("s1", "Tides", "why", "8", 2)
    with pytest.raises(OSError, match="no route"), tracker.track_stage(rid, "validation"):
        raise exc
    failed = pub.messages[-1].envelope().stage_failed
    assert failed.is_retryable is True

    async def work(_i: WorkItem, _c: StageContext) -> dict[str, Any]:
        raise exc

    out = asyncio.run(_runner(work, FakePublisher())(_delivery(), _item()))
    assert [o.topic for o in out] == ["requests.scripted"], "the runner schedules a retry"
    assert is_outage(exc), "and the loop waits an outage out"


def test_an_outage_is_our_infrastructure_and_never_what_classified_itself() -> None:
    assert is_outage(ConnectionRefusedError(errno.ECONNREFUSED, "pg refused"))
    assert is_outage(FakeAsyncpgLost("connection was closed in the middle of operation"))
    sqlstate = Exception("the database system is starting up")
    sqlstate.sqlstate = "57P03"  # type: ignore[attr-defined]
    assert is_outage(sqlstate)
    assert not is_outage(RetryableError("the handler's own: bounded tries"))
    assert not is_outage(ProviderError("timeout", retryable=True))
    assert not is_outage(DeliveryFailed("stop the loop"))
    assert not is_outage(FileNotFoundError(errno.ENOENT, "x"))


def test_one_policy_gives_the_attempts_and_the_backoff() -> None:
    policy = RetryPolicy.from_settings(
        Settings(
            stage_max_attempts=4, retry_backoff_s=1.0, retry_backoff_max_s=5.0, retry_jitter=0.0
        )
    )
    assert [policy.delay(a) for a in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    retryable = RetryableError("x")
    assert [policy.gives_up(a, retryable) for a in (1, 2, 3, 4)] == [False, False, False, True]
    assert policy.gives_up(1, PermanentError("x"))
    jittered = RetryPolicy(backoff_s=10.0, jitter=0.2)
    rng = random.Random(3)
    assert all(8.0 <= jittered.delay(1, rng) <= 12.0 for _ in range(200))
    assert [policy.outage_delay(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert policy.outage_delay(50) == RetryPolicy.OUTAGE_MAX_S
    assert RetryPolicy.from_settings(Settings(), max_attempts=7).max_attempts == 7


def test_a_dead_letter_keeps_the_message_and_says_why_and_whence() -> None:
    out = dead_letter(
        DLQ_TOPIC,
        b"r1",
        b"\x00raw",
        [("vividly-type", b"vividly.v1.WorkItem")],
        reason="retries_exhausted",
        detail="x" * 5000,
        stage="video_generation",
        source=("requests.scripted", 2, 41),
        group="video",
    )
    h = dict(out.headers)
    assert (out.topic, out.key, out.value) == (DLQ_TOPIC, b"r1", b"\x00raw")
    assert h["vividly-type"] == b"vividly.v1.WorkItem"
    assert h["dlq-reason"] == b"retries_exhausted"
    assert len(h["dlq-detail"]) == 4000
    assert h["dlq-stage"] == b"video_generation"
    assert (h["dlq-source-topic"], h["dlq-source-partition"], h["dlq-source-offset"]) == (
        b"requests.scripted",
        b"2",
        b"41",
    )
    assert h["dlq-consumer-group"] == b"video"
    assert int(h["dlq-failed-at-ms"]) > 0


def test_a_breaker_that_its_stage_does_not_list_is_reported_not_silently_held() -> None:
    """The wiring bug the issue names: the handler guards with a breaker its Stage does not
    list, so an open breaker would hold items while input kept flowing."""
    own = pybreaker.CircuitBreaker(name="own")
    other = pybreaker.CircuitBreaker(name="other")
    calls: list[str] = []

    async def work(_i: WorkItem, ctx: StageContext) -> dict[str, Any]:
        async def call() -> str:
            calls.append("called")
            return "ok"

        await ctx.guarded(own, call)
        await ctx.guarded(other, call)
        return {}

    pub = FakePublisher()
    out = asyncio.run(_runner(work, pub, breakers_=(own,))(_delivery(), _item()))
    assert calls == ["called"], "the unpaired call is never made"
    kinds = [m.envelope().WhichOneof("event") for m in pub.messages]
    assert kinds[-2:] == ["stage_failed", "request_failed"]
    failed = next(m.envelope() for m in pub.messages if m.envelope().HasField("stage_failed"))
    assert "does not list" in failed.stage_failed.error_message
    assert "other" in failed.stage_failed.error_message
    assert failed.stage_failed.is_retryable is False
    assert {o.topic for o in out} == {DLQ_TOPIC, "requests.rendered"}
    assert issubclass(UnpairedBreaker, TypeError)


def test_the_shipped_breakers_count_only_what_the_policy_counts() -> None:
    cb = breakers._make("probe")  # built as the shipped four are
    cb.fail_max = 100

    async def fail(exc: BaseException) -> None:
        async def call() -> None:
            raise exc

        with pytest.raises(type(exc)):
            await breakers.guarded(cb, call)

    for exc in PERMANENT:
        asyncio.run(fail(exc))
    assert cb.fail_counter == 0
    asyncio.run(fail(OSError(errno.EHOSTUNREACH, "no route")))
    assert cb.fail_counter == 1


def _item() -> WorkItem:
    return WorkItem(request_id="r1", correlation_id="c1", stage="video_generation", attempt=1)


def _delivery() -> Delivery:
    return Delivery("requests.scripted", 0, 7, b"r1", MessageHeaders.parse(None), 0)


def _runner(
    work: Any, pub: FakePublisher, breakers_: tuple[pybreaker.CircuitBreaker, ...] = ()
) -> StageRunner:
    return StageRunner(
        tracker=RequestTracker(pub),
        settings=Settings(stage_max_attempts=3, retry_backoff_s=0.0, retry_jitter=0.0),
        input_topic="requests.scripted",
        next_topic="requests.rendered",
        ledger=MemoryLedger(),
        stages=[Stage("video_generation", work, breakers=breakers_)],
    )
