"""Postgres helpers: the migration runner.

Migrations are plain SQL files ``migrations/NNNN_name.sql``, applied in order, each in
its own transaction, under an advisory lock so two runners never interleave. Each file
is itself idempotent (``IF NOT EXISTS``), so it also works with ``psql -f``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("vividly.runtime.db")

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x76697669  # "vivi"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        if not _NAME.match(path.name):
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(path.stem, path, path.read_text()))
    versions = [m.version[:4] for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {directory}")
    return found


async def migrate(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; returns the versions applied now (empty when none)."""
    migrations = discover(directory)
    conn = await asyncpg.connect(url)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute("CREATE SCHEMA IF NOT EXISTS vividly")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS vividly.schema_migrations ("
            " version text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch("SELECT version, checksum FROM vividly.schema_migrations")
        done = {r["version"]: r["checksum"] for r in rows}
        for m in migrations:
            if m.version in done:
                if done[m.version] != m.checksum:
                    log.warning("applied migration changed since", extra={"version": m.version})
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO vividly.schema_migrations (version, checksum) VALUES ($1, $2)"
                    " ON CONFLICT (version) DO NOTHING",
                    m.version,
                    m.checksum,
                )
            applied_now.append(m.version)
            log.info("migration applied", extra={"version": m.version})
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        finally:
            await conn.close()
    return applied_now
