"""The one consumer loop every service runs, plus topic creation.

``ConsumerLoop`` subscribes to its topics and, for each message: decodes it by the type
named in its ``vividly-type`` header, dispatches it to the handler registered for that
protobuf type, publishes the handler's outputs, and marks the message done once those
outputs (and every tracking event published meanwhile) are acknowledged by the broker.

- Many messages are handled at once (``max_in_flight``), yet the offset committed for a
  partition never passes its oldest unfinished message: at-least-once, nothing skipped.
- Messages with the same key are handled one after another, in offset order.
- A message that cannot be decoded, has no handler, or whose handler raises anything but
  :class:`RetryableError` goes to ``requests.dlq`` with the reason in its headers, and the
  loop goes on. :class:`RetryableError` is retried with backoff, then dead-lettered.
- SIGTERM/SIGINT (or :meth:`ConsumerLoop.stop`): stop taking messages, let those in
  flight finish (bounded by ``drain_timeout_s``), commit, close.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from vividly import metrics
from vividly.config import DLQ_TOPIC, TRACKING_TOPIC, Settings
from vividly.events import (
    H_CORRELATION,
    H_TRACEPARENT,
    H_TYPE,
    Envelope,
    MessageHeaders,
    WorkItem,
)
from vividly.logs import log_context
from vividly.publish import CompletionWindow, Headers, Publisher
from vividly.tracker import RequestContext, current_request

log = logging.getLogger("vividly.bus")

#: Message types the loop can decode, by their ``vividly-type`` header.
DECODERS: dict[str, type[ProtoMessage]] = {
    Envelope.DESCRIPTOR.full_name: Envelope,
    WorkItem.DESCRIPTOR.full_name: WorkItem,
}


class DeliveryFailed(RuntimeError):
    """A message produced while handling an input was not acknowledged by the broker."""


class RetryableError(Exception):
    """A handler failure worth trying again (timeouts, 503s): retried with backoff."""

    is_retryable = True


class PermanentError(Exception):
    """A handler failure that will not get better: the message is dead-lettered."""

    is_retryable = False


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message a handler wants published once it has finished."""

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
        headers: Headers = [(H_TYPE, message.DESCRIPTOR.full_name.encode())]
        if correlation_id:
            headers.append((H_CORRELATION, correlation_id.encode()))
        if traceparent:
            headers.append((H_TRACEPARENT, traceparent.encode()))
        return cls(topic, key.encode(), message.SerializeToString(), headers)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a consumed message came from, handed to the handler with the message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: MessageHeaders
    timestamp_ms: int


Handler = Callable[[Delivery, Any], Awaitable[Sequence[Outgoing] | None]]


@dataclass(slots=True)
class LoopStats:
    consumed: int = 0
    handled: int = 0
    dead_lettered: int = 0
    retried: int = 0
    commits: int = 0
    in_flight: int = 0


def topic_config(settings: Settings, name: str) -> dict[str, str]:
    """Per-topic configuration: ``tracking.events`` is the source of truth, so it is kept
    for ``tracking_retention_ms`` (forever by default), never Kafka's 7-day default."""
    if name == TRACKING_TOPIC:
        return {"retention.ms": str(settings.tracking_retention_ms), "retention.bytes": "-1"}
    return {}


def ensure_topics(settings: Settings, topics: Mapping[str, int], timeout: float = 30.0) -> None:
    """Create ``topics`` (name → partitions) if missing, with :func:`topic_config`; an
    existing topic keeps its partitions but gets its configuration applied."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = admin.list_topics(timeout=timeout).topics
    missing = [
        NewTopic(
            name,
            num_partitions=parts,
            replication_factor=settings.replication_factor,
            config=topic_config(settings, name),
        )
        for name, parts in topics.items()
        if name not in existing
    ]
    for name, fut in (
        admin.create_topics(missing, operation_timeout=timeout).items() if missing else ()
    ):
        try:
            fut.result(timeout)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        log.info("topic ready", extra={"topic": name})
    _apply_topic_configs(admin, settings, [t for t in topics if t in existing], timeout)
    # Metadata for new topics can lag behind the create on some brokers.
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        known = admin.list_topics(timeout=timeout).topics
        if all(t in known and not known[t].error for t in topics):
            return
        time.sleep(0.1)


def _apply_topic_configs(
    admin: AdminClient, settings: Settings, names: Sequence[str], timeout: float
) -> None:
    """Bring existing topics' configuration to :func:`topic_config` (only what differs)."""
    wanted = {n: topic_config(settings, n) for n in names}
    resources = [ConfigResource(ResourceType.TOPIC, n) for n, c in wanted.items() if c]
    if not resources:
        return
    changes = []
    for res, fut in admin.describe_configs(resources, request_timeout=timeout).items():
        current = fut.result(timeout)
        entries = [
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in wanted[res.name].items()
            if k not in current or current[k].value != v
        ]
        if entries:
            changes.append(
                ConfigResource(ResourceType.TOPIC, res.name, incremental_configs=entries)
            )
    if not changes:
        return
    for res, fut in admin.incremental_alter_configs(changes, request_timeout=timeout).items():
        fut.result(timeout)
        log.info("topic configuration applied", extra={"topic": res.name})


def consumer_config(settings: Settings, group_id: str, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 6),
        "max.poll.interval.ms": 300_000,
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        **(
            {
                "statistics.interval.ms": settings.kafka_stats_interval_ms,
                "stats_cb": metrics.record_kafka_stats,
            }
            if settings.kafka_stats_interval_ms
            else {}
        ),
    }


class _PartitionState:
    """Offsets of one assigned partition: what is in flight and what may be committed."""

    __slots__ = ("candidates", "committed", "window")

    def __init__(self) -> None:
        self.window = CompletionWindow()
        # (commit offset, producer seq that must be acknowledged before committing it)
        self.candidates: list[tuple[int, int]] = []
        self.committed = -1


class ConsumerLoop:
    """Consume ``topics`` as ``group_id``, dispatch by type, publish, commit after success."""

    def __init__(
        self,
        *,
        settings: Settings,
        group_id: str,
        topics: Sequence[str],
        publisher: Publisher,
        handlers: Mapping[type[ProtoMessage], Handler],
        produces: Sequence[str] = (),
        gates: Sequence[Callable[[], bool]] = (),
        name: str = "vividly",
        topic_partitions: Mapping[str, int] | None = None,
        dlq_topic: str = DLQ_TOPIC,
        max_in_flight: int | None = None,
        extra_consumer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.topics = list(topics)
        self.publisher = publisher
        self.handlers = dict(handlers)
        self.name = name
        self.dlq_topic = dlq_topic
        self.gates = list(gates)
        self.max_in_flight = max_in_flight or settings.max_in_flight
        self.topic_partitions = {
            t: settings.topic_partitions for t in [*self.topics, *produces, dlq_topic]
        }
        self.topic_partitions.update(topic_partitions or {})
        conf = consumer_config(settings, group_id, name)
        conf.update(extra_consumer_config or {})
        conf["logger"] = logging.getLogger("librdkafka")
        self._consumer_conf = conf
        self.stats = LoopStats()
        self._partitions: dict[tuple[str, int], _PartitionState] = {}
        self._key_tails: dict[bytes, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Read when scraped: nothing to keep up to date per message.
        metrics.items_in_flight.labels(name).set_function(lambda: len(self._tasks))
        self._stopping = threading.Event()
        self._fatal: BaseException | None = None
        self._paused = False
        self._consumer: Consumer | None = None
        self._aio: asyncio.AbstractEventLoop | None = None
        # One thread owns every call into the consumer.
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-consumer")
        self.ready = threading.Event()

    # ----------------------------------------------------------------- control
    def stop(self) -> None:
        """Ask the loop to drain and exit (thread-safe, signal-safe)."""
        self._stopping.set()

    async def run(self) -> None:
        """Run until :meth:`stop` or SIGTERM/SIGINT; drains and commits on the way out."""
        self._aio = asyncio.get_running_loop()
        installed = self._install_signals()
        ensure_topics(self.settings, self.topic_partitions)
        consumer = Consumer(self._consumer_conf)
        self._consumer = consumer
        await self._call(
            consumer.subscribe,
            self.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info(
            "consumer loop started",
            extra={
                "group": self.group_id,
                "topics": self.topics,
                "max_in_flight": self.max_in_flight,
            },
        )
        last_commit = time.monotonic()
        try:
            while not self._stopping.is_set():
                if self._fatal is not None:
                    raise self._fatal
                room = self.max_in_flight - len(self._tasks)
                # A closed gate (say, an open circuit breaker) stops new input; work in
                # flight carries on.
                await self._set_paused(room <= 0 or not all(g() for g in self.gates))
                batch = await self._call(
                    _take, consumer, max(room, 1), 0.05 if self._tasks else 0.2
                )
                for msg in batch:
                    self._accept(msg)
                now = time.monotonic()
                if now - last_commit >= self.settings.commit_interval_s:
                    await self._commit()
                    last_commit = now
            await self._drain()
        finally:
            await self._commit(final=True)
            await self._call(consumer.close)
            self._io.shutdown(wait=True)
            for sig in installed:
                self._aio.remove_signal_handler(sig)
            log.info(
                "consumer loop stopped",
                extra={
                    "group": self.group_id,
                    "handled": self.stats.handled,
                    "dead_lettered": self.stats.dead_lettered,
                },
            )

    # ----------------------------------------------------------------- per message
    def _accept(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error", extra={"error": str(err)})
            return
        self.stats.consumed += 1
        tp = (cast(str, msg.topic()), cast(int, msg.partition()))
        state = self._partitions.get(tp)
        if state is None:  # message from a partition assigned before our callback ran
            state = self._partitions[tp] = _PartitionState()
        offset = cast(int, msg.offset())
        state.window.add(offset)
        key = msg.key() or b""
        previous = self._key_tails.get(key) if key else None
        task = asyncio.create_task(self._process(msg, state, offset, previous))
        self._tasks.add(task)
        self.stats.in_flight = len(self._tasks)
        if key:
            self._key_tails[key] = task
        task.add_done_callback(functools.partial(self._forget, key=key))

    def _forget(self, task: asyncio.Task[None], *, key: bytes) -> None:
        self._tasks.discard(task)
        self.stats.in_flight = len(self._tasks)
        if key and self._key_tails.get(key) is task:
            del self._key_tails[key]
        if not task.cancelled() and task.exception() is not None and self._fatal is None:
            self._fatal = task.exception()

    async def _process(
        self,
        msg: Message,
        state: _PartitionState,
        offset: int,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        headers = MessageHeaders.parse(cast(Any, msg.headers()))
        topic, partition = cast(str, msg.topic()), cast(int, msg.partition())
        delivery = Delivery(topic, partition, offset, msg.key(), headers, msg.timestamp()[1])
        value: bytes = msg.value() or b""
        if len(value) > self.settings.max_message_bytes:
            await self._dead_letter(
                msg,
                headers,
                "oversized",
                f"{len(value)} bytes; the limit is {self.settings.max_message_bytes}",
            )
            self._finish(topic, partition, state, offset)
            return
        decoded = self._decode(headers, value)
        if isinstance(decoded, str):
            await self._dead_letter(msg, headers, "decode_error", decoded)
        else:
            handler = self.handlers.get(type(decoded))
            if handler is None:
                await self._dead_letter(
                    msg, headers, "no_handler", f"no handler for {type(decoded).__name__}"
                )
            else:
                await self._handle(msg, delivery, decoded, handler)
        self._finish(topic, partition, state, offset)

    def _decode(self, headers: MessageHeaders, value: bytes) -> ProtoMessage | str:
        type_name = headers.type_name
        if type_name is None:
            if len(self.handlers) != 1:
                return "no vividly-type header and more than one handler registered"
            cls = next(iter(self.handlers))
        else:
            found = DECODERS.get(type_name)
            if found is None:
                return f"unknown message type {type_name!r}"
            cls = found
        try:
            obj = cls()
            obj.ParseFromString(value)
        except DecodeError as exc:
            return f"cannot decode {cls.DESCRIPTOR.full_name}: {exc}"
        return obj

    async def _handle(
        self, msg: Message, delivery: Delivery, decoded: ProtoMessage, handler: Handler
    ) -> None:
        ctx_token = None
        log_token = None
        request_id = getattr(decoded, "request_id", "")
        if request_id:
            corr = getattr(decoded, "correlation_id", "") or delivery.headers.correlation_id or ""
            item = decoded if isinstance(decoded, WorkItem) else None
            ctx_token = current_request.set(
                RequestContext(
                    request_id=request_id,
                    correlation_id=corr,
                    traceparent=delivery.headers.traceparent or "",
                    attempt=item.attempt if item is not None and item.attempt else 1,
                    work_item=item,
                )
            )
            log_token = log_context.set({"request_id": request_id, "correlation_id": corr})
        try:
            attempt = 0
            while True:
                attempt += 1
                try:
                    outputs = await handler(delivery, decoded)
                    break
                except Exception as exc:
                    if is_transient(exc):
                        # Not this message's fault (Postgres restarting, a connection
                        # cut): wait and try again for as long as it takes; a transient
                        # outage never dead-letters work.
                        delay = min(
                            5.0, self.settings.handler_retry_backoff_s * 2 ** min(attempt, 10)
                        )
                        if attempt == 1 or attempt % 10 == 0:
                            log.warning(
                                "infrastructure unavailable; retrying the message",
                                extra={"attempt": attempt, "delay_s": delay, "error": repr(exc)},
                            )
                        await asyncio.sleep(delay)
                        continue
                    if not isinstance(exc, RetryableError):
                        await self._dead_letter(
                            msg, delivery.headers, "handler_error", f"{type(exc).__name__}: {exc}"
                        )
                        return
                    if attempt >= self.settings.handler_max_attempts:
                        await self._dead_letter(
                            msg,
                            delivery.headers,
                            "retries_exhausted",
                            f"{type(exc).__name__}: {exc}",
                        )
                        return
                    self.stats.retried += 1
                    delay = self.settings.handler_retry_backoff_s * (2 ** (attempt - 1))
                    log.warning(
                        "handler failed, retrying",
                        extra={"attempt": attempt, "delay_s": delay, "error": str(exc)},
                    )
                    await asyncio.sleep(delay)
            if outputs and self.settings.causal_events:
                # Every fact the handler published (tracking events) is durable before
                # the next stage can see its input: a request's events stay causal.
                await self._delivered(self.publisher.last_seq())
            for out in outputs or ():
                await self._publish_durably(out.topic, out.key, out.value, out.headers)
            self.stats.handled += 1
        finally:
            if ctx_token is not None:
                current_request.reset(ctx_token)
            if log_token is not None:
                log_context.reset(log_token)

    async def _delivered(self, seq: int) -> None:
        """Wait until everything published up to ``seq`` is acknowledged. A failed
        delivery (a tracking event lost after librdkafka's own retries) stops the loop:
        offsets are never committed past it, so after the restart the inputs whose
        events may be missing are redelivered, and their ledgers republish them."""
        assert self._aio is not None
        loop = self._aio
        fut: asyncio.Future[str | None] = loop.create_future()

        def done(ok: bool) -> None:
            loop.call_soon_threadsafe(_resolve, fut, None if ok else "failed")

        self.publisher.when_delivered(seq, done)
        if await fut is not None:
            raise DeliveryFailed(
                "a message published while handling this input was not delivered; "
                "stopping so the input is redelivered"
            )

    async def _publish_durably(
        self, topic: str, key: bytes, value: bytes, headers: Headers
    ) -> None:
        """Publish and wait for the broker's acknowledgement. librdkafka has retried for
        ``delivery_timeout_ms`` by the time it reports a failure, and a failed delivery
        holds back every later commit (see :mod:`vividly.publish`), so a failure stops
        the loop and the input is redelivered; trying again here could not help."""
        assert self._aio is not None
        loop = self._aio
        fut: asyncio.Future[str | None] = loop.create_future()

        def done(err: Any, _msg: Any) -> None:
            loop.call_soon_threadsafe(_resolve, fut, None if err is None else str(err))

        self.publisher.publish(topic, key, value, headers, on_delivery=done)
        error = await fut
        if error is not None:
            log.error("publish failed", extra={"topic": topic, "error": error})
            raise DeliveryFailed(
                f"could not publish to {topic} ({error}); stopping so the input is redelivered"
            )

    async def _dead_letter(
        self, msg: Message, headers: MessageHeaders, reason: str, detail: str
    ) -> None:
        self.stats.dead_lettered += 1
        metrics.dlq_messages.labels("none", reason).inc()
        log.error(
            "dead-lettering message",
            extra={
                "reason": reason,
                "detail": detail,
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
            },
        )
        dlq_headers: Headers = [
            *headers.raw,
            ("dlq-reason", reason.encode()),
            ("dlq-detail", detail[:4000].encode()),
            ("dlq-source-topic", cast(str, msg.topic()).encode()),
            ("dlq-source-partition", str(msg.partition()).encode()),
            ("dlq-source-offset", str(msg.offset()).encode()),
            ("dlq-consumer-group", self.group_id.encode()),
            ("dlq-failed-at-ms", str(int(time.time() * 1000)).encode()),
        ]
        await self._publish_durably(
            self.dlq_topic, msg.key() or b"", msg.value() or b"", dlq_headers
        )

    def _finish(self, topic: str, partition: int, state: _PartitionState, offset: int) -> None:
        if self._partitions.get((topic, partition)) is not state:
            return  # revoked meanwhile: whoever owns the partition now will redo it
        state.window.finish(offset)
        low = state.window.low()
        commit_at = low if low is not None else state.window.done_through() + 1
        state.candidates.append((commit_at, self.publisher.last_seq()))

    # ----------------------------------------------------------------- commits
    def _committable(self) -> list[TopicPartition]:
        acked = self.publisher.delivered_through()
        out: list[TopicPartition] = []
        for (topic, part), state in self._partitions.items():
            best = -1
            keep: list[tuple[int, int]] = []
            for commit_at, seq in state.candidates:
                if seq <= acked:
                    best = max(best, commit_at)
                else:
                    keep.append((commit_at, seq))
            state.candidates = keep
            if best > state.committed:
                state.committed = best
                out.append(TopicPartition(topic, part, best))
        return out

    async def _commit(self, final: bool = False) -> None:
        if self._consumer is None:
            return
        if final:
            # Let outstanding acknowledgements arrive so the final commit is complete.
            deadline = time.monotonic() + 5.0
            while (
                self.publisher.delivered_through() < self.publisher.last_seq()
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.01)
        offsets = self._committable()
        if not offsets:
            return
        try:
            await self._call(self._consumer.commit, offsets=offsets, asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:
            log.warning("commit failed", extra={"error": str(exc)})

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._partitions.setdefault((p.topic, p.partition), _PartitionState())
        if self._paused and partitions:
            # Input is held (a breaker is open, or the loop is full): a partition that
            # arrives meanwhile is held too, not fetched until the gate opens. Assign
            # first (the callback's own assignment takes effect only when it returns).
            consumer.assign(partitions)
            consumer.pause(partitions)
            log.info(
                "new partitions held with the rest",
                extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]},
            )
        self.ready.set()
        log.info(
            "partitions assigned",
            extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs on the consumer thread inside consume(): commit what is safe, then forget.
        acked = self.publisher.delivered_through()
        offsets = []
        for p in partitions:
            state = self._partitions.pop((p.topic, p.partition), None)
            if state is None:
                continue
            best = max((c for c, s in state.candidates if s <= acked), default=-1)
            if best > state.committed:
                offsets.append(TopicPartition(p.topic, p.partition, best))
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed", extra={"error": str(exc)})
        log.info(
            "partitions revoked",
            extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]},
        )

    # ----------------------------------------------------------------- helpers
    async def _drain(self) -> None:
        await self._set_paused(True)
        if self._tasks:
            log.info("draining", extra={"in_flight": len(self._tasks)})
            _done, pending = await asyncio.wait(
                set(self._tasks), timeout=self.settings.drain_timeout_s
            )
            if pending:
                log.warning(
                    "drain timed out; unfinished messages will be redelivered",
                    extra={"unfinished": len(pending)},
                )
                for t in pending:
                    t.cancel()

    async def _set_paused(self, paused: bool) -> None:
        if paused == self._paused or self._consumer is None:
            return
        assignment = await self._call(self._consumer.assignment)
        if paused:
            await self._call(self._consumer.pause, assignment)
        else:
            await self._call(self._consumer.resume, assignment)
        self._paused = paused

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert self._aio is not None
        return await self._aio.run_in_executor(self._io, lambda: fn(*args, **kwargs))

    def _install_signals(self) -> list[int]:
        if threading.current_thread() is not threading.main_thread() or self._aio is None:
            return []
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._aio.add_signal_handler(sig, self.stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        return installed


#: asyncpg's exceptions for a connection that is gone, known by name (the SDK core does not
#: import asyncpg); SQLSTATE classes 08 (connection), 53 (resources), 57 (operator
#: intervention: the server shutting down or starting up).
_TRANSIENT_NAMES = frozenset(
    {
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "InternalClientError",
        "TooManyConnectionsError",
    }
)


def is_transient(exc: BaseException) -> bool:
    """An infrastructure failure that will pass (a lost or refused connection, a timeout,
    Postgres restarting): the message is retried until it passes, never dead-lettered.
    A handler's own RetryableError is not one of these: it has a bounded number of tries."""
    if isinstance(exc, RetryableError | DeliveryFailed):
        return False
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, socket errors
        return True
    state = str(getattr(exc, "sqlstate", "") or "")
    if state[:2] in ("08", "53", "57"):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    return type(exc).__module__.startswith("asyncpg") and bool(names & _TRANSIENT_NAMES)


def _take(consumer: Consumer, most: int, wait_s: float) -> list[Message]:
    """Up to ``most`` messages: what is there now, else wait ``wait_s`` for the first one.

    (``consume(n, timeout)`` alone would wait the whole timeout for ``n`` messages,
    adding that wait to every hand-off on a quiet topic.)
    """
    batch = consumer.consume(most, 0)
    if batch:
        return batch
    batch = consumer.consume(1, wait_s)
    if batch and most > 1:
        batch.extend(consumer.consume(most - 1, 0))
    return batch


def _resolve(fut: asyncio.Future[str | None], error: str | None) -> None:
    if not fut.done():
        fut.set_result(error)


EventHandler = Callable[[Delivery, Envelope, Any], Awaitable[Sequence[Outgoing] | None]]


@dataclass
class EventRouter:
    """Dispatches Envelopes by the type of the event inside, through a registry.

    Register it as the loop's handler for :class:`Envelope`. An event type with no
    handler, including a type added by a newer producer that this code does not know,
    is skipped (counted in ``skipped``), never dead-lettered and never a crash.
    """

    handlers: Mapping[type[ProtoMessage], EventHandler]
    skipped: dict[str, int] = field(default_factory=dict)

    async def __call__(self, delivery: Delivery, envelope: Envelope) -> Sequence[Outgoing] | None:
        kind = envelope.WhichOneof("event")
        if kind is None:
            self._skip("unknown", envelope)
            return None
        event = getattr(envelope, kind)
        handler = self.handlers.get(type(event))
        if handler is None:
            self._skip(kind, envelope)
            return None
        return await handler(delivery, envelope, event)

    def _skip(self, kind: str, envelope: Envelope) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        if kind == "unknown":
            log.warning(
                "skipping an event of a type this code does not know",
                extra={"event_id": envelope.event_id, "schema_version": envelope.schema_version},
            )


__all__ = [
    "DECODERS",
    "ConsumerLoop",
    "Delivery",
    "DeliveryFailed",
    "EventHandler",
    "EventRouter",
    "Handler",
    "LoopStats",
    "Outgoing",
    "PermanentError",
    "RetryableError",
    "consumer_config",
    "ensure_topics",
]
