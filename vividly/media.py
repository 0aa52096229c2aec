"""Running ffmpeg from asyncio (the video emulator's renders, the video stage's thumbnails)."""

from __future__ import annotations

import asyncio


class FfmpegError(RuntimeError):
    """ffmpeg exited non-zero; the message is the tail of what it printed."""


async def ffmpeg(*args: str) -> None:
    """Run ``ffmpeg -hide_banner -loglevel error -y ARGS``; raise :class:`FfmpegError`."""
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise FfmpegError(err.decode(errors="replace")[-300:])
