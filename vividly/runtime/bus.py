"""The one consumer loop every service runs, plus topic creation.

``ConsumerLoop`` subscribes to its topics and, for each message: decodes it by the type
named in its ``vividly-type`` header, dispatches it to the handler registered for that
protobuf type, publishes the handler's outputs, and marks the message done once those
outputs (and every tracking event published meanwhile) are acknowledged by the broker.

- Many messages are handled at once (``max_in_flight``), yet the offset committed for a
  partition never passes its oldest unfinished message: at-least-once, nothing skipped.
- Messages with the same key are handled one after another, in offset order.
- What a failure means is :mod:`vividly.errors`'s to say (the one failure policy): an
  outage of our own infrastructure is waited out; a retryable failure is tried again under
  the :class:`~vividly.errors.RetryPolicy`, then dead-lettered; anything else, and a
  message that cannot be decoded or has no handler, goes to ``requests.dlq`` with the
  reason (:func:`~vividly.errors.dead_letter`), and the loop goes on.
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
from dataclasses import dataclass
from datetime import datetime
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
from opentelemetry.trace import Span, Status, StatusCode

from vividly import metrics, tracing
from vividly.config import DLQ_TOPIC, TRACKING_TOPIC, Settings, topic_plan
from vividly.errors import RetryPolicy, dead_letter, is_outage, is_retryable
from vividly.events import Envelope, MessageHeaders, WorkItem
from vividly.logs import log_context
from vividly.publish import (
    CompletionWindow,
    DeliveryFailed,
    Outgoing,
    Publisher,
    delivered,
    publish_acked,
)
from vividly.tracker import RequestContext, current_request

log = logging.getLogger("vividly.runtime.bus")

#: Message types the loop can decode, by their ``vividly-type`` header.
DECODERS: dict[str, type[ProtoMessage]] = {
    Envelope.DESCRIPTOR.full_name: Envelope,
    WorkItem.DESCRIPTOR.full_name: WorkItem,
}


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
        self.policy = RetryPolicy.from_settings(settings)
        self.group_id = group_id
        self.topics = list(topics)
        self.publisher = publisher
        self.handlers = dict(handlers)
        self.name = name
        self.dlq_topic = dlq_topic
        self.gates = list(gates)
        self.max_in_flight = max_in_flight or settings.max_in_flight
        self.topic_partitions = topic_plan(settings, [*self.topics, *produces, dlq_topic])
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
                    take_batch, consumer, max(room, 1), 0.05 if self._tasks else 0.2
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
        with tracing.process_span(
            topic=topic,
            partition=partition,
            offset=offset,
            key=delivery.key,
            traceparent=headers.traceparent,
            group=self.group_id,
            client_id=self.name,
        ) as span:
            await self._process_one(msg, delivery, value, span)
        self._finish(topic, partition, state, offset)

    async def _process_one(
        self, msg: Message, delivery: Delivery, value: bytes, span: Span | None
    ) -> None:
        headers = delivery.headers
        if len(value) > self.settings.max_message_bytes:
            await self._dead_letter(
                msg,
                headers,
                "oversized",
                f"{len(value)} bytes; the limit is {self.settings.max_message_bytes}",
                span,
            )
            return
        decoded = self._decode(headers, value)
        if isinstance(decoded, str):
            await self._dead_letter(msg, headers, "decode_error", decoded, span)
            return
        request_id: str = getattr(decoded, "request_id", "")
        if span is not None and request_id and delivery.key != request_id.encode():
            # (a work item is keyed by its request id: the span has it as the key)
            span.set_attribute(tracing.ATTR_REQUEST_ID, request_id)
        handler = self.handlers.get(type(decoded))
        if handler is None:
            await self._dead_letter(
                msg, headers, "no_handler", f"no handler for {type(decoded).__name__}", span
            )
        else:
            await self._handle(msg, delivery, decoded, handler, span)

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
        self,
        msg: Message,
        delivery: Delivery,
        decoded: ProtoMessage,
        handler: Handler,
        span: Span | None = None,
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
            attempt, outage = 1, 0
            while True:
                try:
                    outputs = await handler(delivery, decoded)
                    break
                except Exception as exc:
                    if is_outage(exc):
                        # Not this message's fault (Postgres restarting, a connection
                        # cut): wait and try again for as long as it takes; an outage
                        # never dead-letters work and spends no attempt.
                        outage += 1
                        delay = self.policy.outage_delay(outage)
                        if outage == 1 or outage % 10 == 0:
                            log.warning(
                                "infrastructure unavailable; retrying the message",
                                extra={"attempt": outage, "delay_s": delay, "error": repr(exc)},
                            )
                        await asyncio.sleep(delay)
                        continue
                    if self.policy.gives_up(attempt, exc):
                        reason = "retries_exhausted" if is_retryable(exc) else "handler_error"
                        await self._dead_letter(
                            msg, delivery.headers, reason, f"{type(exc).__name__}: {exc}", span
                        )
                        return
                    self.stats.retried += 1
                    delay = self.policy.delay(attempt)
                    log.warning(
                        "handler failed, retrying",
                        extra={"attempt": attempt, "delay_s": delay, "error": str(exc)},
                    )
                    attempt += 1
                    await asyncio.sleep(delay)
            if outputs and self.settings.causal_events:
                # Every fact the handler published (tracking events) is durable before
                # the next stage can see its input: a request's events stay causal.
                await self._delivered(self.publisher.last_seq())
            for out in outputs or ():
                await self._publish_durably(out)
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
        await delivered(self.publisher, seq)

    async def _publish_durably(self, out: Outgoing) -> None:
        """Publish and wait for the broker's acknowledgement. librdkafka has retried for
        ``delivery_timeout_ms`` by the time it reports a failure, and a failed delivery
        holds back every later commit (see :mod:`vividly.publish`), so a failure stops
        the loop and the input is redelivered; trying again here could not help."""
        try:
            await publish_acked(self.publisher, [(out.topic, out.key, out.value, out.headers)])
        except DeliveryFailed as exc:
            log.error("publish failed", extra={"topic": out.topic, "error": str(exc)})
            raise DeliveryFailed(f"{exc}; stopping so the input is redelivered") from exc

    async def _dead_letter(
        self,
        msg: Message,
        headers: MessageHeaders,
        reason: str,
        detail: str,
        span: Span | None = None,
    ) -> None:
        self.stats.dead_lettered += 1
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, f"dead-lettered ({reason}): {detail}"[:500]))
            span.set_attribute(tracing.ATTR_OUTCOME, "dead_lettered")
        topic, partition, offset = cast(str, msg.topic()), msg.partition(), msg.offset()
        log.error(
            "dead-lettering message",
            extra={
                "reason": reason,
                "detail": detail,
                "topic": topic,
                "partition": partition,
                "offset": offset,
            },
        )
        letter = dead_letter(
            self.dlq_topic,
            msg.key() or b"",
            msg.value() or b"",
            headers.raw,
            reason=reason,
            detail=detail,
            source=(topic, cast(int, partition), cast(int, offset)),
            group=self.group_id,
        )
        await self._publish_durably(letter)

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


def offsets_at(
    consumer: Consumer, topic: str, partitions: Sequence[int], at: datetime, timeout: float = 10
) -> dict[int, int]:
    """Per partition, the first offset whose timestamp is at or after ``at`` (Kafka's time
    index), or the partition's end offset when no message is that new. Blocking."""
    ms = int(at.timestamp() * 1000)
    found = consumer.offsets_for_times([TopicPartition(topic, p, ms) for p in partitions], timeout)
    out: dict[int, int] = {}
    for tp in found:
        if tp.offset >= 0:
            out[tp.partition] = tp.offset
        else:
            _, out[tp.partition] = consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout
            )
    return out


def take_batch(consumer: Consumer, most: int, wait_s: float) -> list[Message]:
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


__all__ = [
    "DECODERS",
    "ConsumerLoop",
    "Delivery",
    "Handler",
    "LoopStats",
    "consumer_config",
    "ensure_topics",
    "offsets_at",
    "take_batch",
]
