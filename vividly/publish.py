"""Publishing to Kafka without blocking the caller on the network.

:class:`KafkaPublisher` wraps one confluent-kafka ``Producer`` (idempotent, acks=all,
compressed). ``publish`` only enqueues into librdkafka's buffer; a poller thread serves
delivery reports. Every failed delivery is logged and counted, and :meth:`flush` reports
what was delivered, what failed and what was still pending.

Each publish gets a sequence number, and :meth:`delivered_through` says up to which
sequence number everything has been acknowledged by the broker. A failed delivery is
never "settled": the number stops below it for good, so the consumer loop, which commits
an input's offset only once everything produced while handling it (outputs and tracking
events alike) is durable, never commits past it; ``when_delivered`` tells its callback
that the wait ended in a failure, and the loop stops so the input is redelivered.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from confluent_kafka import KafkaError, KafkaException, Producer

from vividly import metrics, tracing
from vividly.config import TRACKING_TOPIC, Settings
from vividly.events import H_CORRELATION, H_TRACEPARENT, H_TYPE

if TYPE_CHECKING:
    from google.protobuf.message import Message as ProtoMessage

    from vividly.events import WorkItem

log = logging.getLogger("vividly.publish")

Headers = list[tuple[str, bytes]]
DeliveryCallback = Callable[[KafkaError | None, Any], None]


class PublishError(RuntimeError):
    """The message could not even be queued (buffer full past the wait, bad config)."""


class DeliveryFailed(RuntimeError):
    """A message was not acknowledged by the broker (it failed after librdkafka's own
    retries, or no report came in time). Not retryable by the caller: a consumer stops so
    its input is redelivered; the API answers 503."""

    is_retryable = False


def message_headers(type_name: str, correlation_id: str = "", traceparent: str = "") -> Headers:
    """The headers every message of ours carries: its protobuf type, and the correlation
    id and W3C traceparent when there are any."""
    headers: Headers = [(H_TYPE, type_name.encode())]
    if correlation_id:
        headers.append((H_CORRELATION, correlation_id.encode()))
    if traceparent:
        headers.append((H_TRACEPARENT, traceparent.encode()))
    return headers


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish: topic, key, value and headers."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers = field(default_factory=list)

    @classmethod
    def of(
        cls,
        topic: str,
        key: str,
        message: ProtoMessage,
        correlation_id: str = "",
        traceparent: str = "",
    ) -> Outgoing:
        headers = message_headers(message.DESCRIPTOR.full_name, correlation_id, traceparent)
        return cls(topic, key.encode(), message.SerializeToString(), headers)

    @classmethod
    def work_item(cls, topic: str, item: WorkItem) -> Outgoing:
        """``item`` keyed by its request id, with its own correlation id and traceparent."""
        return cls.of(topic, item.request_id, item, item.correlation_id, item.traceparent)


@dataclass(slots=True)
class FailedDelivery:
    topic: str
    key: bytes | None
    error: str


@dataclass(slots=True)
class FlushReport:
    """What :meth:`Publisher.flush` found: counts since the publisher started."""

    published: int
    delivered: int
    failed: int
    pending: int
    failures: list[FailedDelivery] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.pending == 0


class Publisher(Protocol):
    """What the tracker and the consumer loop need from a message bus producer."""

    def publish(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Headers,
        on_delivery: DeliveryCallback | None = None,
    ) -> int:
        """Queue one message; returns its sequence number. Never waits on the network."""
        ...

    def delivered_through(self) -> int:
        """Highest n such that every message with sequence ≤ n is acknowledged by the
        broker. It never passes a message whose delivery failed."""
        ...

    def last_seq(self) -> int: ...

    def when_delivered(self, seq: int, callback: Callable[[bool], None]) -> None:
        """Call ``callback(ok)`` (from any thread) once everything up to ``seq`` is
        settled: ``ok`` is False when any of those deliveries failed."""
        ...

    def flush(self, timeout: float = 30.0) -> FlushReport: ...


class CompletionWindow:
    """Numbers handed out in increasing order that finish in any order.

    ``low()`` is the smallest unfinished number (None when all are finished), so
    "everything below low() is done". Used for producer sequence numbers and for
    consumer offsets per partition.
    """

    __slots__ = ("_done", "_last", "_pending")

    def __init__(self, first: int = 0) -> None:
        self._pending: collections.deque[int] = collections.deque()
        self._done: set[int] = set()
        self._last = first - 1  # "done through" before anything was added

    def add(self, n: int) -> None:
        self._pending.append(n)
        self._last = n

    def finish(self, n: int) -> None:
        pending = self._pending
        if pending and pending[0] == n:
            pending.popleft()
            done = self._done
            while pending and pending[0] in done:
                done.discard(pending.popleft())
        else:
            self._done.add(n)

    def low(self) -> int | None:
        return self._pending[0] if self._pending else None

    def done_through(self) -> int:
        """Highest n with everything ≤ n finished (−1 when nothing is)."""
        return self._pending[0] - 1 if self._pending else self._last

    def __len__(self) -> int:
        return len(self._pending) - len(self._done)


def producer_config(settings: Settings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.producer_compression,
        "linger.ms": settings.producer_linger_ms,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": settings.producer_queue_max_messages,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": settings.delivery_timeout_ms,
    }


class KafkaPublisher:
    """The real :class:`Publisher`: one librdkafka producer plus a delivery-report thread."""

    def __init__(
        self,
        settings: Settings,
        client_id: str = "vividly",
        *,
        queue_full_wait_s: float = 5.0,
        max_failures_kept: int = 1000,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        conf = producer_config(settings, client_id)
        conf.update(extra_config or {})
        conf["error_cb"] = self._on_error
        conf["logger"] = logging.getLogger("librdkafka")
        self._producer = Producer(conf)
        self._queue_full_wait_s = queue_full_wait_s
        self._lock = threading.Lock()
        self._seq = 0
        self._window = CompletionWindow(first=1)
        self._first_failed: int | None = None  # lowest sequence number that failed
        self._waiters: list[tuple[int, int, Callable[[bool], None]]] = []
        self.published = 0
        self.delivered = 0
        self.failed = 0
        self.failures: collections.deque[FailedDelivery] = collections.deque(
            maxlen=max_failures_kept
        )
        self._published_by_topic: dict[str, Any] = {}
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve, name=f"{client_id}-dr", daemon=True)
        self._poller.start()

    # -- Publisher ---------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Headers,
        on_delivery: DeliveryCallback | None = None,
    ) -> int:
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._window.add(seq)
        callback = _Delivery(self, seq, on_delivery)
        deadline = 0.0
        while True:
            try:
                self._producer.produce(
                    topic, value, key, headers=cast(Any, headers), on_delivery=callback
                )
                break
            except BufferError:
                # librdkafka's queue is full: wait for deliveries to free room, bounded.
                now = time.monotonic()
                if not deadline:
                    deadline = now + self._queue_full_wait_s
                elif now > deadline:
                    self._settle(seq, f"local queue full for {self._queue_full_wait_s}s")
                    raise PublishError(
                        f"producer queue full for {self._queue_full_wait_s}s "
                        f"({len(self._producer)} messages waiting); is the broker reachable?"
                    ) from None
                self._producer.poll(0.01)
            except KafkaException as exc:
                self._settle(seq, str(exc))
                raise PublishError(f"cannot publish to {topic}: {exc}") from exc
        self.published += 1
        counter = self._published_by_topic.get(topic)
        if counter is None:
            counter = self._published_by_topic[topic] = metrics.events_published.labels(topic)
        counter.inc()
        return seq

    def delivered_through(self) -> int:
        with self._lock:
            return _acked_through(self._window.done_through(), self._first_failed)

    def last_seq(self) -> int:
        return self._seq

    def when_delivered(self, seq: int, callback: Callable[[bool], None]) -> None:
        with self._lock:
            if self._window.done_through() < seq:
                heapq.heappush(self._waiters, (seq, id(callback), callback))
                return
            ok = self._first_failed is None or self._first_failed > seq
        callback(ok)

    def flush(self, timeout: float = 30.0) -> FlushReport:
        """Wait up to ``timeout`` for queued messages; report, and log, what did not make it."""
        pending = self._producer.flush(timeout)
        report = FlushReport(
            published=self.published,
            delivered=self.delivered,
            failed=self.failed,
            pending=pending,
            failures=list(self.failures),
        )
        # flush(0) is a poll: messages still on their way then are not a failure.
        if report.failed or (pending and timeout > 0):
            log.error(
                "undelivered messages at flush",
                extra={"failed": report.failed, "pending": report.pending},
            )
        return report

    def close(self, timeout: float = 30.0) -> FlushReport:
        report = self.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=2)
        return report

    # -- internals ---------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _settle(
        self, seq: int, error: str | None, topic: str = "", key: bytes | None = None
    ) -> None:
        ready: list[tuple[Callable[[bool], None], bool]] = []
        with self._lock:
            if error is not None and (self._first_failed is None or seq < self._first_failed):
                self._first_failed = seq
            self._window.finish(seq)
            if self._waiters:
                through = self._window.done_through()
                failed = self._first_failed
                while self._waiters and self._waiters[0][0] <= through:
                    waited, _, callback = heapq.heappop(self._waiters)
                    ready.append((callback, failed is None or failed > waited))
        for callback, ok in ready:
            callback(ok)
        if error is None:
            self.delivered += 1
        else:
            self.failed += 1
            metrics.publish_failures.labels(topic or "unknown").inc()
            self.failures.append(FailedDelivery(topic, key, error))
            log.error(
                "delivery failed",
                extra={
                    "topic": topic,
                    "key": key.decode("utf-8", "replace") if key else None,
                    "error": error,
                },
            )

    def _on_error(self, err: KafkaError) -> None:
        level = logging.ERROR if err.fatal() else logging.WARNING
        log.log(level, "kafka client error", extra={"error": str(err), "fatal": err.fatal()})


def _acked_through(done_through: int, first_failed: int | None) -> int:
    """Everything ≤ the result is settled *and* acknowledged."""
    return done_through if first_failed is None else min(done_through, first_failed - 1)


class _Delivery:
    """Per-message delivery callback carrying the message's sequence number."""

    __slots__ = ("_cb", "_pub", "_seq")

    def __init__(self, pub: KafkaPublisher, seq: int, cb: DeliveryCallback | None) -> None:
        self._pub = pub
        self._seq = seq
        self._cb = cb

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self._pub._settle(self._seq, None)
        else:
            self._pub._settle(self._seq, str(err), msg.topic(), msg.key())
        if self._cb is not None:
            self._cb(err, msg)


async def delivered(publisher: Publisher, seq: int) -> None:
    """Wait until everything ``publisher`` published up to ``seq`` is acknowledged; raise
    :class:`DeliveryFailed` if any of it failed."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str | None] = loop.create_future()

    def done(ok: bool) -> None:
        loop.call_soon_threadsafe(_settle, fut, None if ok else "failed")

    publisher.when_delivered(seq, done)
    if await fut is not None:
        raise DeliveryFailed(
            "a message published while handling this input was not delivered; "
            "stopping so the input is redelivered"
        )


async def publish_acked(
    publisher: Publisher,
    messages: Sequence[tuple[str, bytes, bytes, Headers]],
    timeout: float | None = None,
) -> list[tuple[int, int]]:
    """Publish ``messages`` and wait for each one's own delivery report (not the
    producer's watermark: one old failure must not fail every later call); raise
    :class:`DeliveryFailed` unless the broker acknowledged every one, within ``timeout``
    seconds when one is given. Returns each message's (partition, offset)."""
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[str | None]] = []
    landed: list[tuple[int, int]] = [(-1, -1)] * len(messages)
    for i, (topic, key, value, headers) in enumerate(messages):
        fut: asyncio.Future[str | None] = loop.create_future()
        # A work item handed on is a hop of the request's trace (tracking events are
        # not: their traceparent names the span they were published under).
        span, headers = (
            tracing.send_span(topic, key, headers)
            if topic != TRACKING_TOPIC
            else (None, list(headers))
        )

        def done(
            err: Any,
            msg: Any,
            fut: asyncio.Future[str | None] = fut,
            i: int = i,
            span: Any = span,
        ) -> None:
            if err is None and msg is not None:
                landed[i] = (msg.partition(), msg.offset())
            tracing.end_send(span, *landed[i], None if err is None else str(err))
            loop.call_soon_threadsafe(_settle, fut, None if err is None else str(err))

        try:
            publisher.publish(topic, key, value, headers, on_delivery=done)
        except BaseException as exc:
            tracing.end_send(span, -1, -1, f"{type(exc).__name__}: {exc}")
            raise
        futs.append(fut)
    try:
        errors = await asyncio.wait_for(asyncio.gather(*futs), timeout)
    except TimeoutError as exc:
        raise DeliveryFailed(f"the event log did not acknowledge within {timeout:.0f} s") from exc
    failed = [e for e in errors if e is not None]
    if failed:
        topic = messages[errors.index(failed[0])][0]
        raise DeliveryFailed(
            f"the event log refused {len(failed)} message(s) (first to {topic}): {failed[0]}"
        )
    return landed


def _settle(fut: asyncio.Future[str | None], error: str | None) -> None:
    if not fut.done():
        fut.set_result(error)
