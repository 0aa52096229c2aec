"""A stream client too slow to keep up is cut off, told so, and the stream ends (it used
to be left waiting on a queue nothing would ever fill again)."""

from __future__ import annotations

import asyncio

from services.projector.api.stream import Frame, Hub, StreamFilter
from vividly.auth import Principal


def frame(seq: int) -> Frame:
    return Frame(seq, "r1", "o1", "s1", f"id: {seq}\nevent: x\ndata: {{}}\n\n")


def test_a_client_whose_queue_overflows_gets_a_resync_frame_and_the_stream_ends() -> None:
    async def go() -> list[str]:
        hub = Hub("postgresql://unused", pool=None)
        hub.last_seq = 0
        stream = hub.stream(StreamFilter(Principal("a", "admin")), None, lambda: False)
        out = [await stream.__anext__()]  # the "connected" comment: subscribed now
        [sub] = hub.subscribers
        n = sub.queue.maxsize + 5
        hub._fan_out([frame(i) for i in range(1, n + 1)])  # more than its queue holds
        assert sub.dropped
        assert hub.subscribers == set()
        async with asyncio.timeout(10):  # it must end, not hang
            out.extend([chunk async for chunk in stream])
        return out

    chunks = asyncio.run(go())
    text = "".join(chunks[1:])
    assert text.count("id: ") == 10_000, "what was queued is delivered"
    assert text.rstrip().endswith('"last_event_id":10000}'), text[-200:]
    assert "event: resync" in text
