"""Live events for Server-Sent Events clients, fed by the projector's NOTIFY.

One :class:`Hub` per API process holds one LISTEN connection. When the projector commits
a batch it notifies; the hub reads the new timeline rows once (``seq > last``) and hands
each row, already formatted as an SSE frame, to every subscriber whose filter matches.

A client resumes with ``Last-Event-ID``: it subscribes first, then reads what it missed
from the table, then drains the live queue skipping what it has already sent, so there is
no gap and no duplicate.

Under pressure: a process takes at most ``sse_max_clients`` clients (429 beyond it); a
subscriber whose queue holds more than ``sse_max_client_bytes`` is cut off (a ``resync``
frame with its last id, then the end); a client that does not take one write within
``sse_send_timeout_s`` is closed. Either way it reconnects with the id of the last whole
frame it read, losing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import orjson
from starlette.responses import StreamingResponse
from starlette.types import Send

from services.projector.store import LIVE_SCHEMA, NOTIFY_CHANNEL, quote_ident
from vividly import metrics
from vividly.runtime.auth import Principal

log = logging.getLogger("vividly.api.stream")
#: The LISTEN connection's name in pg_stat_activity.
HUB_APPLICATION_NAME = "vividly-sse-hub"
S = quote_ident(LIVE_SCHEMA)
_COLUMNS = (
    "seq, event_id::text AS event_id, request_id, correlation_id, organization_id, student_id,"
    " event_type, stage, attempt, severity, message, data::text AS data, producer, occurred_at,"
    " folded_at"
)


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    request_id: str | None
    organization_id: str | None
    student_id: str | None
    text: str  # the whole SSE frame


def frame_of(row: Any) -> Frame:
    body = (
        b'{"seq":%d,"event_id":%b,"request_id":%b,"correlation_id":%b,"organization_id":%b,'
        b'"event_type":%b,"stage":%b,"attempt":%b,"severity":%b,"message":%b,"producer":%b,'
        b'"occurred_at":%b,"folded_at":%b,"data":%b}'
        % (
            row["seq"],
            orjson.dumps(row["event_id"]),
            orjson.dumps(row["request_id"]),
            orjson.dumps(row["correlation_id"]),
            orjson.dumps(row["organization_id"]),
            orjson.dumps(row["event_type"]),
            orjson.dumps(row["stage"]),
            orjson.dumps(row["attempt"]),
            orjson.dumps(row["severity"]),
            orjson.dumps(row["message"]),
            orjson.dumps(row["producer"]),
            orjson.dumps(row["occurred_at"].isoformat()),
            orjson.dumps(row["folded_at"].isoformat()),
            row["data"].encode(),
        )
    )
    text = f"id: {row['seq']}\nevent: {row['event_type']}\ndata: {body.decode()}\n\n"
    return Frame(row["seq"], row["request_id"], row["organization_id"], row["student_id"], text)


def _resync(last_seq: int) -> str:
    """Told to a client cut off for being too slow: reconnect with this Last-Event-ID."""
    body = orjson.dumps({"reason": "too_slow", "last_event_id": last_seq}).decode()
    return f"event: resync\ndata: {body}\n\n"


#: Put into an idle subscriber's queue by the hub's timer: send a keep-alive comment.
HEARTBEAT = Frame(-1, None, None, None, ": heartbeat\n\n")


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """The caller's scope plus the filters it asked for."""

    who: Principal
    request_id: str | None = None
    organization_id: str | None = None

    def matches(self, f: Frame) -> bool:
        if f.request_id is None:  # breaker events: not request data; no request filter
            return self.request_id is None
        if self.request_id is not None and f.request_id != self.request_id:
            return False
        if self.organization_id is not None and f.organization_id != self.organization_id:
            return False
        return self.who.sees(f.organization_id, f.student_id)

    def sql(self, params: list[Any]) -> str:
        scope = self.who.scope_sql(params)
        where = [f"(request_id IS NULL OR {scope})"]
        if self.request_id is not None:
            params.append(self.request_id)
            where.append(f"request_id = ${len(params)}")
        if self.organization_id is not None:
            params.append(self.organization_id)
            where.append(f"(request_id IS NULL OR organization_id = ${len(params)})")
        return " AND ".join(where)


@dataclass(eq=False)
class Subscriber:
    filter: StreamFilter
    queue: asyncio.Queue[Frame | None] = field(default_factory=lambda: asyncio.Queue(10_000))
    dropped: bool = False
    pending_bytes: int = 0  # frame text queued and not yet handed to the response


class TooManyClients(Exception):
    """This process serves its maximum of stream clients: answer 429."""


class Hub:
    def __init__(
        self,
        database_url: str,
        pool: Any,
        heartbeat_s: float = 15.0,
        *,
        max_clients: int = 1024,
        max_client_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.database_url = database_url
        self.heartbeat_s = heartbeat_s
        self.max_clients = max_clients
        self.max_client_bytes = max_client_bytes
        self._ticker: asyncio.Task[None] | None = None
        self.pool = pool
        self.subscribers: set[Subscriber] = set()
        self.last_seq = 0
        self.listening = False
        self._wake = asyncio.Event()
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._stopping = False
        self.frames_sent = 0
        self.cut_off = 0
        self._folded = asyncio.Event()  # set (and replaced) on every projector commit

    async def start(self) -> None:
        await self._listen()
        self.last_seq = await self._conn.fetchval(f"SELECT coalesce(max(seq), 0) FROM {S}.events")
        self._task = asyncio.create_task(self._pump(), name="sse-hub")
        self._ticker = asyncio.create_task(self._tick(), name="sse-heartbeat")

    async def _listen(self) -> None:
        conn = await asyncpg.connect(
            self.database_url, server_settings={"application_name": HUB_APPLICATION_NAME}
        )
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        conn.add_termination_listener(self._lost)
        self._conn = conn
        self.listening = True

    def _lost(self, conn: Any) -> None:
        """The LISTEN connection ended (Postgres restarted, a network cut): not ready
        until it is back; notifications missed meanwhile are caught up by seq."""
        if conn is not self._conn or self._reconnect is not None:
            return
        self.listening = False
        log.warning("lost the LISTEN connection; reconnecting")
        self._reconnect = asyncio.create_task(self._relisten(), name="sse-relisten")

    async def _relisten(self) -> None:
        delay = 0.2
        try:
            while True:
                try:
                    await self._listen()
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("LISTEN reconnect failed; retrying", extra={"error": str(exc)})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            log.info("listening again", extra={"from_seq": self.last_seq})
            self._wake.set()  # read whatever was folded while we were away
        finally:
            self._reconnect = None

    async def stop(self) -> None:
        self.listening = False
        self._stopping = True
        for task in (self._task, self._ticker, self._reconnect):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for sub in list(self.subscribers):
            sub.queue.put_nowait(None)
        if self._conn is not None:
            await self._conn.close()

    async def _tick(self) -> None:
        """One timer for every client: a heartbeat into each queue with nothing in it
        (cheaper than a timeout per client per wait)."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            for sub in list(self.subscribers):
                if sub.queue.empty():
                    sub.queue.put_nowait(HEARTBEAT)

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._wake.set()
        folded, self._folded = self._folded, asyncio.Event()
        folded.set()

    async def visible(self, request_id: str, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the read model holds ``request_id``: checked
        now and after each projector commit. False when it does not in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            folded = self._folded  # before the check: a commit in between still wakes us
            try:
                async with self.pool.acquire() as conn:
                    found = await conn.fetchval(
                        f"SELECT 1 FROM {S}.requests WHERE request_id = $1", request_id
                    )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                # The write is in the log already: Postgres being away makes it "not
                # visible yet", never an error.
                found = None
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return bool(found)
            # A missed notification (LISTEN reconnecting) costs at most half a second.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(folded.wait(), min(remaining, 0.5))

    async def folded_past(
        self, topic: str, partition: int, offset: int, timeout_s: float
    ) -> tuple[bool, int | None]:
        """Wait (at most ``timeout_s``) until the projector has folded ``partition`` of
        ``topic`` past ``offset``: checked now and after each projector commit. Returns
        whether it has, and the partition's next offset to fold (None: nothing folded
        from it yet, or Postgres unreachable)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            folded = self._folded
            try:
                async with self.pool.acquire() as conn:
                    next_offset = await conn.fetchval(
                        f"SELECT next_offset FROM {S}.projector_offsets"
                        " WHERE topic = $1 AND partition = $2",
                        topic,
                        partition,
                    )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                next_offset = None
            if next_offset is not None and next_offset > offset:
                return True, int(next_offset)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False, None if next_offset is None else int(next_offset)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(folded.wait(), min(remaining, 0.25))

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while True:
                    rows = await self._conn.fetch(
                        f"SELECT {_COLUMNS} FROM {S}.events WHERE seq > $1 ORDER BY seq LIMIT 2000",
                        self.last_seq,
                    )
                    if not rows:
                        break
                    self._fan_out([frame_of(r) for r in rows])
                    self.last_seq = rows[-1]["seq"]
                    if len(rows) < 2000:
                        break
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                log.exception("reading new events failed; retrying")
                if self._conn is not None and self._conn.is_closed() and not self._stopping:
                    self._lost(self._conn)
                await asyncio.sleep(0.5)
                self._wake.set()

    def _fan_out(self, frames: list[Frame]) -> None:
        cap = self.max_client_bytes
        for sub in list(self.subscribers):
            for f in frames:
                if sub.filter.matches(f):
                    size = len(f.text)
                    if sub.pending_bytes + size > cap:
                        self._drop(sub)
                        break
                    try:
                        sub.queue.put_nowait(f)
                    except asyncio.QueueFull:
                        self._drop(sub)
                        break
                    sub.pending_bytes += size

    def _drop(self, sub: Subscriber) -> None:
        """Cut off a subscriber that cannot keep up. Its queue is full, so the end marker
        may not fit: the stream checks ``dropped`` once the queue is drained, tells the
        client (a ``resync`` frame with the last id it was sent) and closes."""
        sub.dropped = True
        self.cut_off += 1
        metrics.sse_closed.labels("too_slow").inc()
        self.unsubscribe(sub)
        with contextlib.suppress(asyncio.QueueFull):
            sub.queue.put_nowait(None)

    def subscribe(self, flt: StreamFilter) -> Subscriber:
        """A new client's place, from now; TooManyClients when the process is full."""
        if len(self.subscribers) >= self.max_clients:
            metrics.sse_closed.labels("refused").inc()
            raise TooManyClients(f"this API process serves {self.max_clients} stream clients")
        sub = Subscriber(flt)
        self.subscribers.add(sub)
        metrics.sse_clients.set(len(self.subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        metrics.sse_clients.set(len(self.subscribers))

    async def stream(
        self,
        sub: Subscriber,
        last_event_id: int | None,
        disconnected: Any,
    ) -> AsyncGenerator[str, None]:
        """SSE frames for one subscribed client, from after ``last_event_id`` (else from
        now). The first frame says nothing of the log beyond the caller's scope."""
        flt = sub.filter
        try:
            # An admin's scope is the whole log, so it is told where live begins; anyone
            # else learns nothing of the log beyond its scope.
            where = f", live from seq {self.last_seq}" if flt.who.role == "admin" else ""
            yield f"retry: 2000\n: connected{where}\n\n"
            sent = self.last_seq if last_event_id is None else last_event_id
            if last_event_id is not None:
                async for old in self._backfill(flt, last_event_id):
                    yield old.text
                    sent = old.seq
            queue = sub.queue
            while True:
                if sub.dropped and queue.empty():
                    yield _resync(sent)
                    return
                first = await queue.get()  # a frame, a heartbeat tick, or None (end)
                # Whatever else is queued goes out in the same write.
                batch = [first]
                while batch[-1] is not None and not queue.empty():
                    batch.append(queue.get_nowait())
                chunk: list[str] = []
                for frame in batch:
                    if frame is None:  # cut off (too slow) or shutting down: client resumes
                        if sub.dropped:
                            chunk.append(_resync(sent))
                        if chunk:
                            yield "".join(chunk)
                        return
                    if frame is HEARTBEAT:
                        if not chunk and await disconnected():
                            return
                        chunk.append(": heartbeat\n\n")
                    else:
                        sub.pending_bytes -= len(frame.text)
                        if frame.seq > sent:
                            sent = frame.seq
                            chunk.append(frame.text)
                if chunk:
                    self.frames_sent += len(chunk)
                    yield "".join(chunk)
        finally:
            self.unsubscribe(sub)

    async def _backfill(self, flt: StreamFilter, after: int) -> AsyncIterator[Frame]:
        while True:
            params: list[Any] = [after]
            where = flt.sql(params)
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM {S}.events WHERE seq > $1 AND {where}"
                    " ORDER BY seq LIMIT 1000",
                    *params,
                )
            for r in rows:
                yield frame_of(r)
            if len(rows) < 1000:
                return
            after = rows[-1]["seq"]


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse whose every write must complete within ``send_timeout_s``: a
    client that stops reading is closed (its subscriber freed) instead of holding a slot
    and a growing queue. The client resumes with the id of the last whole frame it read;
    a frame cut short is never dispatched by an SSE parser."""

    def __init__(self, content: AsyncIterator[str], send_timeout_s: float, **kw: Any) -> None:
        super().__init__(content, media_type="text/event-stream", **kw)
        self.send_timeout_s = send_timeout_s

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        iterator = self.body_iterator
        async for chunk in iterator:
            body = chunk.encode(self.charset) if isinstance(chunk, str) else bytes(chunk)
            # anyio's cancel scope, not asyncio.wait_for: that made a new task for every
            # write (a third of the API's busy samples with 1000 clients). It is the
            # library Starlette itself cancels this write with when the client goes.
            # (asyncio.timeout was tried first; the fault suite's stream client then
            # twice failed to catch up after the API was killed, cause not found.)
            with anyio.move_on_after(self.send_timeout_s) as deadline:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if deadline.cancelled_caught:
                metrics.sse_closed.labels("stuck").inc()
                log.warning(
                    "closing a stream client that stopped reading",
                    extra={"timeout_s": self.send_timeout_s},
                )
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()  # frees its subscriber now
                # Returning without the final body message makes the server close the
                # connection.
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
