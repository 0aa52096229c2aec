"""A trace backend that accepts connections and never answers (the worst kind: each export
waits for the exporter's whole timeout) neither fails nor slows a request, and the API's
trace route answers 503 in about its own timeout instead of hanging.

A module of its own: its pipeline shares the broker, topics and consumer groups with the
other pipeline modules', so it must not run while theirs do (module fixtures end with
their module)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.conftest import BrokerPool
from tests.pipeline.conftest import API_SECRET, running_harness
from vividly.runtime.auth import mint

pytestmark = pytest.mark.integration


class BlackHole:
    """A trace backend that accepts connections and never answers: the worst kind, since
    each export waits for the exporter's whole timeout before giving up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)  # read nothing, answer nothing

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def test_a_trace_backend_that_never_answers_neither_fails_nor_slows_a_request(
    broker_pool: BrokerPool, postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    hole = BlackHole()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{hole.port}",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BSP_MAX_QUEUE_SIZE": "64",  # full at once: spans dropped, never waited on
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "32",
        # The API reads traces from it too: a backend that never answers is a 503 in
        # about the route's timeout, not a hung dashboard.
        "VIVIDLY_JAEGER_QUERY_URL": f"http://127.0.0.1:{hole.port}",
        "VIVIDLY_API_TRACE_TIMEOUT_S": "1",
    }
    try:
        with running_harness(broker_pool, postgres, tmp_path_factory.mktemp("hole"), env) as h:
            rids = [h.submit(topic=f"Volcanoes {i}") for i in range(6)]
            h.flush()
            outcomes = h.log.wait_outcomes(rids, 120)
            assert set(outcomes.values()) == {"request_completed"}
            for rid in rids:
                events = h.log.events(rid)
                took = (
                    events[-1].occurred_at.ToNanoseconds() - events[0].occurred_at.ToNanoseconds()
                ) / 1e9
                # One export held on the request's path would cost the exporter's timeout
                # (10 s) at every span; the whole request takes a few seconds.
                assert took < 10, (rid, took)
                assert len(h.emails_for(rid)) == 1
            # The services did try to export (so the requests above ran with tracing on).
            assert hole.accepted > 0
            token = mint(API_SECRET, role="admin", sub="sre-1")
            t0 = time.monotonic()
            r = httpx.get(
                f"{h.pipeline.api_url}/api/v1/monitoring/requests/{rids[0]}/trace",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert r.status_code == 503, r.text
            assert r.json()["detail"]["code"] == "trace_backend_unavailable"
            assert time.monotonic() - t0 < 10
    finally:
        hole.close()
