"""The video stages: generate (submit + poll the job) and process (download, thumbnail,
upload to the CDN)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.video.providers import Storage, Thumbnailer, VideoAPI
from vividly.breakers import cdn_breaker, guarded, nano_banana_breaker
from vividly.clients import ProviderError
from vividly.events import WorkItem
from vividly.stage import StageContext


class VideoGeneration:
    def __init__(
        self, api: VideoAPI, poll_interval_s: float, timeout_s: float, first_poll_s: float = 0.2
    ) -> None:
        self.api = api
        self.poll_interval_s = poll_interval_s  # the longest wait between two polls
        self.first_poll_s = min(first_poll_s, poll_interval_s)
        self.timeout_s = timeout_s

    async def __call__(self, item: WorkItem, ctx: StageContext) -> dict[str, Any]:
        script = ctx.output_of("script_generation").get("script", "")
        if not script:
            raise ProviderError("no script in the work item", retryable=False)
        headers = ctx.headers()
        # One job per (request, attempt): a redelivered item finds the same job.
        key = f"{item.request_id}:{ctx.attempt}"
        ctx.log("api_call", "Calling Nano Banana API for video generation")
        job_id = await guarded(
            nano_banana_breaker,
            lambda: self.api.submit(
                script, item.request.duration_minutes, item.request.topic, key, headers
            ),
        )
        deadline = time.monotonic() + self.timeout_s
        last = -1
        wait = self.first_poll_s
        while True:
            status = await guarded(nano_banana_breaker, lambda: self.api.status(job_id, headers))
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
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"video job {job_id} not done after {self.timeout_s:.0f}s",
                    retryable=True,
                    details={"job_id": job_id},
                )
            # Poll soon at first (short jobs finish fast), then back off to the interval:
            # hundreds of long jobs at once must not flood the API with status calls.
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.poll_interval_s)


class VideoProcessing:
    def __init__(
        self, api: VideoAPI, storage: Storage, thumbnailer: Thumbnailer, concurrency: int = 32
    ) -> None:
        self.api = api
        self.storage = storage
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
        video = await guarded(
            nano_banana_breaker, lambda: self.api.download(gen["video_url"], headers)
        )
        thumb = await self.thumbnailer.thumbnail(video)
        cdn_url = await guarded(
            cdn_breaker, lambda: self.storage.upload(f"{rid}.mp4", video, "video/mp4", headers)
        )
        thumb_url = await guarded(
            cdn_breaker, lambda: self.storage.upload(f"{rid}.jpg", thumb, "image/jpeg", headers)
        )
        ctx.log("video_uploaded", f"Video uploaded to CDN: {cdn_url}")
        return {
            "cdn_url": cdn_url,
            "thumbnail_url": thumb_url,
            "video_bytes": len(video),
            "thumbnail_bytes": len(thumb),
        }
