"""Real thumbnails from real MP4s with ffmpeg; one ffmpeg run per distinct video."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from services.video.providers import FfmpegThumbnailer
from vividly.errors import ProviderError

pytestmark = pytest.mark.integration


def mp4(path: Path, color: str) -> bytes:
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"color=c={color}:s=160x90:d=2:r=10",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path.read_bytes()


class Counting(FfmpegThumbnailer):
    runs = 0

    async def _make(self, video: bytes) -> bytes:
        Counting.runs += 1
        return await super()._make(video)


def test_thumbnails_are_jpegs_made_once_per_video(tmp_path: Path) -> None:
    red, blue = mp4(tmp_path / "r.mp4", "red"), mp4(tmp_path / "b.mp4", "blue")
    thumbs = Counting()

    async def run() -> list[bytes]:
        return list(await asyncio.gather(*[thumbs.thumbnail(v) for v in [red] * 5 + [blue] * 5]))

    out = asyncio.run(run())
    assert all(t[:2] == b"\xff\xd8" for t in out)
    assert Counting.runs == 2
    assert out[0] != out[5]


def test_a_broken_video_is_a_non_retryable_error() -> None:
    with pytest.raises(ProviderError) as info:
        asyncio.run(FfmpegThumbnailer().thumbnail(b"not a video"))
    assert info.value.is_retryable is False
