"""The local trace backend: Jaeger v2, a child process like the broker and Postgres.

``make setup`` builds the binary once into ``.cache/jaeger/jaeger`` from the tools module
in ``deploy/jaeger`` (``go build`` of ``github.com/jaegertracing/jaeger/cmd/jaeger``, pinned
in its go.mod), and reuses it after. It runs with ``deploy/jaeger/config.yaml``: OTLP in
(HTTP and gRPC), traces kept in memory, the query API on its own port. Its web UI is only a
placeholder in such a build (the UI's assets are in no registry we reach); the dashboard
draws a request's trace itself from the API's ``…/requests/{id}/trace`` route, which reads
the query API.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vividly.platform.stack import ROOT, Managed, StackError, _spawn, free_port, port_in_use

JAEGER_BIN = Path(os.environ.get("VIVIDLY_JAEGER_BIN", ROOT / ".cache" / "jaeger" / "jaeger"))
JAEGER_CONFIG = ROOT / "deploy" / "jaeger" / "config.yaml"


@dataclass
class JaegerPorts:
    otlp_http: int
    otlp_grpc: int
    query: int
    query_grpc: int
    health: int

    @classmethod
    def free(cls) -> JaegerPorts:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


class Jaeger:
    def __init__(self, workdir: Path, ports: JaegerPorts, binary: Path = JAEGER_BIN) -> None:
        self.workdir = workdir
        self.ports = ports
        self.binary = binary
        self.managed: Managed | None = None

    @staticmethod
    def available(binary: Path = JAEGER_BIN) -> bool:
        return binary.is_file() and os.access(binary, os.X_OK)

    @property
    def otlp_endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to (OTLP over HTTP)."""
        return f"http://127.0.0.1:{self.ports.otlp_http}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.query}"

    def start(self, timeout: float = 60.0) -> Managed:
        if not self.available(self.binary):
            raise StackError(f"no Jaeger binary at {self.binary}; build it with `make jaeger`")
        for port in (
            self.ports.otlp_http,
            self.ports.otlp_grpc,
            self.ports.query,
            self.ports.query_grpc,
            self.ports.health,
        ):
            if port_in_use(port):
                raise StackError(f"port {port} for Jaeger is taken; set VIVIDLY_JAEGER_*_PORT")
        env = {
            **os.environ,
            "JAEGER_HOST": "127.0.0.1",
            "JAEGER_OTLP_HTTP_PORT": str(self.ports.otlp_http),
            "JAEGER_OTLP_GRPC_PORT": str(self.ports.otlp_grpc),
            "JAEGER_QUERY_PORT": str(self.ports.query),
            "JAEGER_QUERY_GRPC_PORT": str(self.ports.query_grpc),
            "JAEGER_HEALTH_PORT": str(self.ports.health),
        }
        log = self.workdir / "jaeger.log"
        proc = _spawn([str(self.binary), "--config", str(JAEGER_CONFIG)], log, env=env)
        self.managed = Managed("jaeger", proc, self.query_url, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-10:]
                raise StackError(f"jaeger exited ({proc.returncode}): " + "\n".join(tail))
            if self.healthy():
                return self.managed
            time.sleep(0.1)
        self.managed.stop()
        raise StackError(f"jaeger did not become healthy within {timeout:.0f}s; see {log}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.ports.health}/status", timeout=1
            ) as r:
                return bool(json.load(r).get("healthy")) and self._query_up()
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def _query_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.query_url}/api/services", timeout=1) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        if self.managed is not None:
            self.managed.stop(timeout)
