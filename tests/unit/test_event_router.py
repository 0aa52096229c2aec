"""Dispatch by event type through a registry; unknown future events are skipped."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.test_events import _varint
from vividly.bus import Delivery, EventRouter, Outgoing
from vividly.events import Envelope, MessageHeaders, StageCompleted, StageStarted


def delivery() -> Delivery:
    return Delivery("tracking.events", 0, 0, b"r", MessageHeaders.parse(None), 0)


def test_each_event_goes_to_the_handler_for_its_type_and_unknown_ones_are_skipped() -> None:
    seen: list[tuple[str, str]] = []

    async def on_started(_d: Delivery, env: Envelope, ev: Any) -> list[Outgoing]:
        seen.append(("started", ev.stage))
        return []

    async def on_completed(_d: Delivery, env: Envelope, ev: Any) -> None:
        seen.append(("completed", ev.stage))

    router = EventRouter({StageStarted: on_started, StageCompleted: on_completed})
    started = Envelope(request_id="r")
    started.stage_started.stage = "validation"
    completed = Envelope(request_id="r")
    completed.stage_completed.stage = "validation"
    logged = Envelope(request_id="r")
    logged.event_logged.message = "no handler registered for this one"
    future = Envelope()
    future.ParseFromString(
        Envelope(request_id="r", schema_version=9).SerializeToString()
        + _varint(99 << 3 | 2)
        + _varint(2)
        + b"\x08\x01"
    )

    async def run() -> None:
        for env in (started, future, logged, completed):
            await router(delivery(), env)

    asyncio.run(run())
    assert seen == [("started", "validation"), ("completed", "validation")]
    assert router.skipped == {"unknown": 1, "event_logged": 1}
