"""video: consumes requests.scripted; runs video_generation and video_processing; produces
requests.rendered. Many jobs are awaited at once (VIVIDLY_MAX_IN_FLIGHT)."""

from __future__ import annotations

import asyncio

from services.video.handlers import VideoGeneration, VideoProcessing
from services.video.providers import (
    FfmpegThumbnailer,
    HttpVideoAPI,
    LocalVideoAPI,
    MemoryStorage,
    NullThumbnailer,
    S3Storage,
    Storage,
    Thumbnailer,
    VideoAPI,
)
from vividly.breakers import cdn_breaker, nano_banana_breaker
from vividly.config import RENDERED, SCRIPTED
from vividly.runtime.ledger import PgLedger
from vividly.runtime.service import Built, Deps, run
from vividly.runtime.stage import Stage, StageRunner


async def build(deps: Deps) -> Built:
    s = deps.settings
    api: VideoAPI
    storage: Storage
    thumbnailer: Thumbnailer
    if s.providers == "null":
        api, storage, thumbnailer = LocalVideoAPI(0.0), MemoryStorage(), NullThumbnailer()
    else:
        http = HttpVideoAPI(s)
        deps.closers.append(http.close)
        s3 = S3Storage(s)
        if s.s3_endpoint_url:
            await asyncio.to_thread(s3.ensure_bucket)
        api, storage, thumbnailer = http, s3, FfmpegThumbnailer()
    generation = VideoGeneration(
        api, nano_banana_breaker, s.video_poll_interval_s, s.video_timeout_s
    )
    processing = VideoProcessing(
        api,
        storage,
        thumbnailer,
        api_breaker=nano_banana_breaker,
        cdn_breaker=cdn_breaker,
        concurrency=s.video_processing_concurrency,
    )
    runner = StageRunner(
        tracker=deps.tracker,
        stages=[
            Stage("video_generation", generation, breakers=(generation.breaker,)),
            Stage(
                "video_processing",
                processing,
                breakers=(processing.api_breaker, processing.cdn_breaker),
            ),
        ],
        settings=s,
        input_topic=SCRIPTED,
        next_topic=RENDERED,
        ledger=PgLedger(deps.pool),
    )
    return Built(handler=runner, gates=[runner.accepting])


def main() -> None:
    run("video", input_topic=SCRIPTED, produces=[RENDERED], build=build, max_in_flight=2500)


if __name__ == "__main__":
    main()
