"""bench.gen_read_model writes what the fold would: the benchmark measures the read model
the projector keeps, not a shape of its own."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bench.gen_read_model import generate
from tests.conftest import fresh_database

pytestmark = pytest.mark.integration


def test_the_generated_read_model_has_every_column_the_fold_keeps(postgres: str) -> None:
    url = fresh_database(postgres, "gen")
    counts = asyncio.run(generate(url, 3000, 4, say=lambda _m: None))
    assert counts == {"requests": 3000, "events": 12000}

    async def check() -> tuple[int, int, int]:
        conn = await asyncpg.connect(url)
        try:
            # Each request's longest attempt per stage, as the fold keeps it.
            mismatched = await conn.fetchval(
                """SELECT count(*) FROM vividly_read.requests r
                   WHERE r.slowest_ms IS DISTINCT FROM (
                       SELECT jsonb_object_agg(stage, m) FROM (
                           SELECT stage, max(duration_ms) AS m
                           FROM vividly_read.request_stages s
                           WHERE s.request_id = r.request_id GROUP BY stage) x)"""
            )
            stages = await conn.fetchval("SELECT count(*) FROM vividly_read.request_stages")
            probe = await conn.fetchval(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = 'vividly_read'"
                " AND indexname = 'request_stages_probe'"
            )
            return mismatched, stages, probe
        finally:
            await conn.close()

    mismatched, stages, probe = asyncio.run(check())
    assert (mismatched, stages, probe) == (0, 18000, 0)
