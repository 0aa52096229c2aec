"""The external calls of a request's last stages, made alone: the baseline that part 3 of
``bench.pipeline`` measures the pipeline against.

Once a video job is done, a request costs the same calls however the pipeline around
them is built: the status poll that finds the job done and the download (video API),
the thumbnail (cached by content, as the service does), two ``PutObject`` calls through
boto3 (video and thumbnail) and one SMTP send. This makes exactly those calls, with the
services' own clients (``HttpVideoAPI``, ``S3Storage``, ``FfmpegThumbnailer``,
``SmtpMailer``, ``compose``) and the video service's concurrency, against the stand-ins
the pipeline uses, and nothing else: no Kafka, no Postgres, no tracking.

    python -m bench.external --video-url URL --s3-url URL --smtp-port N [--requests 2000]

It first submits the jobs (the emulator's job time should be 0 by then) and waits for
them; the timed pass is the calls above for every job. The last line printed is one
JSON object: ``requests``, ``seconds``, ``requests_per_s``, ``cpu_s`` (this process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

import psutil
import uvloop

from services.notify.handlers import compose
from services.notify.providers import SmtpMailer
from services.video.providers import FfmpegThumbnailer, HttpVideoAPI, S3Storage
from vividly.config import Settings
from vividly.events import WorkItem

SCRIPT = "Volcanoes form where magma reaches the surface. " * 8
HEADERS = {"X-Correlation-ID": "bench-external"}


def _item(request_id: str) -> WorkItem:
    item = WorkItem()
    item.request_id = request_id
    item.correlation_id = HEADERS["X-Correlation-ID"]
    item.request.topic = "Volcanoes"
    item.request.student_id = "bench-student"
    return item


async def measure(settings: Settings, requests: int, concurrency: int) -> dict[str, Any]:
    api = HttpVideoAPI(settings)
    storage = S3Storage(settings)
    thumbnailer = FfmpegThumbnailer()
    mailer = SmtpMailer(settings)
    try:
        await asyncio.to_thread(storage.ensure_bucket)
        jobs = [
            await api.submit(SCRIPT, 1, "Volcanoes", f"external-{uuid.uuid4()}", HEADERS)
            for _ in range(requests + 1)
        ]
        slots = asyncio.Semaphore(concurrency)

        async def one(job_id: str) -> None:
            rid = uuid.uuid4().hex
            async with slots:  # as VideoProcessing bounds the videos held at once
                status = await api.status(job_id, HEADERS)
                while status.get("status") != "completed":
                    if status.get("status") == "failed":
                        raise SystemExit(f"video job {job_id} failed: {status}")
                    await asyncio.sleep(0.2)
                    status = await api.status(job_id, HEADERS)
                video = await api.download(status["video_url"], HEADERS)
                thumb = await thumbnailer.thumbnail(video)
                video_url = await storage.upload(f"{rid}.mp4", video, "video/mp4", HEADERS)
                thumb_url = await storage.upload(f"{rid}.jpg", thumb, "image/jpeg", HEADERS)
            msg = compose(_item(rid), "content_ready", settings.smtp_from, video_url, thumb_url)
            await mailer.send(msg)

        await one(jobs[0])  # warm: the render, the thumbnail, the connections
        me = psutil.Process()
        cpu0, t0 = sum(me.cpu_times()[:2]), time.perf_counter()
        await asyncio.gather(*(one(j) for j in jobs[1:]))
        seconds = time.perf_counter() - t0
        cpu = sum(me.cpu_times()[:2]) - cpu0
    finally:
        await api.close()
        await mailer.close()
    return {
        "requests": requests,
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 1),
        "cpu_s": round(cpu, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.external", description=__doc__)
    p.add_argument("--video-url", required=True)
    p.add_argument("--s3-url", required=True)
    p.add_argument("--smtp-port", type=int, required=True)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=Settings().video_processing_concurrency)
    args = p.parse_args(argv)
    settings = Settings(
        video_api_url=args.video_url,
        s3_endpoint_url=args.s3_url,
        smtp_host="127.0.0.1",
        smtp_port=args.smtp_port,
    )
    result = uvloop.run(measure(settings, args.requests, args.concurrency))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
