"""video: consumes requests.scripted; runs video_generation and video_processing; produces
requests.rendered. Many jobs are awaited at once (VIVIDLY_MAX_IN_FLIGHT)."""

from __future__ import annotations

import asyncio

from services.video.handlers import VideoGeneration, VideoProcessing
from services.video.providers import FfmpegThumbnailer, HttpVideoAPI, S3Storage
from vividly.breakers import cdn_breaker, nano_banana_breaker
from vividly.config import RENDERED, SCRIPTED
from vividly.ledger import PgLedger
from vividly.service import Built, Deps, run
from vividly.stage import Stage, StageRunner


async def build(deps: Deps) -> Built:
    s = deps.settings
    api = HttpVideoAPI(s)
    deps.closers.append(api.close)
    storage = S3Storage(s)
    if s.s3_endpoint_url:
        await asyncio.to_thread(storage.ensure_bucket)
    runner = StageRunner(
        tracker=deps.tracker,
        stages=[
            Stage(
                "video_generation",
                VideoGeneration(api, s.video_poll_interval_s, s.video_timeout_s),
                breakers=(nano_banana_breaker,),
            ),
            Stage(
                "video_processing",
                VideoProcessing(api, storage, FfmpegThumbnailer()),
                breakers=(nano_banana_breaker, cdn_breaker),
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
