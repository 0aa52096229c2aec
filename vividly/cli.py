"""The ``vividly`` command: the local stack (up/down/status) and database migrations.

``vividly up`` starts the embedded default (Tansu broker + Postgres with pgvector),
creates the topics, applies migrations, and stays in the foreground until Ctrl-C;
``--detach`` runs it in the background. State (data, logs, ``stack.json``) lives under
``VIVIDLY_HOME`` (default ``.vividly``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vividly.config import DLQ_TOPIC, STAGE_TOPICS, TRACKING_TOPIC, Settings

console = Console(stderr=False)
err = Console(stderr=True)

READY_TIMEOUT_S = 180.0


def stack_topics(settings: Settings) -> dict[str, int]:
    return {t: settings.topic_partitions for t in (*STAGE_TOPICS, TRACKING_TOPIC, DLQ_TOPIC)}


# --------------------------------------------------------------------------- state file
class StackState:
    """``<home>/stack.json`` plus an flock held by the running supervisor."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.file = home / "stack.json"
        self.lock_file = home / "up.lock"
        self._lock_fd: int | None = None

    def acquire(self) -> bool:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def held_elsewhere(self) -> bool:
        if not self.lock_file.exists():
            return False
        fd = os.open(self.lock_file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def write(self, data: dict[str, Any]) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.file)

    def read(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data


# --------------------------------------------------------------------------- up / down
def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    home = settings.home.resolve()
    state = StackState(home)
    if state.held_elsewhere():
        current = state.read() or {}
        err.print(
            f"[yellow]The local stack is already running[/] (supervisor pid "
            f"{current.get('supervisor_pid', '?')}, home {home}).\n"
            "See it with `vividly status`; stop it with `vividly down`."
        )
        return 1
    if args.detach:
        return _up_detached(home, settings)
    if not state.acquire():
        err.print("[yellow]Another `vividly up` is starting right now.[/]")
        return 1
    return _up_foreground(state, settings)


def _up_detached(home: Path, settings: Settings) -> int:
    home.mkdir(parents=True, exist_ok=True)
    log = home / "up.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vividly.cli", "up"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "VIVIDLY_HOME": str(home)},
        )
    state = StackState(home)
    deadline = time.monotonic() + READY_TIMEOUT_S
    with console.status("starting the local stack…"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err.print(
                    f"[red]The stack failed to start[/] (exit {proc.returncode}); "
                    f"last lines of {log}:"
                )
                err.print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
                return 1
            data = state.read()
            if data and data.get("status") == "ready" and data.get("supervisor_pid") == proc.pid:
                _print_status(data, settings)
                console.print("Stop it with [bold]vividly down[/].")
                return 0
            time.sleep(0.2)
    err.print(f"[red]The stack did not become ready within {READY_TIMEOUT_S:.0f}s[/]; see {log}")
    return 1


def _up_foreground(state: StackState, settings: Settings) -> int:
    from vividly.bus import ensure_topics
    from vividly.db import migrate
    from vividly.stack import EmbeddedPostgres, StackError, TansuBroker

    home = state.home
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    components: list[Any] = []
    info: dict[str, Any] = {
        "supervisor_pid": os.getpid(),
        "home": str(home),
        "status": "starting",
        "started_at": time.time(),
        "processes": {},
    }
    state.write(info)
    code = 0
    try:
        pg = EmbeddedPostgres(home / "pgdata", settings.pg_port)
        broker = TansuBroker(settings.kafka_port, home)
        with console.status("starting Postgres…"):
            components.append(pg)
            pg_proc = pg.start()
        info["processes"]["postgres"] = {"pid": pg_proc.pid, "url": pg.url, "log": str(pg_proc.log)}
        with console.status("starting the Kafka broker (Tansu)…"):
            components.append(broker)
            kafka_proc = broker.start()
        info["processes"]["kafka"] = {
            "pid": kafka_proc.pid,
            "url": broker.bootstrap,
            "log": str(kafka_proc.log),
        }
        topic_settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        with console.status("creating topics…"):
            ensure_topics(topic_settings, stack_topics(settings))
        with console.status("applying migrations…"):
            applied = asyncio.run(migrate(pg.url))
        info["migrations_applied"] = applied
        info["topics"] = sorted(stack_topics(settings))
        info["status"] = "ready"
        state.write(info)
        _print_status(info, settings)
        console.print("Press [bold]Ctrl-C[/] to stop everything.")
        while not stop.wait(0.5):
            for c in components:
                if c.managed is not None and c.managed.proc.poll() is not None:
                    err.print(
                        f"[red]{c.managed.name} exited[/] (code {c.managed.proc.returncode});"
                        f" see {c.managed.log}. Stopping the stack."
                    )
                    code = 1
                    stop.set()
    except StackError as exc:
        err.print(f"[red]Cannot start the local stack:[/] {exc}")
        code = 1
    finally:
        with console.status("stopping…"):
            for c in reversed(components):
                c.stop()
        state.release()
        console.print("Local stack stopped.")
    return code


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.stack import pid_alive, stop_pid

    state = StackState(settings.home.resolve())
    data = state.read()
    if not state.held_elsewhere() and not data:
        console.print("The local stack is not running.")
        return 0
    data = data or {}
    sup = data.get("supervisor_pid")
    with console.status("stopping the local stack…"):
        if isinstance(sup, int) and pid_alive(sup):
            stop_pid(sup, timeout=60.0)
        # Whatever the supervisor left behind (it was SIGKILLed, say): stop by PID.
        for proc in data.get("processes", {}).values():
            pid = proc.get("pid")
            if isinstance(pid, int) and pid_alive(pid):
                stop_pid(pid, timeout=30.0)
    with contextlib.suppress(FileNotFoundError):
        state.file.unlink()
    console.print("Local stack stopped.")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.stack import pid_alive

    state = StackState(settings.home.resolve())
    data = state.read()
    running = state.held_elsewhere() and data is not None
    if not running or data is None:
        if args.json:
            print(json.dumps({"running": False, "home": str(state.home)}))
        else:
            console.print("The local stack is not running. Start it with `vividly up`.")
        return 3
    for proc in data.get("processes", {}).values():
        proc["alive"] = pid_alive(int(proc["pid"]))
    data["running"] = True
    if args.json:
        print(json.dumps(data))
    else:
        _print_status(data, settings)
    return 0


def _print_status(data: dict[str, Any], settings: Settings) -> None:
    table = Table(title=f"Vividly local stack ({data.get('status', '?')})")
    table.add_column("component")
    table.add_column("pid", justify="right")
    table.add_column("address", overflow="fold")
    table.add_column("log", overflow="fold")
    for name, proc in data.get("processes", {}).items():
        alive = proc.get("alive", True)
        table.add_row(
            name if alive else f"{name} [red](dead)[/]",
            str(proc["pid"]),
            proc["url"],
            proc.get("log", ""),
        )
    console.print(table)
    kafka = data.get("processes", {}).get("kafka", {}).get("url")
    pg = data.get("processes", {}).get("postgres", {}).get("url")
    if kafka and pg:
        console.print(f"export VIVIDLY_KAFKA_BOOTSTRAP={kafka} VIVIDLY_DATABASE_URL={pg}")


# --------------------------------------------------------------------------- db
def cmd_db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.db import migrate

    url = args.database_url or settings.effective_database_url()
    try:
        applied = asyncio.run(migrate(url))
    except OSError as exc:
        err.print(f"[red]Cannot reach Postgres at {url}:[/] {exc}")
        return 1
    console.print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vividly", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the embedded local stack")
    up.add_argument("--detach", "-d", action="store_true", help="run in the background")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the local stack")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="what runs, PIDs, addresses")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    db = sub.add_parser("db", help="database tasks")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="TASK")
    mig = db_sub.add_parser("migrate", help="apply pending migrations (idempotent)")
    mig.add_argument("--database-url", help="defaults to VIVIDLY_DATABASE_URL / DATABASE_URL")
    mig.set_defaults(func=cmd_db_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic ValidationError: a bad VIVIDLY_* value
        err.print(f"[red]Bad configuration:[/] {exc}")
        return 2
    code: int = args.func(args, settings)
    return code


if __name__ == "__main__":
    sys.exit(main())
