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
    def __init__(self, api: VideoAPI, poll_interval_s: float, timeout_s: float) -> None:
        self.api = api
        self.poll_interval_s = poll_interval_s
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
            await asyncio.sleep(self.poll_interval_s)


class VideoProcessing:
    def __init__(self, api: VideoAPI, storage: Storage, thumbnailer: Thumbnailer) -> None:
        self.api = api
        self.storage = storage
        self.thumbnailer = thumbnailer

    async def __call__(self, item: WorkItem, ctx: StageContext) -> dict[str, Any]:
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
