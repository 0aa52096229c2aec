"""`vividly up/status/down` start and stop the embedded stack, by PID, on chosen ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from tests.integration.kafka_util import read_topic
from vividly.config import STAGE_TOPICS, TRACKING_TOPIC, Settings
from vividly.publish import KafkaPublisher
from vividly.stack import free_port, pid_alive
from vividly.tracker import RequestTracker

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def vividly(
    env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vividly.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "VIVIDLY_HOME": str(tmp_path / "home"),
        "VIVIDLY_KAFKA_PORT": str(free_port()),
        "VIVIDLY_PG_PORT": str(free_port()),
        "COLUMNS": "200",
    }


def test_up_detach_status_second_up_and_down(stack_env: dict[str, str]) -> None:
    up = vividly(stack_env, "up", "--detach", "--infra-only")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        status = vividly(stack_env, "status", "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["running"] is True
        procs = info["processes"]
        assert set(procs) == {"postgres", "kafka"}
        assert all(p["alive"] for p in procs.values())
        assert procs["kafka"]["url"] == f"127.0.0.1:{stack_env['VIVIDLY_KAFKA_PORT']}"
        assert set(info["topics"]) >= {*STAGE_TOPICS, TRACKING_TOPIC, "requests.dlq"}

        again = vividly(stack_env, "up", "--infra-only")
        assert again.returncode == 1
        assert "already running" in again.stderr

        # The stack is usable: events go through its broker, migrations are in its Postgres.
        settings = Settings(kafka_bootstrap=procs["kafka"]["url"])
        pub = KafkaPublisher(settings, "stack-test")
        tracker = RequestTracker(pub)
        rid, _ = tracker.create_request("s", "Volcanoes", "o", "6", 2)
        assert tracker.flush(20).ok
        got = read_topic(
            settings, TRACKING_TOPIC, lambda ms: any(m.key() == rid.encode() for m in ms)
        )
        assert any(m.key() == rid.encode() for m in got)
        pub.close(5)

        async def versions() -> list[str]:
            conn = await asyncpg.connect(procs["postgres"]["url"])
            try:
                rows = await conn.fetch("SELECT version FROM vividly.schema_migrations")
                return [r["version"] for r in rows]
            finally:
                await conn.close()

        assert "0001_base" in asyncio.run(versions())
        migrate = vividly(stack_env, "db", "migrate", "--database-url", procs["postgres"]["url"])
        assert "up to date" in migrate.stdout
    finally:
        down = vividly(stack_env, "down")
    assert down.returncode == 0
    for p in procs.values():
        assert not pid_alive(p["pid"]), p
    assert vividly(stack_env, "status").returncode == 3


def test_foreground_up_stops_everything_on_ctrl_c(stack_env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vividly.cli", "up", "--infra-only"],
        cwd=ROOT,
        env=stack_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        info = None
        while time.monotonic() < deadline:
            status = vividly(stack_env, "status", "--json")
            if status.returncode == 0:
                info = json.loads(status.stdout)
                if info.get("status") == "ready":
                    break
            time.sleep(0.5)
        assert info is not None
        assert info["status"] == "ready"
        proc.send_signal(signal.SIGINT)
        out, _err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "Local stack stopped" in out
    for p in info["processes"].values():
        assert not pid_alive(p["pid"])


def test_a_taken_port_is_named_in_the_error(stack_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", int(stack_env["VIVIDLY_KAFKA_PORT"])))
        s.listen()
        up = vividly(stack_env, "up")
    assert up.returncode == 1
    assert "VIVIDLY_KAFKA_PORT" in up.stderr
    assert "Traceback" not in up.stderr


def test_the_whole_pipeline_runs_on_the_local_stack_submit_and_demo(
    stack_env: dict[str, str],
) -> None:
    for name in ("GEMINI", "VIDEO", "S3", "SMTP", "API"):
        stack_env[f"VIVIDLY_{name}_PORT"] = str(free_port())
    up = vividly(stack_env, "up", "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads(vividly(stack_env, "status", "--json").stdout)
        assert set(info["processes"]) >= {
            "gemini-emulator",
            "video-emulator",
            "s3-moto",
            "smtp-sink",
            "ingest",
            "rag",
            "script",
            "video",
            "notify",
            "projector",
            "api",
        }
        assert info["dashboard"].endswith("/monitoring/dashboard")
        sub = vividly(
            stack_env,
            "submit",
            "--topic",
            "Volcanoes",
            "--objective",
            "Explain how volcanoes form",
            "--grade",
            "6",
            "--duration",
            "1",
            "--json",
        )
        assert sub.returncode == 0, sub.stderr
        assert set(json.loads(sub.stdout)) == {"request_id", "correlation_id"}
        demo = vividly(stack_env, "demo", "--count", "6", "--timeout", "120")
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "6 completed, 0 failed" in demo.stdout
        mail = Path(info["mail_dir"])
        deadline = time.monotonic() + 30
        while len(list(mail.glob("*.eml"))) < 7 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(mail.glob("*.eml"))) == 7
        # The read side saw all of it: the API, with a token minted by the CLI.
        import httpx

        token = vividly(stack_env, "token", "--role", "admin").stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            dash = httpx.get(f"{info['api']}/api/v1/monitoring/dashboard", headers=headers)
            assert dash.status_code == 200, dash.text
            if dash.json()["counts"]["completed"] == 7:
                break
            time.sleep(0.5)
        assert dash.json()["counts"]["completed"] == 7
        page = httpx.get(info["dashboard"])
        assert page.status_code == 200
        bad = vividly(stack_env, "submit", "--topic", "Volcanoes")
        assert bad.returncode == 2
        assert "--objective" in bad.stderr
    finally:
        down = vividly(stack_env, "down")
    assert down.returncode == 0
    for p in info["processes"].values():
        assert not pid_alive(p["pid"]), p
