"""The pipeline's processes: emulators, moto's S3 server, the SMTP sink and the five stage
services, started as child processes against a broker and a Postgres, stopped by PID.

Used by ``vividly up`` (on the configured ports) and by the tests (on free ports).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vividly.platform.stack import (
    ROOT,
    Managed,
    StackError,
    _spawn,
    free_port,
    stop_pid,
    wait_for_port,
)

SERVICES: tuple[str, ...] = ("ingest", "rag", "script", "video", "notify")
#: The read side: the projector (folds tracking.events) and the monitoring API.
READ_SIDE: tuple[str, ...] = ("projector", "api")
_MODULES = {
    **{name: f"services.{name}.main" for name in SERVICES},
    "projector": "services.projector.main",
    "api": "services.projector.api.main",
}


@dataclass
class PipelinePorts:
    gemini: int
    video: int
    s3: int
    smtp: int
    api: int = 0

    @classmethod
    def free(cls) -> PipelinePorts:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


@dataclass
class Pipeline:
    kafka_bootstrap: str
    database_url: str
    home: Path
    ports: PipelinePorts
    video_job_seconds: float = 2.0
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Managed] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    _specs: dict[str, tuple[list[str], int | None, dict[str, str] | None, str]] = field(
        default_factory=dict, repr=False
    )

    @property
    def mail_dir(self) -> Path:
        return self.home / "mail"

    @property
    def gemini_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gemini}"

    @property
    def video_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.video}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    def env(self) -> dict[str, str]:
        """The services' environment: the caller's own (its ``VIVIDLY_*`` settings
        included: a user's ``VIVIDLY_STAGE_MAX_ATTEMPTS`` reaches the services), with the
        stack's addresses on top."""
        env = dict(os.environ)
        env.update(
            {
                "VIVIDLY_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "VIVIDLY_DATABASE_URL": self.database_url,
                "VIVIDLY_GEMINI_BASE_URL": self.gemini_url,
                "VIVIDLY_VIDEO_API_URL": self.video_url,
                "VIVIDLY_S3_ENDPOINT_URL": self.s3_url,
                "VIVIDLY_SMTP_HOST": "127.0.0.1",
                "VIVIDLY_SMTP_PORT": str(self.ports.smtp),
                "VIVIDLY_API_PORT": str(self.ports.api),
                "VIVIDLY_HOME": str(self.home),
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _python(
        self,
        name: str,
        args: list[str],
        port: int | None,
        env: dict[str, str] | None = None,
        url: str = "",
    ) -> Managed:
        self._specs[name] = (args, port, env, url)
        log = self.home / "logs" / f"{name}.log"
        proc = _spawn([sys.executable, *args], log, cwd=ROOT, env={**self.env(), **(env or {})})
        if port is not None:
            wait_for_port(port, proc, name, log, 60)
        url = url or (f"127.0.0.1:{port}" if port else "")
        managed = Managed(name, proc, url, log)
        self.procs[name] = managed
        return managed

    def restart(self, name: str, wait: bool = False) -> Managed:
        """Start ``name`` again exactly as it was started (same arguments, ports and
        environment), after it exited; the supervisor's and the fault suite's restart."""
        if name not in self._specs:
            raise ValueError(f"{name!r} was never started")
        old = self.procs.pop(name, None)
        if old is not None and old.proc.poll() is None:
            old.stop()
        args, port, env, url = self._specs[name]
        return self._python(name, args, port if wait else None, env, url)

    def start_emulators(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._python(
            "gemini-emulator",
            ["-m", "emulators.gemini", "--port", str(self.ports.gemini)],
            self.ports.gemini,
        )
        self._python(
            "video-emulator",
            [
                "-m",
                "emulators.video",
                "--port",
                str(self.ports.video),
                "--work-dir",
                str(self.home / "video-emulator"),
                "--job-seconds",
                str(self.video_job_seconds),
            ],
            self.ports.video,
        )
        self._python(
            "s3-moto",
            ["-m", "emulators.s3", "--port", str(self.ports.s3)],
            self.ports.s3,
        )
        self._python(
            "smtp-sink",
            [
                "-m",
                "emulators.smtp_sink",
                "--port",
                str(self.ports.smtp),
                "--dir",
                str(self.mail_dir),
            ],
            self.ports.smtp,
        )

    def start_service(self, name: str, wait: bool = True, timeout: float = 90.0) -> Managed:
        if name not in _MODULES:
            raise ValueError(f"unknown service {name!r}")
        if name == "api":
            return self._python(name, ["-m", _MODULES[name]], self.ports.api if wait else None)
        log = self.home / "logs" / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        # Each service serves /metrics on a port of its own.
        port = self.metrics_ports.setdefault(name, free_port())
        managed = self._python(
            name,
            ["-m", _MODULES[name]],
            None,
            env={"VIVIDLY_METRICS_PORT": str(port)},
            url=f"http://127.0.0.1:{port}/metrics",
        )
        if wait:
            wait_for_log(log, offset, "partitions assigned", managed, timeout)
        return managed

    def metrics_url(self, name: str) -> str:
        """Where a running service serves Prometheus metrics."""
        if name == "api":
            return f"{self.api_url}/metrics"
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    def start_services(self, names: tuple[str, ...] = SERVICES) -> None:
        for name in names:
            self.start_service(name, wait=False)
        for name in names:
            m = self.procs[name]
            wait_for_log(m.log, 0, "partitions assigned", m, 120.0)

    def stop_service(self, name: str, sig: int = signal.SIGTERM) -> None:
        m = self.procs.pop(name, None)
        if m is None:
            return
        if sig == signal.SIGKILL:
            m.proc.kill()
            m.proc.wait(10)
        else:
            stop_pid(m.pid, 60.0, sig)
            m.proc.wait(5)

    def stop(self) -> None:
        for name in [*READ_SIDE, *SERVICES, *list(self.procs)]:
            if name in self.procs:
                self.stop_service(name)

    def set_knobs(self, which: str, **knobs: Any) -> dict[str, Any]:
        """Change an HTTP emulator's fault knobs ("gemini" or "video")."""
        import urllib.request

        url = {"gemini": self.gemini_url, "video": self.video_url}[which]
        req = urllib.request.Request(
            f"{url}/_emulator/config",
            method="POST",
            data=json.dumps(knobs).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def received(self, which: str, path: str = "") -> list[dict[str, Any]]:
        """The requests an HTTP emulator recorded (method, path, status, headers)."""
        import urllib.request

        url = {"gemini": self.gemini_url, "video": self.video_url}[which]
        with urllib.request.urlopen(f"{url}/_emulator/requests?path={path}", timeout=10) as r:
            items: list[dict[str, Any]] = json.loads(r.read())["requests"]
            return items

    def emails(self) -> list[Path]:
        return sorted(self.mail_dir.glob("*.eml")) if self.mail_dir.exists() else []


def wait_for_log(log: Path, offset: int, needle: str, managed: Managed, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed.proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{managed.name} exited with {managed.proc.returncode}:\n{tail}")
        if log.exists():
            with log.open("rb") as f:
                f.seek(offset)
                if needle.encode() in f.read():
                    return
        time.sleep(0.1)
    raise StackError(f"{managed.name} did not log {needle!r} within {timeout:.0f}s; see {log}")


async def load_corpus(database_url: str, gemini_url: str, progress: Any = None) -> int:
    """Embed the OER corpus through the Gemini API at ``gemini_url`` and upsert it."""
    from services.rag.providers import GeminiEmbedder, load_into_postgres
    from services.rag.providers import load_corpus as read_passages
    from vividly.config import Settings
    from vividly.runtime.ledger import create_pool

    settings = Settings(gemini_base_url=gemini_url, database_url=database_url)
    pool = await create_pool(database_url)
    try:
        return await load_into_postgres(
            pool, GeminiEmbedder(settings), read_passages(), progress=progress
        )
    finally:
        await pool.close()


def load_corpus_sync(database_url: str, gemini_url: str) -> int:
    return asyncio.run(load_corpus(database_url, gemini_url))
