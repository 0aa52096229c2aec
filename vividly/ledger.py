"""Postgres-backed state of the stage services (tables from migrations/0002)."""

from __future__ import annotations

from typing import Any

import asyncpg

SEND_LEASE_S = 120


class PgLedger:
    """:class:`vividly.stage.Ledger` on ``vividly.stage_ledger``."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def record_completion(
        self, request_id: str, stage: str, attempt: int, output: bytes
    ) -> tuple[bool, bytes]:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "INSERT INTO vividly.stage_ledger (request_id, stage, attempt, output)"
                " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING RETURNING 1",
                request_id,
                stage,
                attempt,
                output.decode(),
            )
            if row is not None:
                return True, output
            stored = await conn.fetchval(
                "SELECT output::text FROM vividly.stage_ledger"
                " WHERE request_id = $1 AND stage = $2 AND attempt = $3",
                request_id,
                stage,
                attempt,
            )
            return False, str(stored).encode()


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
