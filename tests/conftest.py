"""Fixtures that start real infrastructure on free ports and stop it by PID.

``broker`` is Apache Kafka (KRaft, one node), started once per session; ``postgres`` is
an embedded Postgres 18 + pgvector.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vividly.config import Settings
from vividly.platform.stack import ApacheKafkaBroker, EmbeddedPostgres, free_port

BROKERS = ["apache"]


@dataclass(frozen=True)
class Broker:
    kind: str
    bootstrap: str

    def settings(self, **overrides: object) -> Settings:
        base: dict[str, object] = {
            "kafka_bootstrap": self.bootstrap,
            "topic_partitions": 3,
            "commit_interval_s": 0.1,
        }
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]


class BrokerPool:
    """Starts each kind of broker once per session, on first use; stops them at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started: dict[str, tuple[Broker, ApacheKafkaBroker]] = {}

    def get(self, kind: str) -> Broker:
        if kind not in self._started:
            if kind != "apache":
                raise ValueError(f"unknown broker {kind!r}")
            proc = ApacheKafkaBroker(self.workdir / "apache")
            proc.start()
            self._started[kind] = (Broker(kind, proc.bootstrap), proc)
        return self._started[kind][0]

    def stop_all(self) -> None:
        for _, proc in self._started.values():
            proc.stop()
        self._started.clear()


@pytest.fixture(scope="session")
def broker_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerPool]:
    pool = BrokerPool(tmp_path_factory.mktemp("brokers"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="session", params=BROKERS)
def broker(request: pytest.FixtureRequest, broker_pool: BrokerPool) -> Broker:
    return broker_pool.get(request.param)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    os.environ.setdefault("VIVIDLY_PG_FAST", "1")
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata", free_port())
    pg.start()
    try:
        yield pg.url
    finally:
        pg.stop()


def fresh_database(postgres_url: str, prefix: str = "t") -> str:
    """A new empty database on the session's Postgres; its URL. Tests that use the live
    read-model schema (vividly_read) take one, so folds of different brokers' logs never
    meet in one schema."""
    import asyncio

    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    asyncio.run(create())
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(autouse=True)
def _closed_breakers() -> None:
    """Every test starts with the process's circuit breakers closed and at their default
    settings: they are module globals, and a test that left them at fail_max 3 and a 60 s
    cool-down held the guide's Gemini example (run after the unit tests) for a minute."""
    from vividly.breakers import (
        DEFAULT_FAIL_MAX,
        DEFAULT_RESET_TIMEOUT_S,
        configure_breakers,
        reset_all,
    )

    configure_breakers(DEFAULT_FAIL_MAX, DEFAULT_RESET_TIMEOUT_S)
    reset_all()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def artifacts() -> Path:
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
