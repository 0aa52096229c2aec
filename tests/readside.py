"""The read side as real processes (projector + monitoring API) over the session's broker
and Postgres, and helpers to put requests through it. Shared by the API and browser tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import BrokerPool, fresh_database
from vividly.config import Settings
from vividly.events import WorkItem
from vividly.platform.pipeline import Pipeline, PipelinePorts
from vividly.publish import KafkaPublisher
from vividly.runtime.auth import mint
from vividly.tracker import RequestTracker

SECRET = "test-secret-" + uuid.uuid4().hex
T = TypeVar("T")


@dataclass
class ReadSide:
    pipeline: Pipeline
    settings: Settings
    tracker: RequestTracker
    publisher: KafkaPublisher

    @property
    def url(self) -> str:
        return self.pipeline.api_url

    def token(self, role: str = "admin", sub: str = "admin-1", org: str | None = None) -> str:
        return mint(SECRET, role=role, sub=sub, org=org, ttl_s=600)

    def client(
        self, role: str = "admin", sub: str = "admin-1", org: str | None = None
    ) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token(role, sub, org)}"},
            timeout=15,
        )

    def flush(self) -> None:
        assert self.tracker.flush(15).ok


def wait_for(fn: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextmanager
def read_side(
    broker_pool: BrokerPool, postgres: str, home: Path, env: dict[str, str] | None = None
) -> Iterator[ReadSide]:
    """A projector and an API over a fresh database, with these settings."""
    broker = broker_pool.get("apache")
    pipeline = Pipeline(
        broker.bootstrap,
        fresh_database(postgres, "readside"),
        home,
        PipelinePorts.free(),
        extra_env={
            "VIVIDLY_JWT_SECRET": SECRET,
            "VIVIDLY_SSE_HEARTBEAT_S": "1",
            "VIVIDLY_TOPIC_PARTITIONS": "3",
            "VIVIDLY_MAX_MANUAL_RETRIES": "2",
            # Its own group: two read sides alive at once each fold the whole log.
            "VIVIDLY_PROJECTOR_GROUP": f"projector-{uuid.uuid4().hex[:8]}",
            **(env or {}),
        },
    )
    settings = broker.settings()
    publisher = KafkaPublisher(settings, "api-test")
    try:
        pipeline.start_service("projector")
        pipeline.start_service("api")
        yield ReadSide(
            pipeline, settings, RequestTracker(publisher, producer="api-test"), publisher
        )
    finally:
        publisher.close(10)
        pipeline.stop()


@pytest.fixture(scope="module")
def side(
    broker_pool: BrokerPool, postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReadSide]:
    with read_side(broker_pool, postgres, tmp_path_factory.mktemp("readside")) as rs:
        yield rs


def make_request(
    t: RequestTracker,
    org: str,
    student: str,
    topic: str = "Photosynthesis in plants",
    outcome: str = "completed",
) -> str:
    """A request with real stage events; outcome completed, failed (at script_generation,
    its input kept), waiting (circuit open at video_generation) or running."""
    rid, _ = t.create_request(
        student, topic, "explain light reactions", "10", 5, organization_id=org
    )
    t.start_request(rid)
    for stage in ("validation", "rag_retrieval"):
        with t.track_stage(rid, stage) as span:
            span.output["ok"] = True
    if outcome == "running":
        t.start_stage(rid, "script_generation")
        return rid
    if outcome == "failed":
        t.start_stage(rid, "script_generation")
        item = WorkItem(
            request_id=rid, correlation_id="c-" + rid, stage="script_generation", attempt=1
        )
        item.request.topic = topic
        t.fail_stage(
            rid,
            "script_generation",
            "gemini 503",
            {"status": 503},
            is_retryable=True,
            work_item=item,
        )
        t.fail_request(rid, "gemini 503", "script_generation", {"reason": "retries_exhausted"})
        return rid
    with t.track_stage(rid, "script_generation") as span:
        span.output["word_count"] = 700
    if outcome == "waiting":
        t.mark_waiting(
            rid, "video_generation", "circuit_open", "nano_banana breaker is open", time.time() + 30
        )
        return rid
    for stage in ("video_generation", "video_processing", "notification"):
        with t.track_stage(rid, stage):
            pass
    t.complete_request(rid, "https://cdn/v.mp4", "script", "https://cdn/t.jpg")
    return rid


def visible(side: ReadSide, rid: str, status: str | None = None) -> dict[str, Any] | None:
    with side.client() as c:
        r = c.get(f"/api/v1/monitoring/requests/{rid}")
    if r.status_code != 200:
        return None
    body: dict[str, Any] = r.json()
    if status is not None and body["status"] != status:
        return None
    return body
