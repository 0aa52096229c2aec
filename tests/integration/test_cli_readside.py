"""The analyst and operator commands against a real broker and Postgres: token, events
export (jsonl, csv, parquet), events replay, projector rebuild."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import jwt
import pyarrow.parquet as pq
import pytest

from tests.conftest import Broker, fresh_database
from tests.integration.test_projector import publish_mix
from tests.integration.test_tracker_events import FULL_RUN
from vividly.config import TRACKING_TOPIC
from vividly.platform.cli import main
from vividly.runtime.bus import ensure_topics
from vividly.runtime.db import migrate

pytestmark = pytest.mark.integration


@pytest.fixture
def database(postgres: str) -> str:
    return fresh_database(postgres, "cli")


@pytest.fixture
def env(broker: Broker, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIVIDLY_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("VIVIDLY_DATABASE_URL", database)
    monkeypatch.setenv("VIVIDLY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VIVIDLY_TOPIC_PARTITIONS", "3")
    ensure_topics(broker.settings(), {TRACKING_TOPIC: 3})
    asyncio.run(migrate(database))
    return tmp_path


def test_token_is_signed_with_the_local_secret(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--role", "teacher", "--org", "org-7", "--ttl", "120"]) == 0
    token = capsys.readouterr().out.strip()
    secret = (env / "home" / "jwt-secret").read_text().strip()
    claims = jwt.decode(token, secret, algorithms=["HS256"], issuer="vividly")
    assert (claims["role"], claims["org"]) == ("teacher", "org-7")
    assert claims["exp"] - claims["iat"] == 120
    assert main(["token", "--role", "student"]) == 2  # needs --sub
    with pytest.raises(SystemExit) as bad:
        main(["token", "--role", "janitor"])
    assert bad.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_export_writes_the_same_events_as_jsonl_csv_and_parquet(
    env: Path, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    since = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    rids = publish_mix(broker.settings(), TRACKING_TOPIC, 3)
    rid = rids[0]
    out = {fmt: env / f"events.{fmt}" for fmt in ("jsonl", "csv", "parquet")}
    for fmt, path in out.items():
        code = main(
            [
                "events",
                "export",
                "--since",
                since,
                "--request",
                rid,
                "--format",
                fmt,
                "-o",
                str(path),
            ]
        )
        assert code == 0
    lines = [json.loads(line) for line in out["jsonl"].read_text().splitlines()]
    logged = iter(["request_submitted", "cache_hit"])  # what run_one_request logs
    expected = [next(logged) if k == "event_logged" else k for k in FULL_RUN]
    assert [r["event_type"] for r in lines] == expected
    assert len(lines) == len(FULL_RUN)
    assert {r["request_id"] for r in lines} == {rid}
    failed = next(r for r in lines if r["event_type"] == "stage_failed")
    assert failed["payload"]["error_message"] == "gemini timed out"
    assert isinstance(failed["payload"]["error_details"], dict)
    with out["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["event_id"] for r in rows] == [r["event_id"] for r in lines]
    table = pq.read_table(out["parquet"])
    assert table.column("event_id").to_pylist() == [r["event_id"] for r in lines]
    # Stage filter, and a window that ends before the events: nothing.
    assert (
        main(
            [
                "events",
                "export",
                "--since",
                since,
                "--stage",
                "script_generation",
                "-o",
                str(out["jsonl"]),
            ]
        )
        == 0
    )
    staged = [json.loads(line) for line in out["jsonl"].read_text().splitlines()]
    assert {r["stage"] for r in staged} == {"script_generation"}
    assert len([r for r in staged if r["request_id"] in rids]) == 3 * 5
    assert (
        main(["events", "export", "--until", "2001-01-01T00:00:00Z", "-o", str(out["jsonl"])]) == 0
    )
    assert out["jsonl"].read_text() == ""
    assert main(["events", "export", "--format", "parquet"]) == 2
    assert "needs --output" in capsys.readouterr().err


def test_replay_and_rebuild_commands(env: Path, broker: Broker, database: str) -> None:
    since = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    rids = publish_mix(broker.settings(), TRACKING_TOPIC, 2)
    schema = f"analysis_{int(time.time() * 1000)}"
    assert main(["events", "replay", "--since", since, "--schema", schema]) == 0
    assert main(["projector", "rebuild"]) == 0

    async def check() -> None:
        conn = await asyncpg.connect(database)
        try:
            got = {r[0] for r in await conn.fetch(f"SELECT request_id FROM {schema}.requests")}
            assert got == set(rids)
            live = await conn.fetchval(
                "SELECT count(*) FROM vividly_read.requests WHERE request_id = ANY($1)", rids
            )
            assert live == len(rids)
        finally:
            await conn.close()

    asyncio.run(check())
    assert main(["events", "replay", "--schema", "vividly_read"]) == 2
