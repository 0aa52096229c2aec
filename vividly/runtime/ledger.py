"""Postgres-backed state of the stage services (tables from migrations/0002)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import asyncpg

from vividly import tracing
from vividly.runtime.stage import Recorded

#: A stage attempt: (request_id, stage, attempt).
Key = tuple[str, str, int]


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class GroupWriter(Generic[K, V, R]):
    """Group commit: calls that arrive while a write is in flight are written together
    by the next one (one multi-row statement), so under load a batch costs one round
    trip, and at low load a call adds no wait.

    ``write`` gets the batch with one entry per key (the first call's value) and returns
    each key's result. A key repeated within a batch is a duplicate: the first call gets
    the result, the others ``repeat(result)``.
    """

    def __init__(
        self,
        write: Callable[[dict[K, V]], Awaitable[dict[K, R]]],
        repeat: Callable[[R], R],
        max_batch: int = 500,
    ) -> None:
        self.write = write
        self.repeat = repeat
        self.max_batch = max_batch
        self._queue: list[tuple[K, V, asyncio.Future[R]]] = []
        self._writing = False
        self._task: asyncio.Task[None] | None = None  # held so it is not collected

    async def submit(self, key: K, value: V) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((key, value, fut))
        if not self._writing:
            self._writing = True
            self._task = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        # One statement serves every request in the batch: it is no one request's call
        # (its span would land in the trace of whichever request came first).
        with tracing.for_many_requests():
            await self._drain_batches()

    async def _drain_batches(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                first: dict[K, V] = {}
                for key, value, _ in batch:
                    first.setdefault(key, value)
                try:
                    results = await self.write(first)
                except Exception as exc:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                answered: set[K] = set()
                for key, _, fut in batch:
                    if fut.done():
                        continue
                    result = results[key]
                    fut.set_result(self.repeat(result) if key in answered else result)
                    answered.add(key)
        finally:
            self._writing = False


class PgLedger:
    """:class:`vividly.runtime.stage.Ledger` on ``vividly.stage_ledger``: lookups and records
    both group-committed (one statement for all the calls that arrived meanwhile)."""

    # No join against the ledger: with a few thousand rows the planner would rather
    # scan it than use the key for a batch it guesses at 100 rows. Keys already
    # stored (a redelivery) are rare and looked up by request id, on the index.
    INSERT_SQL = """
    INSERT INTO vividly.stage_ledger (request_id, stage, attempt, output, outcome, messages)
    SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::jsonb[], $5::text[],
                         $6::bytea[])
    ON CONFLICT DO NOTHING RETURNING request_id, stage, attempt
    """
    STORED_SQL = """
    SELECT request_id, stage, attempt, outcome, output::text AS output, messages
    FROM vividly.stage_ledger WHERE request_id = ANY($1::text[])
    """

    def __init__(self, pool: Any, max_batch: int = 500) -> None:
        self.pool = pool
        self._writer: GroupWriter[Key, Recorded, Recorded]
        self._writer = GroupWriter(self._write, lambda r: r, max_batch)
        self._reader: GroupWriter[Key, None, Recorded | None]
        self._reader = GroupWriter(self._read, lambda r: r, max_batch)
        self._cancels: GroupWriter[str, None, bool]
        self._cancels = GroupWriter(self._read_cancelled, lambda r: r, max_batch)

    async def cancelled(self, request_id: str) -> bool:
        """Whether someone cancelled the request (the API's fence, vividly.cancellations)."""
        return await self._cancels.submit(request_id, None)

    async def _read_cancelled(self, batch: dict[str, None]) -> dict[str, bool]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT request_id FROM vividly.cancellations WHERE request_id = ANY($1::text[])",
                list(batch),
            )
        found = {r["request_id"] for r in rows}
        return {rid: rid in found for rid in batch}

    async def lookup(self, request_id: str, stage: str, attempt: int) -> Recorded | None:
        return await self._reader.submit((request_id, stage, attempt), None)

    async def record(
        self, request_id: str, stage: str, attempt: int, recorded: Recorded
    ) -> Recorded:
        return await self._writer.submit((request_id, stage, attempt), recorded)

    async def _stored(self, conn: Any, keys: list[Key]) -> dict[Key, Recorded]:
        rows = await conn.fetch(self.STORED_SQL, list({k[0] for k in keys}))
        wanted = set(keys)
        return {
            k: Recorded.decode(r["outcome"], r["output"].encode(), r["messages"])
            for r in rows
            if (k := (r["request_id"], r["stage"], r["attempt"])) in wanted
        }

    async def _read(self, batch: dict[Key, None]) -> dict[Key, Recorded | None]:
        keys = list(batch)
        async with self.pool.acquire() as conn:
            found = await self._stored(conn, keys)
        return {k: found.get(k) for k in keys}

    async def _write(self, batch: dict[Key, Recorded]) -> dict[Key, Recorded]:
        keys = list(batch)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                self.INSERT_SQL,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [batch[k].output.decode() for k in keys],
                [batch[k].outcome for k in keys],
                [batch[k].encode_messages() for k in keys],
            )
            inserted = {(r["request_id"], r["stage"], r["attempt"]) for r in rows}
            result = {k: batch[k] for k in inserted}
            missing = [k for k in keys if k not in inserted]
            if missing:
                result.update(await self._stored(conn, missing))
        return result


class IngestLedger:
    """First-seen record of submissions, for idempotency-key de-duplication."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def first_source(self, request_id: str, source: str) -> str:
        """Record ``source`` as where ``request_id`` was first seen; return the first."""
        async with self.pool.acquire() as conn:
            first: str = await conn.fetchval(
                "WITH ins AS (INSERT INTO vividly.ingest_requests (request_id, source)"
                " VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING source)"
                " SELECT source FROM ins UNION ALL"
                " SELECT source FROM vividly.ingest_requests WHERE request_id = $1 LIMIT 1",
                request_id,
                source,
            )
            return first


class NotificationLedger:
    """Claims on outcome emails: one email per (request, kind). Claims and "sent" marks
    are group-committed (see :class:`GroupWriter`).

    A claim answers "send" (this caller sends), "sent" (done already) or "busy" (another
    sender holds a claim younger than ``lease_s``: it may be sending right now, or it
    died between claiming and marking sent; the caller waits and asks again, and takes
    the claim once the lease has run out)."""

    CLAIM_SQL = """
    WITH ins AS (
      INSERT INTO vividly.notifications (request_id, kind, status, message_id, recipient)
      SELECT request_id, kind, 'sending', message_id, recipient
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
          AS t(request_id, kind, message_id, recipient)
      ON CONFLICT (request_id, kind) DO UPDATE SET claimed_at = now()
        WHERE vividly.notifications.status = 'sending'
          AND vividly.notifications.claimed_at < now() - make_interval(secs => $5)
      RETURNING request_id, kind
    )
    SELECT n0.request_id, n0.kind,
           CASE WHEN ins.request_id IS NOT NULL THEN 'send'
                WHEN n.status = 'sent' THEN 'sent' ELSE 'busy' END AS state
    FROM unnest($1::text[], $2::text[]) AS n0(request_id, kind)
    LEFT JOIN ins USING (request_id, kind)
    LEFT JOIN vividly.notifications n USING (request_id, kind)
    """
    # request_id = ANY(...) lets the planner use the key; the pair is then matched.
    SENT_SQL = """
    UPDATE vividly.notifications SET status = 'sent', sent_at = now()
    WHERE request_id = ANY($1::text[]) AND request_id || chr(31) || kind = ANY($2::text[])
    """

    def __init__(self, pool: Any, lease_s: float = 60.0) -> None:
        self.pool = pool
        self.lease_s = lease_s
        self._claims: GroupWriter[tuple[str, str], tuple[str, str], str]
        self._claims = GroupWriter(self._claim_batch, lambda _: "busy")
        self._sent: GroupWriter[tuple[str, str], None, None]
        self._sent = GroupWriter(self._sent_batch, lambda _: None)

    async def claim(self, request_id: str, kind: str, message_id: str, recipient: str) -> str:
        """ "send", "sent" or "busy" (see the class)."""
        return await self._claims.submit((request_id, kind), (message_id, recipient))

    async def mark_sent(self, request_id: str, kind: str) -> None:
        await self._sent.submit((request_id, kind), None)

    async def release(self, request_id: str, kind: str) -> None:
        """Give up a claim after a failed send so a retry can send."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM vividly.notifications"
                " WHERE request_id = $1 AND kind = $2 AND status = 'sending'",
                request_id,
                kind,
            )

    async def _claim_batch(
        self, batch: dict[tuple[str, str], tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        keys = list(batch)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                self.CLAIM_SQL,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [batch[k][0] for k in keys],
                [batch[k][1] for k in keys],
                float(self.lease_s),
            )
        states = {(r["request_id"], r["kind"]): r["state"] for r in rows}
        return {k: states.get(k) or "busy" for k in keys}

    async def _sent_batch(self, batch: dict[tuple[str, str], None]) -> dict[tuple[str, str], None]:
        keys = list(batch)
        async with self.pool.acquire() as conn:
            await conn.execute(
                self.SENT_SQL, [k[0] for k in keys], [f"{k[0]}\x1f{k[1]}" for k in keys]
            )
        return dict.fromkeys(keys)


async def _nothing_to_reset(conn: Any) -> None:
    """asyncpg has already ended any open transaction by the time this runs."""


async def create_pool(url: str, size: int = 4) -> Any:
    """The stage services' pool. Their statements leave no session state behind (no
    SET, LISTEN, cursors or advisory locks), so a connection going back to the pool
    only needs an unfinished transaction ended, which asyncpg always does; its default
    reset would add a round trip (``RESET ALL; UNLISTEN *; ...``) to every release."""
    return await asyncpg.create_pool(url, min_size=1, max_size=size, reset=_nothing_to_reset)
