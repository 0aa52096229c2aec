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
import httpx
import pytest

from tests.integration.kafka_util import read_topic
from vividly.config import STAGE_TOPICS, TRACKING_TOPIC, Settings
from vividly.platform.stack import free_port, pid_alive
from vividly.publish import KafkaPublisher
from vividly.tracker import RequestTracker

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def vividly(
    env: dict[str, str], *args: str, timeout: float = 240, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vividly.platform.cli", *args],
        cwd=cwd,
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
        # An SRE's own tooling reads the log: Debian's kcat lists and consumes it.
        bootstrap = procs["kafka"]["url"]
        listed = subprocess.run(
            ["kcat", "-b", bootstrap, "-L"], capture_output=True, text=True, timeout=30
        )
        assert listed.returncode == 0, listed.stderr
        assert f'topic "{TRACKING_TOPIC}"' in listed.stdout
        keys = subprocess.run(
            ["kcat", "-b", bootstrap, "-C", "-t", TRACKING_TOPIC, "-o", "beginning", "-e", "-q",
             "-f", "%k\\n"],
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
        assert keys.returncode == 0, keys.stderr
        assert rid in keys.stdout.split()

        # Status names Postgres without its password; the password is beside the secret.
        home = Path(stack_env["VIVIDLY_HOME"])
        password = (home / "pg-password").read_text().strip()
        assert password not in status.stdout
        assert password not in (home / "stack.json").read_text()
        pg_url = Settings(home=home, pg_port=int(stack_env["VIVIDLY_PG_PORT"])).local_database_url()
        assert password in pg_url

        async def versions() -> list[str]:
            conn = await asyncpg.connect(pg_url)
            try:
                rows = await conn.fetch("SELECT version FROM vividly.schema_migrations")
                return [r["version"] for r in rows]
            finally:
                await conn.close()

        assert "0001_base" in asyncio.run(versions())
        migrate = vividly(stack_env, "db", "migrate")  # finds the stack's URL itself
        assert "up to date" in migrate.stdout
    finally:
        down = vividly(stack_env, "down")
    assert down.returncode == 0
    for p in procs.values():
        assert not pid_alive(p["pid"]), p
    assert vividly(stack_env, "status").returncode == 3


def test_foreground_up_stops_everything_on_ctrl_c(stack_env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vividly.platform.cli", "up", "--infra-only"],
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


def test_two_components_on_one_port_is_refused_naming_both(stack_env: dict[str, str]) -> None:
    """A user's VIVIDLY_API_PORT equal to the Gemini emulator's: the API would find the
    emulator listening there and look started; `up` refuses before starting anything."""
    port = str(free_port())
    env = {**stack_env, "VIVIDLY_GEMINI_PORT": port, "VIVIDLY_API_PORT": port}
    up = vividly(env, "up")
    assert up.returncode == 1
    assert f"VIVIDLY_GEMINI_PORT and VIVIDLY_API_PORT are both {port}" in up.stderr
    assert "Traceback" not in up.stderr
    assert not (Path(stack_env["VIVIDLY_HOME"]) / "pgdata").exists(), "nothing was started"


def dashboard(info: dict[str, object], token: str) -> dict[str, int]:

    r = httpx.get(
        f"{info['api']}/api/v1/monitoring/dashboard",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    counts: dict[str, int] = r.json()["counts"]
    return counts


def wait_until(what: str, fn: object, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()  # type: ignore[operator]
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_the_readme_path_default_home_up_token_submit_demo_kill_down_up(tmp_path: Path) -> None:
    """The README's commands as a new user runs them: nothing exported but free ports
    (so two test runs never collide), the default VIVIDLY_HOME (``.vividly`` in the
    working directory); then a crashed service, ``down``, ``up`` again: every request,
    event and email is still there, and a rebuild agrees with the live read model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIVIDLY_")}
    env["COLUMNS"] = "200"
    for name in (
        "KAFKA", "KAFKA_CONTROLLER", "PG", "GEMINI", "VIDEO", "S3", "SMTP", "API",
        "JAEGER_OTLP", "JAEGER_OTLP_GRPC", "JAEGER_QUERY", "JAEGER_QUERY_GRPC", "JAEGER_HEALTH",
    ):  # fmt: skip
        env[f"VIVIDLY_{name}_PORT"] = str(free_port())
    cwd = tmp_path / "newuser"
    cwd.mkdir()

    def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return vividly(env, *args, timeout=timeout, cwd=cwd)

    info: dict[str, object] = {}
    up = cli("up", "--detach")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert (cwd / ".vividly" / "stack.json").exists(), "the default home"
        status = cli("status", "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        procs: dict[str, dict[str, object]] = info["processes"]  # type: ignore[assignment]
        assert set(procs) >= {
            "postgres", "kafka", "gemini-emulator", "video-emulator", "s3-moto",
            "smtp-sink", "ingest", "rag", "script", "video", "notify", "projector", "api",
            "jaeger",
        }  # fmt: skip
        assert info["traces"] == f"http://127.0.0.1:{env['VIVIDLY_JAEGER_QUERY_PORT']}"
        assert f"traces: Jaeger's query API at {info['traces']}" in up.stdout
        assert str(info["kafka_log_dir"]).startswith(str(cwd / ".vividly"))
        token = cli("token", "--role", "admin")
        assert token.returncode == 0, token.stderr
        admin = token.stdout.strip()
        assert admin.count(".") == 2
        sub = cli(
            "submit", "--topic", "Volcanoes", "--objective", "Explain how volcanoes form",
            "--grade", "6", "--duration", "1", "--json",
        )  # fmt: skip
        assert sub.returncode == 0, sub.stderr
        first = json.loads(sub.stdout)["request_id"]
        demo = cli("demo", "--count", "4", "--timeout", "180")
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "4 completed, 0 failed" in demo.stdout
        mail = Path(str(info["mail_dir"]))
        wait_until("5 emails", lambda: len(list(mail.glob("*.eml"))) == 5)
        wait_until("5 completed", lambda: dashboard(info, admin)["completed"] == 5)

        # Its trace, from the local Jaeger, through the API (Jaeger itself has no login).
        def traced() -> dict[str, object] | None:
            r = httpx.get(
                f"{info['api']}/api/v1/monitoring/requests/{first}/trace",
                headers={"Authorization": f"Bearer {admin}"},
                timeout=10,
            )
            assert r.status_code in (200, 404), r.text
            body: dict[str, object] = r.json()
            names = {s["name"] for s in body.get("spans", [])}  # type: ignore[attr-defined]
            return body if {"stage notification", "smtp send"} <= names else None

        tree = wait_until("the first request's trace", traced)
        # `vividly submit` exported its root where the stack's services export theirs.
        assert {"cli", "ingest", "rag", "script", "video", "notify"} <= set(tree["services"])  # type: ignore[index]
        assert tree["spans"][0]["name"] == "submit request"  # type: ignore[index]
        assert tree["complete"] is True  # type: ignore[index]

        # One crashed service does not take the stack down: it is started again.
        notify_pid = int(str(procs["notify"]["pid"]))
        others = {n: p["pid"] for n, p in procs.items() if n != "notify"}
        os.kill(notify_pid, signal.SIGKILL)

        def restarted() -> dict[str, object] | None:
            now = json.loads(cli("status", "--json").stdout)
            n = now["processes"]["notify"]
            return now if n["restarts"] == 1 and n["pid"] != notify_pid else None

        now = wait_until("notify restarted", restarted)
        assert {n: p["pid"] for n, p in now["processes"].items() if n != "notify"} == others  # type: ignore[index]
        assert "restarts" in cli("status").stdout
        again = cli("submit", "--topic", "Tides", "--objective", "Explain the tides", "--json")
        assert again.returncode == 0, again.stderr
        wait_until("6 completed", lambda: dashboard(info, admin)["completed"] == 6)
        wait_until("6 emails", lambda: len(list(mail.glob("*.eml"))) == 6)
        exported = cli("events", "export", "--since", "7d")
        assert exported.returncode == 0, exported.stderr
        events_before = len(exported.stdout.splitlines())

        # down and up: the log, the read model and every request are still there.
        assert cli("down").returncode == 0
        for p in json.loads(json.dumps(now))["processes"].values():
            wait_until(f"pid {p['pid']} gone", lambda p=p: not pid_alive(p["pid"]))
        up2 = cli("up", "--detach")
        assert up2.returncode == 0, up2.stdout + up2.stderr
        info = json.loads(cli("status", "--json").stdout)
        assert cli("token", "--role", "admin").stdout.strip()  # same secret file
        exported = cli("events", "export", "--since", "7d")
        assert len(exported.stdout.splitlines()) >= events_before, "the history survived"
        wait_until("6 completed after up", lambda: dashboard(info, admin)["completed"] == 6)
        more = cli("submit", "--topic", "Rivers", "--objective", "How rivers shape land", "--json")
        assert more.returncode == 0, more.stderr
        wait_until("7 completed", lambda: dashboard(info, admin)["completed"] == 7)
        rebuilt = cli("projector", "rebuild")
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        assert dashboard(info, admin)["completed"] == 7, "a rebuild never shrinks the model"
    finally:
        down = cli("down")
    assert down.returncode == 0
    for p in info.get("processes", {}).values():  # type: ignore[attr-defined]
        wait_until(f"pid {p['pid']} gone", lambda p=p: not pid_alive(p["pid"]))
