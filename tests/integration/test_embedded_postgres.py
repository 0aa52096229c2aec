"""The embedded Postgres asks for a password: one generated beside the JWT secret, never
trust, and a cluster an older version made with trust is switched over, data kept."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest

from vividly.platform.stack import EmbeddedPostgres, free_port

pytestmark = pytest.mark.integration


async def _connect_fails(url: str) -> str:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidPasswordError as exc:
        return str(exc)
    await conn.close()
    return ""


def test_a_new_cluster_needs_the_generated_password(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pgdata", free_port())
    pg.start()
    try:
        pw_file = tmp_path / "pg-password"
        assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
        assert len(pw_file.read_text().strip()) >= 32
        no_password = pg.display_url
        assert "password authentication failed" in asyncio.run(_connect_fails(no_password))
        wrong = no_password.replace("postgres@", "postgres:wrong@")
        assert "password authentication failed" in asyncio.run(_connect_fails(wrong))
        assert asyncio.run(_connect_fails(pg.url)) == ""
        hba = (tmp_path / "pgdata" / "pg_hba.conf").read_text()
        rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
        assert rules
        assert all(r[-1] == "scram-sha-256" for r in rules), rules
        assert pg.managed is not None
        assert pw_file.read_text().strip() not in pg.managed.url  # status shows no password
    finally:
        pg.stop()


def test_a_cluster_made_with_trust_is_switched_to_passwords_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    pgdata = tmp_path / "pgdata"
    old = EmbeddedPostgres(pgdata, free_port())
    # What the previous version did: initdb --auth=trust, then a table with a row.
    pgdata.mkdir()
    as_user = old._as_user()
    init = subprocess.run(
        [str(old.bin_dir() / "initdb"), "--auth=trust", "-U", "postgres", "-D", str(pgdata)],
        capture_output=True,
        text=True,
        check=False,
        **as_user,
    )
    assert init.returncode == 0, init.stderr
    bins, port = old.bin_dir(), free_port()
    opts = f"-p {port} -h 127.0.0.1 -k {pgdata}"
    for cmd in (
        # -l: the server it leaves running must not hold our output pipes open.
        [
            str(bins / "pg_ctl"),
            "-D",
            str(pgdata),
            "-o",
            opts,
            "-l",
            str(pgdata / "old.log"),
            "-w",
            "start",
        ],
        [
            str(bins / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-qc",
            "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)",
        ],
        [str(bins / "pg_ctl"), "-D", str(pgdata), "-w", "stop"],
    ):
        run = subprocess.run(cmd, capture_output=True, text=True, check=False, **as_user)
        assert run.returncode == 0, run.stderr
    assert "trust" in (pgdata / "pg_hba.conf").read_text()
    (tmp_path / "pg-password").unlink(missing_ok=True)
    pg = EmbeddedPostgres(pgdata, free_port())
    pg.start()
    try:
        assert "password authentication failed" in asyncio.run(_connect_fails(pg.display_url))
    finally:
        pg.stop()
    again = EmbeddedPostgres(pgdata, free_port())
    again.start()
    try:

        async def kept() -> int:
            conn = await asyncpg.connect(again.url)
            try:
                return int(await conn.fetchval("SELECT v FROM kept"))
            finally:
                await conn.close()

        assert asyncio.run(kept()) == 7
        assert "password authentication failed" in asyncio.run(_connect_fails(again.display_url))
    finally:
        again.stop()
