"""Postgres-backed state of the stage services (tables from migrations/0002)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

SEND_LEASE_S = 120


class PgLedger:
    """:class:`vividly.stage.Ledger` on ``vividly.stage_ledger``, with group commit.

    Completions that arrive while a write is in flight are written together by the next
    one (one multi-row INSERT), so under load the ledger costs one round trip per batch,
    not per stage, and at low load it adds no wait.
    """

    SQL = """
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::jsonb[])
            AS t(request_id, stage, attempt, output)),
    ins AS (
        INSERT INTO vividly.stage_ledger (request_id, stage, attempt, output)
        SELECT request_id, stage, attempt, output FROM input
        ON CONFLICT DO NOTHING RETURNING request_id, stage, attempt)
    SELECT i.request_id, i.stage, i.attempt, ins.request_id IS NOT NULL AS inserted,
           coalesce(l.output, i.output)::text AS output
    FROM input i
    LEFT JOIN ins USING (request_id, stage, attempt)
    LEFT JOIN vividly.stage_ledger l USING (request_id, stage, attempt)
    """

    def __init__(self, pool: Any, max_batch: int = 500) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._queue: list[tuple[tuple[str, str, int], bytes, asyncio.Future[tuple[bool, bytes]]]]
        self._queue = []
        self._writing = False
        self._task: asyncio.Task[None] | None = None

    async def record_completion(
        self, request_id: str, stage: str, attempt: int, output: bytes
    ) -> tuple[bool, bytes]:
        fut: asyncio.Future[tuple[bool, bytes]] = asyncio.get_running_loop().create_future()
        self._queue.append(((request_id, stage, attempt), output, fut))
        if not self._writing:
            self._writing = True
            self._task = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                try:
                    await self._write(batch)
                except Exception as exc:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
        finally:
            self._writing = False

    async def _write(
        self, batch: list[tuple[tuple[str, str, int], bytes, asyncio.Future[tuple[bool, bytes]]]]
    ) -> None:
        # One row per key; a repeat of a key within the batch is a duplicate of the first.
        first: dict[tuple[str, str, int], bytes] = {}
        for key, output, _ in batch:
            first.setdefault(key, output)
        keys = list(first)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                self.SQL,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [first[k].decode() for k in keys],
            )
        result = {
            (r["request_id"], r["stage"], r["attempt"]): (
                bool(r["inserted"]),
                str(r["output"]).encode(),
            )
            for r in rows
        }
        claimed: set[tuple[str, str, int]] = set()
        for key, _, fut in batch:
            inserted, stored = result[key]
            if fut.done():
                continue
            if inserted and key not in claimed:
                claimed.add(key)
                fut.set_result((True, stored))
            else:
                fut.set_result((False, stored))


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
    """Claims on outcome emails: one email per (request, kind)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def claim(self, request_id: str, kind: str, message_id: str, recipient: str) -> bool:
        """True if this caller should send. False if it was sent, or another sender holds
        a fresh claim. A claim older than the lease (the sender died mid-send) is taken."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "INSERT INTO vividly.notifications"
                " (request_id, kind, status, message_id, recipient)"
                " VALUES ($1, $2, 'sending', $3, $4)"
                " ON CONFLICT (request_id, kind) DO UPDATE SET claimed_at = now()"
                "   WHERE vividly.notifications.status = 'sending'"
                "     AND vividly.notifications.claimed_at"
                f"        < now() - interval '{SEND_LEASE_S} seconds'"
                " RETURNING 1",
                request_id,
                kind,
                message_id,
                recipient,
            )
            return row is not None

    async def mark_sent(self, request_id: str, kind: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE vividly.notifications SET status = 'sent', sent_at = now()"
                " WHERE request_id = $1 AND kind = $2",
                request_id,
                kind,
            )

    async def release(self, request_id: str, kind: str) -> None:
        """Give up a claim after a failed send so a retry can send."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM vividly.notifications"
                " WHERE request_id = $1 AND kind = $2 AND status = 'sending'",
                request_id,
                kind,
            )


async def create_pool(url: str, size: int = 4) -> Any:
    return await asyncpg.create_pool(url, min_size=1, max_size=size)
