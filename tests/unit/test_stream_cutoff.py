"""A stream client too slow to keep up is cut off, told so, and the stream ends (it used
to be left waiting on a queue nothing would ever fill again)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from services.projector.api.stream import Frame, Hub, StreamFilter, TooManyClients
from vividly.runtime.auth import Principal


def frame(seq: int) -> Frame:
    return Frame(seq, "r1", "o1", "s1", f"id: {seq}\nevent: x\ndata: {{}}\n\n")


def test_a_client_whose_queue_overflows_gets_a_resync_frame_and_the_stream_ends() -> None:
    async def go() -> list[str]:
        hub = Hub("postgresql://unused", pool=None)
        hub.last_seq = 0
        sub = hub.subscribe(StreamFilter(Principal("a", "admin")))
        stream = hub.stream(sub, None, lambda: False)
        out = [await stream.__anext__()]  # the "connected" comment: subscribed now
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


def big(seq: int, size: int) -> Frame:
    return Frame(seq, "r1", "o1", "s1", f"id: {seq}\nevent: x\ndata: {'x' * size}\n\n")


def test_a_client_over_its_byte_cap_is_cut_off_with_its_last_id() -> None:
    async def go() -> tuple[list[str], Hub]:
        hub = Hub("postgresql://unused", pool=None, max_client_bytes=64 * 1024)
        sub = hub.subscribe(StreamFilter(Principal("a", "admin")))
        stream = hub.stream(sub, None, lambda: False)
        out = [await stream.__anext__()]
        hub._fan_out([big(i, 1000) for i in range(1, 101)])  # ~100 KB for a 64 KiB cap
        assert sub.dropped
        assert sub.queue.qsize() < 100
        async with asyncio.timeout(10):
            out.extend([chunk async for chunk in stream])
        return out, hub

    chunks, hub = asyncio.run(go())
    text = "".join(chunks[1:])
    delivered = text.count("id: ")
    assert 50 < delivered < 100  # what fitted under the cap, in order, then the resync
    assert text.rstrip().endswith(f'"last_event_id":{delivered}}}'), text[-120:]
    assert hub.cut_off == 1


def test_the_process_refuses_clients_beyond_its_cap_and_frees_places() -> None:
    hub = Hub("postgresql://unused", pool=None, max_clients=2)
    flt = StreamFilter(Principal("a", "admin"))
    first, _second = hub.subscribe(flt), hub.subscribe(flt)
    with pytest.raises(TooManyClients):
        hub.subscribe(flt)
    hub.unsubscribe(first)
    hub.subscribe(flt)  # a place freed is a place again
    assert len(hub.subscribers) == 2


def test_the_first_frame_tells_nothing_of_the_log_beyond_the_callers_scope() -> None:
    async def go() -> str:
        hub = Hub("postgresql://unused", pool=None)
        hub.last_seq = 987_654  # every school's events so far
        sub = hub.subscribe(StreamFilter(Principal("t", "teacher", "org-a")))
        stream = hub.stream(sub, None, lambda: False)
        first = await stream.__anext__()
        await stream.aclose()
        return first

    first = asyncio.run(go())
    assert "987654" not in first
    assert first.startswith("retry: ")


def test_an_admin_whose_scope_is_the_whole_log_is_told_where_live_begins() -> None:
    async def go() -> str:
        hub = Hub("postgresql://unused", pool=None)
        hub.last_seq = 987_654
        stream = hub.stream(
            hub.subscribe(StreamFilter(Principal("a", "admin"))), None, lambda: False
        )
        first = await stream.__anext__()
        await stream.aclose()
        return first

    assert "live from seq 987654" in asyncio.run(go())


def _run_response(client_leaves: bool) -> tuple[float, bool, float]:
    """An EventStreamResponse whose second write never completes (the client's socket
    is full); with ``client_leaves`` the client disconnects meanwhile. Returns the
    'stuck' closes counted, whether the body iterator was closed, and the seconds taken."""
    import time

    from services.projector.api.stream import EventStreamResponse
    from vividly import metrics

    closed = asyncio.Event()

    async def body() -> AsyncIterator[str]:
        try:
            for i in range(1, 1000):
                yield f"id: {i}\ndata: {{}}\n\n"
        finally:
            closed.set()

    async def go() -> float:
        writes = 0
        blocked = asyncio.Event()

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal writes
            if message["type"] == "http.response.body":
                writes += 1
                if writes >= 2:
                    blocked.set()
                    await asyncio.Event().wait()  # never drains

        async def receive() -> dict[str, Any]:
            if client_leaves:
                await blocked.wait()
                return {"type": "http.disconnect"}
            await asyncio.Event().wait()
            return {}

        response = EventStreamResponse(body(), send_timeout_s=1.0)
        started = time.monotonic()
        # uvicorn's ASGI spec version (2.3): Starlette then listens for the disconnect
        # in a task group and cancels the write when it comes.
        scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "GET"}
        async with asyncio.timeout(10):
            await response(scope, receive, send)
        return time.monotonic() - started

    before = metrics.sse_closed.labels("stuck")._value.get()
    took = asyncio.run(go())
    return metrics.sse_closed.labels("stuck")._value.get() - before, closed.is_set(), took


def test_a_client_that_leaves_during_a_blocked_write_is_a_disconnect_not_stuck() -> None:
    stuck, closed, took = _run_response(client_leaves=True)
    assert stuck == 0, "a disconnect was counted as a stuck client"
    assert closed, "the stream's generator (its subscriber) was not released"
    assert took < 0.9, f"the disconnect waited for the write deadline ({took:.2f} s)"


def test_a_client_that_stops_reading_is_closed_at_the_write_deadline() -> None:
    stuck, closed, took = _run_response(client_leaves=False)
    assert stuck == 1
    assert closed
    assert 0.9 <= took < 5
