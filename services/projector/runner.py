"""The projector's consumer: read ``tracking.events`` in batches, fold each batch into the
read model in one transaction with its offsets, start from the stored offsets.

Three uses share it:

- the live projector (``python -m services.projector.main``): a consumer group member,
  its partitions' start positions read from Postgres on assignment, runs until SIGTERM;
- ``vividly projector rebuild``: every partition from the start into a fresh schema,
  then swapped in for the live one (:func:`rebuild`);
- ``vividly events replay``: a time range into an analyst's schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from services.projector.logid import LogIdentity, LogMismatch, check, read_log
from services.projector.store import (
    LIVE_SCHEMA,
    READ_MODEL_VERSION,
    FoldResult,
    ReadModelStore,
    Record,
    is_data_error,
    quote_ident,
)
from vividly import metrics
from vividly.config import TRACKING_TOPIC, Settings
from vividly.runtime.bus import consumer_config, offsets_at, take_batch

log = logging.getLogger("vividly.projector")

#: Taken shared by every fold transaction, exclusively by a rebuild's swap.
SWAP_LOCK = 0x76726D31  # "vrm1"
UPGRADE_LOCK = 0x76726D32  # "vrm2": one projection upgrade (rebuild) at a time


@dataclass
class ProjectorStats:
    batches: int = 0
    consumed: int = 0
    folded: int = 0
    duplicates: int = 0
    undecodable: int = 0
    last_fold_at: float = 0.0
    newest_event_at: float = 0.0
    positions: dict[int, int] = field(default_factory=dict)


class Projector:
    """Folds the tracking topic into one read-model schema."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        *,
        schema: str = LIVE_SCHEMA,
        group_id: str | None = "vividly-projector",
        batch_max: int = 5000,
        notify: bool = True,
        topic: str = TRACKING_TOPIC,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.store = ReadModelStore(
            schema, notify=notify, max_event_bytes=settings.max_message_bytes
        )
        self.group_id = group_id
        self.batch_max = batch_max
        self.topic = topic
        self.stats = ProjectorStats()
        self._stop = asyncio.Event()
        self._conn: Any = None
        self._consumer: Consumer | None = None
        self._aio: asyncio.AbstractEventLoop | None = None
        self.on_batch: Callable[[ProjectorStats], None] | None = None
        self._prefetch: asyncio.Future[list[Any]] | None = None

    def stop(self) -> None:
        self._stop.set()

    async def _fetch(self, wait_s: float) -> list[Any]:
        assert self._consumer is not None
        return await asyncio.to_thread(take_batch, self._consumer, self.batch_max, wait_s)

    # ------------------------------------------------------------------ set-up
    async def open(self) -> None:
        self._aio = asyncio.get_running_loop()
        self._conn = await asyncpg.connect(self.database_url)
        await self.store.ensure(self._conn)
        conf = consumer_config(
            self.settings, self.group_id or f"vividly-fold-{self.store.schema}", "projector"
        )
        conf["fetch.wait.max.ms"] = max(self.settings.fetch_wait_max_ms, 10)
        # A position the log does not have is a mismatch to report, never a silent jump
        # to the start or the end.
        conf["auto.offset.reset"] = "error"
        self._consumer = Consumer(conf)

    async def verify_log(self) -> LogIdentity:
        """Check that the stored offsets belong to the log about to be read (see
        :mod:`services.projector.logid`); record its identity. Raises LogMismatch."""
        assert self._consumer is not None
        admin = AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap})
        actual, marks = await asyncio.to_thread(read_log, admin, self._consumer, self.topic)
        stored = await self.store.identity(self._conn, self.topic)
        offsets = await self.store.offsets(self._conn, self.topic)
        reasons = check(self.topic, stored, actual, offsets, marks)
        if reasons:
            raise LogMismatch("; ".join(reasons))
        if stored is None:
            await self.store.record_identity(self._conn, self.topic, actual)
        return actual

    async def close(self) -> None:
        if self._prefetch is not None:
            with contextlib.suppress(Exception):
                await self._prefetch
            self._prefetch = None
        if self._consumer is not None:
            await asyncio.to_thread(self._consumer.close)
            self._consumer = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _stored_positions(self) -> dict[int, int]:
        """Called from the consumer thread (rebalance callback): ask the event loop."""
        assert self._aio is not None
        fut = asyncio.run_coroutine_threadsafe(
            self.store.offsets(self._conn, self.topic), self._aio
        )
        return fut.result(30)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self._stored_positions()
        for tp in partitions:
            tp.offset = stored.get(tp.partition, OFFSET_BEGINNING)
            self.stats.positions[tp.partition] = tp.offset
        log.info(
            "partitions assigned",
            extra={"partitions": {tp.partition: tp.offset for tp in partitions}},
        )
        consumer.assign(partitions)

    async def subscribe(self) -> None:
        assert self._consumer is not None
        self._consumer.subscribe([self.topic], on_assign=self._on_assign)

    async def assign_all(self, start: dict[int, int] | None = None) -> dict[int, int]:
        """Assign every partition (no group), from ``start``, else the stored offsets,
        else the beginning. Returns the high watermarks at this moment."""
        assert self._consumer is not None
        consumer = self._consumer
        meta = await asyncio.to_thread(consumer.list_topics, self.topic, 10)
        parts = sorted(meta.topics[self.topic].partitions)
        stored = await self.store.offsets(self._conn, self.topic)
        tps = []
        for p in parts:
            off = (start or {}).get(p, stored.get(p, OFFSET_BEGINNING))
            tps.append(TopicPartition(self.topic, p, off))
            if off == OFFSET_BEGINNING:
                off, _ = await asyncio.to_thread(
                    consumer.get_watermark_offsets, TopicPartition(self.topic, p), 10, False
                )
            self.stats.positions[p] = off
        consumer.assign(tps)
        return await self.high_watermarks()

    async def high_watermarks(self) -> dict[int, int]:
        assert self._consumer is not None
        consumer = self._consumer
        out = {}
        for p in list(self.stats.positions):
            _, high = await asyncio.to_thread(
                consumer.get_watermark_offsets, TopicPartition(self.topic, p), 10, False
            )
            out[p] = high
        return out

    # ------------------------------------------------------------------ the loop
    async def step(
        self, wait_s: float = 0.1, until: datetime | None = None, since: datetime | None = None
    ) -> int:
        """Fold one batch; returns how many messages it consumed."""
        assert self._consumer is not None
        # The next batch is fetched on a thread while this one is written to Postgres.
        pending = self._prefetch
        msgs = await pending if pending is not None else await self._fetch(wait_s)
        self._prefetch = asyncio.ensure_future(self._fetch(wait_s))
        records = []
        cutoff_ms = until.timestamp() * 1000 if until is not None else None
        # The time index can be coarser than a message (a broker may index batches), so
        # the range is also checked message by message.
        floor_ms = since.timestamp() * 1000 if since is not None else None
        positions = self.stats.positions
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() in _POSITION_GONE:
                    raise LogMismatch(
                        f"{m.topic()}[{m.partition()}]: the stored position is not in the log "
                        f"({err.str()})"
                    )
                continue
            topic, part, off = m.topic() or self.topic, m.partition() or 0, m.offset() or 0
            positions[part] = max(positions.get(part, 0), off + 1)
            ts_ms = m.timestamp()[1]
            if (cutoff_ms is not None and ts_ms > cutoff_ms) or (
                floor_ms is not None and ts_ms < floor_ms
            ):
                continue
            records.append(Record(topic, part, off, m.value() or b""))
            if ts_ms > 0:
                self.stats.newest_event_at = max(self.stats.newest_event_at, ts_ms / 1000)
        if not records:
            if self.group_id and not msgs:
                metrics.projector_lag.labels(self.store.schema).set(0.0)
            return len(msgs)
        conn = self._conn
        began = time.perf_counter()
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", SWAP_LOCK)
                result = await self.store.write(conn, records)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            # One event of the batch is poison (Postgres or the fold rejected it): fold
            # the batch event by event, quarantining what is rejected, and go on.
            result = await self._write_isolating(records, exc)
        if self.group_id:  # the live projector's figures, not a rebuild's or a replay's
            schema = self.store.schema
            metrics.projector_batch.labels(schema).observe(time.perf_counter() - began)
            metrics.projector_folded.labels(schema).inc(result.folded)
            # Behind by the age of the newest event folded, while a backlog remains.
            backlog = len(msgs) >= self.batch_max
            lag = time.time() - self.stats.newest_event_at if backlog else 0.0
            metrics.projector_lag.labels(schema).set(max(0.0, lag))
        s = self.stats
        s.batches += 1
        s.consumed += result.consumed
        s.folded += result.folded
        s.duplicates += result.duplicates
        s.undecodable += result.undecodable
        s.last_fold_at = time.time()
        if self.group_id:  # for lag dashboards only; Postgres holds the real position
            offsets = [TopicPartition(self.topic, p, o) for p, o in s.positions.items() if o >= 0]
            if offsets:
                try:
                    self._consumer.commit(offsets=offsets, asynchronous=True)
                except Exception:  # a rebalance in progress; Postgres is authoritative
                    log.debug("kafka offset commit skipped", exc_info=True)
        if self.on_batch is not None:
            self.on_batch(s)
        return len(msgs)

    async def _write_isolating(self, records: list[Record], first: BaseException) -> FoldResult:
        log.warning(
            "a batch was rejected; folding it event by event to quarantine the poison",
            extra={"events": len(records), "error": f"{type(first).__name__}: {first}"},
        )
        conn = self._conn
        total = FoldResult(0, 0, 0, 0, 0, None)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", SWAP_LOCK)
            for rec in records:
                try:
                    async with conn.transaction():  # a savepoint per event
                        r = await self.store.write(conn, [rec])
                except Exception as exc:
                    if not is_data_error(exc):
                        raise
                    await self.store.quarantine(conn, rec, f"rejected: {type(exc).__name__}: {exc}")
                    r = FoldResult(1, 0, 0, 1, 0, None)
                total = total.plus(r)
        return total

    async def run(self) -> ProjectorStats:
        """The live projector: until stop() (SIGTERM/SIGINT)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        await self.open()
        try:
            await self._verify_or_rebuild()
            await self.subscribe()
            while not self._stop.is_set():
                try:
                    await self.step()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    # The batch's transaction rolled back: nothing of it was stored.
                    log.warning(
                        "fold failed; reconnecting and resuming from the stored offsets",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                    )
                    await self._recover()
        finally:
            await self.close()
        log.info(
            "projector stopped",
            extra={"folded": self.stats.folded, "duplicates": self.stats.duplicates},
        )
        return self.stats

    async def _verify_or_rebuild(self) -> None:
        try:
            await self.verify_log()
            await self._upgrade_if_outdated()
            return
        except LogMismatch as exc:
            metrics.projector_log_mismatch.labels(self.store.schema).inc()
            policy = self.settings.projector_on_log_mismatch
            log.critical(
                "the read model's stored offsets do not belong to this log",
                extra={"reason": str(exc), "policy": policy},
            )
            if policy != "rebuild":
                raise
        info = await rebuild(
            self.settings, self.database_url, live=self.store.schema, topic=self.topic
        )
        log.warning("read model rebuilt from the log it now reads", extra=info)
        await self.verify_log()

    async def _upgrade_if_outdated(self) -> None:
        """A read model folded by an older projection (see READ_MODEL_VERSION) is rebuilt
        from the log, once, whichever projector process gets there first."""
        if not await self.store.outdated(self._conn):
            return
        lock = await asyncpg.connect(self.database_url)
        try:
            await lock.execute("SELECT pg_advisory_lock($1)", UPGRADE_LOCK)
            if not await self.store.outdated(self._conn):
                return  # another projector rebuilt it meanwhile
            log.warning(
                "the read model was folded by an older projection; rebuilding it from the log",
                extra={"schema": self.store.schema, "version": READ_MODEL_VERSION},
            )
            info = await rebuild(
                self.settings, self.database_url, live=self.store.schema, topic=self.topic
            )
            log.warning("read model rebuilt for the current projection", extra=info)
        finally:
            await lock.close()  # releases the session lock

    async def _recover(self) -> None:
        """After a failed batch: a new connection, and every assigned partition sent back
        to the offset stored with the last committed fold (nothing lost, nothing twice)."""
        if self._prefetch is not None:  # fetched past the failed batch: drop it
            with contextlib.suppress(Exception):
                await self._prefetch
            self._prefetch = None
        with contextlib.suppress(Exception):
            await self._conn.close()
        delay = 0.2
        while not self._stop.is_set():
            try:
                self._conn = await asyncpg.connect(self.database_url)
                stored = await self.store.offsets(self._conn, self.topic)
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("Postgres unavailable; retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        else:
            return
        assert self._consumer is not None
        tps = [
            TopicPartition(self.topic, tp.partition, stored.get(tp.partition, OFFSET_BEGINNING))
            for tp in self._consumer.assignment()
        ]
        try:
            for tp in tps:
                self._consumer.seek(tp)
        except KafkaException:  # a partition not fetching yet: assign the positions instead
            self._consumer.assign(tps)
        for tp in tps:
            self.stats.positions[tp.partition] = max(tp.offset, 0)
        log.info("projector resumed", extra={"positions": dict(self.stats.positions)})

    async def fold_until(
        self,
        targets: dict[int, int],
        until: datetime | None = None,
        idle_s: float = 30.0,
        since: datetime | None = None,
    ) -> bool:
        """Fold until every partition's position reaches ``targets`` (True), or until
        ``idle_s`` passes with nothing read, or stop() (False). With ``until``, messages
        newer than it are left out."""
        idle_since = time.monotonic()
        while any(self.stats.positions.get(p, 0) < high for p, high in targets.items()):
            if self._stop.is_set():
                return False
            n = await self.step(wait_s=0.2, until=until, since=since)
            if n:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_s:
                log.warning("stopped short of the high watermark", extra={"targets": targets})
                return False
        return True


async def rebuild(
    settings: Settings,
    database_url: str,
    *,
    live: str = LIVE_SCHEMA,
    topic: str = TRACKING_TOPIC,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Fold the whole log into a fresh schema, then swap it in for ``live`` atomically.

    The live projector keeps running meanwhile. The swap takes the lock every fold
    transaction shares, folds the last few events, renames the schemas and drops the old
    one in one transaction; the live projector's next batch lands in the new tables (what
    it re-reads is dropped as already folded). New timeline rows continue the old
    sequence, so live streams neither repeat nor miss an event.
    """
    fresh = f"{live}_next"
    old = f"{live}_old"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(fresh)} CASCADE")
    finally:
        await conn.close()
    proj = Projector(settings, database_url, schema=fresh, group_id=None, notify=False, topic=topic)
    await proj.open()
    try:
        targets = await proj.assign_all()
        total = sum(targets.values())
        if progress is not None:
            proj.on_batch = lambda s: progress(s.consumed, total)
        identity = await proj.verify_log()  # a fresh schema: records what it folds
        if not await proj.fold_until(targets):
            raise RebuildIncomplete(_short(targets, proj.stats.positions))
        # Catch up with what arrived meanwhile, then swap under the lock.
        await proj.fold_until(await proj.high_watermarks())
        conn = proj._conn
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SWAP_LOCK)
            ends = await proj.high_watermarks()
            if not await proj.fold_until(ends, idle_s=10.0):
                # Never swap in a model that has not reached the log's end.
                raise RebuildIncomplete(_short(ends, proj.stats.positions))
            s_live, s_fresh, s_old = quote_ident(live), quote_ident(fresh), quote_ident(old)
            exists = await conn.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1", live
            )
            if exists:
                await proj.store.adopt_seq(conn, live)
                await conn.execute(f"DROP SCHEMA IF EXISTS {s_old} CASCADE")
                await conn.execute(f"ALTER SCHEMA {s_live} RENAME TO {s_old}")
            await conn.execute(f"ALTER SCHEMA {s_fresh} RENAME TO {s_live}")
            if exists:
                await conn.execute(f"DROP SCHEMA {s_old} CASCADE")
        return {
            "schema": live,
            "cluster_id": identity.cluster_id,
            "events": proj.stats.folded,
            "consumed": proj.stats.consumed,
            "duplicates": proj.stats.duplicates,
            "partitions": dict(proj.stats.positions),
        }
    finally:
        await proj.close()


class RebuildIncomplete(RuntimeError):
    """A rebuild did not reach the log's end; nothing was swapped in."""


def _short(targets: dict[int, int], positions: dict[int, int]) -> str:
    gaps = {p: (positions.get(p, 0), t) for p, t in targets.items() if positions.get(p, 0) < t}
    return "the rebuild stopped short of the log's end, so nothing was swapped in: " + ", ".join(
        f"partition {p} at {at} of {end}" for p, (at, end) in sorted(gaps.items())
    )


_POSITION_GONE = frozenset({KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE})


async def replay(
    settings: Settings,
    database_url: str,
    schema: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    topic: str = TRACKING_TOPIC,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Re-read [since, until] of the log into ``schema`` (created fresh) for analysis."""
    if schema in (LIVE_SCHEMA, "vividly"):
        raise ValueError(f"replay needs a schema of its own, not {schema!r}")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()
    proj = Projector(
        settings, database_url, schema=schema, group_id=None, notify=False, topic=topic
    )
    await proj.open()
    try:
        start = await start_offsets(proj, since)
        targets = await proj.assign_all(start)
        if until is not None:
            ends = await start_offsets(proj, until)
            targets = {p: min(targets[p], ends.get(p, targets[p])) for p in targets}
        total = sum(max(0, targets[p] - proj.stats.positions.get(p, 0)) for p in targets)
        if progress is not None:
            proj.on_batch = lambda s: progress(s.consumed, total)
        if not await proj.fold_until(targets, until=until, since=since):
            raise RebuildIncomplete(_short(targets, proj.stats.positions))
        return {"schema": schema, "events": proj.stats.folded, "consumed": proj.stats.consumed}
    finally:
        await proj.close()


async def start_offsets(proj: Projector, at: datetime | None) -> dict[int, int]:
    """Per partition, the first offset at or after ``at`` (Kafka's time index); the end of
    the partition when nothing is that new."""
    assert proj._consumer is not None
    consumer = proj._consumer
    if at is None:
        return {}
    meta = await asyncio.to_thread(consumer.list_topics, proj.topic, 10)
    parts = sorted(meta.topics[proj.topic].partitions)
    return await asyncio.to_thread(offsets_at, consumer, proj.topic, parts, at)
