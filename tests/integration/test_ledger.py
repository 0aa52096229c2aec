"""The Postgres ledgers: group-committed stage completions, submissions, email claims."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from vividly.db import migrate
from vividly.ledger import IngestLedger, NotificationLedger, PgLedger, create_pool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db(postgres: str) -> str:
    name = f"ledger_{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        conn = await asyncpg.connect(postgres)
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()

    asyncio.run(setup())
    url = postgres.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(migrate(url))
    return url


def test_concurrent_completions_each_key_wins_once(db: str) -> None:
    async def run() -> list[tuple[bool, bytes]]:
        pool = await create_pool(db)
        try:
            ledger = PgLedger(pool)
            calls = []
            for i in range(300):
                key = f"r{i % 100}"  # every key three times, all at once
                calls.append(
                    ledger.record_completion(key, "rag_retrieval", 1, f'{{"n": {i}}}'.encode())
                )
            return list(await asyncio.gather(*calls))
        finally:
            await pool.close()

    results = asyncio.run(run())
    for k in range(100):
        mine = [results[i] for i in range(300) if i % 100 == k]
        assert sum(1 for won, _ in mine if won) == 1
        stored = {out for _, out in mine}
        assert len(stored) == 1, "losers get the winner's stored output"
    # A later redelivery sees the stored output too.

    async def again() -> tuple[bool, bytes]:
        pool = await create_pool(db)
        try:
            return await PgLedger(pool).record_completion("r7", "rag_retrieval", 1, b'{"n": 999}')
        finally:
            await pool.close()

    won, out = asyncio.run(again())
    assert not won
    assert out != b'{"n": 999}'


def test_first_submission_wins_and_email_claims_are_exclusive(db: str) -> None:
    async def run() -> None:
        pool = await create_pool(db)
        try:
            ingest = IngestLedger(pool)
            assert await ingest.first_source("req-1", "t:0:5") == "t:0:5"
            assert await ingest.first_source("req-1", "t:1:9") == "t:0:5"
            mail = NotificationLedger(pool)
            assert await mail.claim("req-1", "content_ready", "<m>", "s@x")
            assert not await mail.claim("req-1", "content_ready", "<m>", "s@x")
            await mail.release("req-1", "content_ready")  # a failed send
            assert await mail.claim("req-1", "content_ready", "<m>", "s@x")
            await mail.mark_sent("req-1", "content_ready")
            assert not await mail.claim("req-1", "content_ready", "<m>", "s@x")
        finally:
            await pool.close()

    asyncio.run(run())


def test_concurrent_email_claims_have_one_winner_per_outcome(db: str) -> None:
    async def run() -> tuple[list[bool], list[bool]]:
        pool = await create_pool(db)
        try:
            mail = NotificationLedger(pool)
            first = await asyncio.gather(
                *(mail.claim(f"m{i % 100}", "content_ready", "<m>", "s@x") for i in range(300))
            )
            await asyncio.gather(*(mail.mark_sent(f"m{i}", "content_ready") for i in range(100)))
            again = await asyncio.gather(
                *(mail.claim(f"m{i}", "content_ready", "<m>", "s@x") for i in range(100)),
                *(mail.claim(f"m{i}", "error", "<e>", "s@x") for i in range(100)),
            )
            return list(first), list(again)
        finally:
            await pool.close()

    first, again = asyncio.run(run())
    for k in range(100):
        assert sum(first[i] for i in range(300) if i % 100 == k) == 1
    assert not any(again[:100]), "a sent email is never claimed again"
    assert all(again[100:]), "another outcome of the same request is its own email"
