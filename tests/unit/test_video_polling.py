"""How the video stage polls a job: timed from its progress, bounded when it stalls.

A virtual clock: the fake job API reports progress from it, and the handler's sleep
advances it, so the tests are exact and take no time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from services.video.handlers import VideoGeneration
from vividly.breakers import nano_banana_breaker
from vividly.events import WorkItem
from vividly.runtime.stage import StageContext
from vividly.testing import FakePublisher
from vividly.tracker import RequestTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


class TimedJobs:
    """A job API whose one job takes ``seconds`` of virtual time; or stalls at 99%."""

    def __init__(self, clock: Clock, seconds: float, stall_at_99_for: float = 0.0) -> None:
        self.clock = clock
        self.seconds = seconds
        self.stall = stall_at_99_for
        self.started = 0.0
        self.polls: list[float] = []

    async def submit(self, script: str, minutes: int, title: str, key: str, h: Any) -> str:
        self.started = self.clock()
        return "job-1"

    async def status(self, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
        elapsed = self.clock() - self.started
        self.polls.append(elapsed)
        if elapsed >= self.seconds + self.stall:
            return {"status": "completed", "progress": 100, "video_url": "http://v/job-1"}
        progress = min(99, int(100 * elapsed / self.seconds))
        return {"status": "processing", "progress": progress}

    async def cancel(self, job_id: str, headers: dict[str, str]) -> None:
        raise AssertionError("no job is cancelled in these tests")

    async def download(self, url: str, headers: dict[str, str]) -> bytes:
        return b""


def run(api: TimedJobs, clock: Clock, interval: float = 3.0) -> dict[str, Any]:
    item = WorkItem(request_id="r1", correlation_id="c1", stage="video_generation", attempt=1)
    item.outputs_json["script_generation"] = orjson.dumps({"script": "Lava flows."})
    ctx = StageContext(RequestTracker(FakePublisher()), item, "video_generation", 1)
    gen = VideoGeneration(api, nano_banana_breaker, interval, 600.0, clock=clock, sleep=clock.sleep)
    return asyncio.run(gen(item, ctx))


@pytest.mark.parametrize("seconds", [0.5, 5.0, 20.0, 90.0])
def test_a_job_is_seen_done_within_a_first_poll_of_finishing(seconds: float) -> None:
    clock = Clock()
    api = TimedJobs(clock, seconds)
    assert run(api, clock)["video_url"] == "http://v/job-1"
    lag = api.polls[-1] - seconds
    assert 0 <= lag <= 0.2 + 0.01 * seconds, api.polls


@pytest.mark.parametrize(("interval", "most"), [(3.0, 10), (10.0, 3)])
def test_a_twenty_second_job_takes_a_few_polls_never_further_apart_than_the_interval(
    interval: float, most: int
) -> None:
    clock = Clock()
    api = TimedJobs(clock, 20.0)
    run(api, clock, interval)
    assert len(api.polls) <= most, api.polls
    gaps = [b - a for a, b in zip(api.polls, api.polls[1:], strict=False)]
    assert max(gaps) <= interval + 1e-9


def test_a_job_stalled_past_its_estimate_is_polled_with_doubling_waits() -> None:
    clock = Clock()
    api = TimedJobs(clock, 10.0, stall_at_99_for=60.0)
    run(api, clock)
    late = [p for p in api.polls if p > 10.5]
    # 60 s stalled: 0.2, 0.4, 0.8, 1.6, then every 3 s; not a poll every 0.2 s.
    assert len(late) <= 25, late
    assert api.polls[-1] - 70.0 <= 3.0
