"""An SMTP server that accepts every message and stores it on disk, one ``.eml`` each.

python -m emulators.smtp_sink --port 8025 --dir .vividly/mail
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop
from aiosmtpd.controller import Controller


class StoreOnDisk:
    """Stores every message. The latency knob: a number of seconds written to
    ``<dir>/_latency`` holds every MAIL FROM that long (read per message), so a sender
    can be caught, deterministically, after it claimed an email and before any of it was
    sent (the fault suite kills notify there)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.knob = directory / "_latency"
        directory.mkdir(parents=True, exist_ok=True)

    def latency(self) -> float:
        try:
            return max(0.0, float(self.knob.read_text().strip() or 0))
        except (OSError, ValueError):
            return 0.0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        delay = self.latency()
        if delay:
            await asyncio.sleep(delay)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        tmp = self.directory / (name + ".tmp")
        tmp.write_bytes(envelope.original_content or envelope.content)
        tmp.replace(self.directory / name)
        return "250 Message accepted for delivery"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m emulators.smtp_sink")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8025)
    p.add_argument("--dir", type=Path, required=True)
    args = p.parse_args(argv)
    controller = Controller(
        StoreOnDisk(args.dir), hostname=args.host, port=args.port, loop=uvloop.new_event_loop()
    )
    controller.start()

    async def wait() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
