"""The video stages: generate (submit + poll the job) and process (download, thumbnail,
upload to the CDN)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pybreaker import CircuitBreaker

from services.video.providers import Storage, Thumbnailer, VideoAPI
from vividly.errors import ProviderError
from vividly.events import WorkItem
from vividly.runtime.stage import Cancelled, StageContext

#: How far past the estimated end (as a share of the time elapsed) the last poll aims.
DONE_MARGIN = 0.01


class VideoGeneration:
    """Submit the job, then poll it until it is done.

    Polls are timed from the job's own progress: after a status of p% at t seconds, the
    job should be done at about t·100/p, so the next poll goes then (never sooner than
    ``first_poll_s``, never later than ``poll_interval_s``). A job that is not done when
    expected, or reports no progress, is polled with doubling waits up to the interval.
    So a job is seen done within ``first_poll_s`` of finishing; with the default 10 s
    interval a 20-second job takes about four polls, and thousands of waiting jobs do
    not flood the API.
    """

    def __init__(
        self,
        api: VideoAPI,
        breaker: CircuitBreaker,
        poll_interval_s: float,
        timeout_s: float,
        first_poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api = api
        self.breaker = breaker  # the video API's
        self.poll_interval_s = poll_interval_s  # the longest wait between two polls
        self.first_poll_s = min(first_poll_s, poll_interval_s)
        self.timeout_s = timeout_s
        self.clock = clock
        self.sleep = sleep

    async def __call__(self, item: WorkItem, ctx: StageContext) -> dict[str, Any]:
        script = ctx.output_of("script_generation").get("script", "")
        if not script:
            raise ProviderError("no script in the work item", retryable=False)
        headers = ctx.headers()
        # One job per (request, attempt): a redelivered item finds the same job.
        key = f"{item.request_id}:{ctx.attempt}"
        ctx.log("api_call", "Calling Nano Banana API for video generation")
        submitted = self.clock()
        job_id = await ctx.guarded(
            self.breaker,
            lambda: self.api.submit(
                script, item.request.duration_minutes, item.request.topic, key, headers
            ),
        )
        deadline = submitted + self.timeout_s
        last = -1
        backoff = self.first_poll_s
        wait = self.first_poll_s
        due: float | None = None  # when progress said the job would be done
        while True:
            # A job just submitted is not done: the first look is after first_poll_s.
            await self.sleep(wait)
            if await ctx.is_cancelled():
                # Stop the render at the video API too: nobody will download it.
                await ctx.guarded(self.breaker, lambda: self.api.cancel(job_id, headers))
                ctx.log("video_job_cancelled", f"Video job {job_id} cancelled at the video API")
                raise Cancelled(f"the request was cancelled; video job {job_id} cancelled")
            status = await ctx.guarded(self.breaker, lambda: self.api.status(job_id, headers))
            state = status.get("status")
            if state == "completed":
                return {"job_id": job_id, "video_url": status["video_url"]}
            if state == "failed":
                raise ProviderError(
                    f"Video generation failed: {status.get('error')}",
                    retryable=True,
                    details={"job_id": job_id},
                )
            progress = int(status.get("progress") or 0)
            if progress != last:
                ctx.log(
                    "video_progress",
                    f"Video generation progress: {progress}%",
                    data={"progress": progress, "job_id": job_id},
                )
                last = progress
            now = self.clock()
            if now > deadline:
                raise ProviderError(
                    f"video job {job_id} not done after {self.timeout_s:.0f}s",
                    retryable=True,
                    details={"job_id": job_id},
                )
            overdue = due is not None and now >= due
            if overdue or not 0 < progress < 100:
                backoff = min(backoff * 2, self.poll_interval_s)
                wait = backoff
            else:
                # Progress is reported rounded down, so the estimate errs late by less
                # than one percent of the time elapsed; the job's clock also started a
                # little after ours. Aim just past the end, so the poll that was meant
                # to find the job done does.
                elapsed = now - submitted
                remaining = elapsed * (100 - progress) / progress + DONE_MARGIN * elapsed
                wait = max(self.first_poll_s, min(remaining, self.poll_interval_s))
                if remaining <= self.poll_interval_s:
                    due = now + wait


class VideoProcessing:
    def __init__(
        self,
        api: VideoAPI,
        storage: Storage,
        thumbnailer: Thumbnailer,
        api_breaker: CircuitBreaker,
        cdn_breaker: CircuitBreaker,
        concurrency: int = 32,
    ) -> None:
        self.api = api
        self.storage = storage
        self.api_breaker = api_breaker  # downloads come from the video API
        self.cdn_breaker = cdn_breaker
        self.thumbnailer = thumbnailer
        # Videos are held in memory while processed: bound how many at once.
        self.slots = asyncio.Semaphore(concurrency)

    async def __call__(self, item: WorkItem, ctx: StageContext) -> dict[str, Any]:
        async with self.slots:
            return await self._process(item, ctx)

    async def _process(self, item: WorkItem, ctx: StageContext) -> dict[str, Any]:
        gen = ctx.output_of("video_generation")
        headers = ctx.headers()
        rid = item.request_id
        video = await ctx.guarded(
            self.api_breaker, lambda: self.api.download(gen["video_url"], headers)
        )
        thumb = await self.thumbnailer.thumbnail(video)
        cdn_url = await ctx.guarded(
            self.cdn_breaker, lambda: self.storage.upload(f"{rid}.mp4", video, "video/mp4", headers)
        )
        thumb_url = await ctx.guarded(
            self.cdn_breaker,
            lambda: self.storage.upload(f"{rid}.jpg", thumb, "image/jpeg", headers),
        )
        ctx.log("video_uploaded", f"Video uploaded to CDN: {cdn_url}")
        return {
            "cdn_url": cdn_url,
            "thumbnail_url": thumb_url,
            "video_bytes": len(video),
            "thumbnail_bytes": len(thumb),
        }
