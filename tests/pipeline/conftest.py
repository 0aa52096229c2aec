"""A whole pipeline for the end-to-end tests: real broker (Apache Kafka),
real Postgres, the emulators, moto's S3, the SMTP
sink and the five services as processes. One per test module; knobs reset per test."""

from __future__ import annotations

import asyncio
import contextlib
import email
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from google.protobuf.message import DecodeError

from tests.conftest import BrokerPool, fresh_database
from vividly.config import DLQ_TOPIC, STAGE_TOPICS, TRACKING_TOPIC, Settings
from vividly.events import Envelope, decode_envelope, event_type_name
from vividly.platform.pipeline import Pipeline, PipelinePorts, load_corpus_sync
from vividly.publish import KafkaPublisher
from vividly.runtime.bus import ensure_topics
from vividly.runtime.db import migrate
from vividly.submit import submit_request
from vividly.tracker import RequestTracker

PIPELINE_BROKER = "apache"
API_SECRET = "pipeline-" + uuid.uuid4().hex

FAST_ENV = {
    "VIVIDLY_BREAKER_FAIL_MAX": "3",
    "VIVIDLY_BREAKER_RESET_TIMEOUT_S": "2",
    "VIVIDLY_RETRY_BACKOFF_S": "0.2",
    "VIVIDLY_RETRY_BACKOFF_MAX_S": "1",
    "VIVIDLY_VIDEO_POLL_INTERVAL_S": "0.2",
    "VIVIDLY_HTTP_TIMEOUT_S": "5",
    "VIVIDLY_COMMIT_INTERVAL_S": "0.2",
    "VIVIDLY_TOPIC_PARTITIONS": "3",
    "VIVIDLY_LOG_LEVEL": "INFO",
    "VIVIDLY_KAFKA_STATS_INTERVAL_MS": "500",
}


class EventLog:
    """Every tracking event since the pipeline started, by request, read on a thread."""

    def __init__(self, bootstrap: str) -> None:
        self.by_request: dict[str, list[Envelope]] = defaultdict(list)
        self.breakers: list[Envelope] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"eventlog-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
            }
        )
        self._consumer.subscribe([TRACKING_TOPIC])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, 0.2):
                if msg.error() is not None:
                    continue
                try:
                    env = decode_envelope(msg.value() or b"")
                except DecodeError:  # poison another test put in the shared log
                    continue
                with self.lock:
                    if env.request_id:
                        self.by_request[env.request_id].append(env)
                    else:
                        self.breakers.append(env)
        self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def events(self, request_id: str) -> list[Envelope]:
        with self.lock:
            return list(self.by_request.get(request_id, []))

    def kinds(self, request_id: str) -> list[str]:
        return [event_type_name(e) or "?" for e in self.events(request_id)]

    def outcome(self, request_id: str) -> str | None:
        for kind in reversed(self.kinds(request_id)):
            if kind in ("request_completed", "request_failed"):
                return kind
        return None

    def wait_outcomes(self, request_ids: list[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = {r: self.outcome(r) for r in request_ids}
            if all(got.values()):
                return {r: o for r, o in got.items() if o}
            time.sleep(0.2)
        missing = [r for r in request_ids if not self.outcome(r)]
        raise AssertionError(
            f"{len(missing)} of {len(request_ids)} requests unfinished "
            f"after {timeout:.0f}s; e.g. {missing[0]}: {self.kinds(missing[0])}"
        )

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


class Harness:
    def __init__(self, pipeline: Pipeline, settings: Settings, log: EventLog) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.log = log
        self.publisher = KafkaPublisher(settings, "test-submitter")
        self.tracker = RequestTracker(self.publisher, producer="tests")

    def submit(self, **overrides: Any) -> str:
        fields: dict[str, Any] = {
            "student_id": f"stu-{uuid.uuid4().hex[:6]}",
            "topic": "Photosynthesis",
            "learning_objective": "Explain how plants turn light into food",
            "grade_level": "8",
            "duration_minutes": 1,
            "organization_id": "org-1",
        }
        fields.update(overrides)
        rid, _ = submit_request(self.tracker, self.publisher, **fields)
        return rid

    def flush(self) -> None:
        assert self.publisher.flush(30).ok

    def emails_for(self, request_id: str) -> list[email.message.Message]:
        out = []
        for path in self.pipeline.emails():
            msg = email.message_from_bytes(path.read_bytes())
            if msg["X-Vividly-Request-ID"] == request_id:
                out.append(msg)
        return out


@contextlib.contextmanager
def running_harness(
    broker_pool: BrokerPool,
    postgres: str,
    home: Path,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Harness]:
    """The whole pipeline (five services, projector, API) on a database of its own."""
    broker = broker_pool.get(PIPELINE_BROKER)
    # A database of this module's own, so ledgers and corpus start empty.
    url = fresh_database(postgres, "pipe")
    asyncio.run(migrate(url))
    settings = Settings(kafka_bootstrap=broker.bootstrap, topic_partitions=3)
    ensure_topics(settings, {t: 3 for t in (*STAGE_TOPICS, TRACKING_TOPIC, DLQ_TOPIC)})
    pipeline = Pipeline(
        broker.bootstrap,
        url,
        home,
        PipelinePorts.free(),
        video_job_seconds=0.5,
        extra_env={**FAST_ENV, "VIVIDLY_JWT_SECRET": API_SECRET, **(extra_env or {})},
    )
    log = EventLog(broker.bootstrap)
    try:
        pipeline.start_emulators()
        load_corpus_sync(url, pipeline.gemini_url)
        pipeline.start_services()
        pipeline.start_service("projector")
        pipeline.start_service("api")
        h = Harness(pipeline, settings, log)
        yield h
        h.publisher.close(5)
    finally:
        log.stop()
        pipeline.stop()


@pytest.fixture(scope="module")
def harness(
    broker_pool: BrokerPool, postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    with running_harness(broker_pool, postgres, tmp_path_factory.mktemp("pipeline")) as h:
        yield h


@pytest.fixture(autouse=True)
def reset_knobs(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "harness" in request.fixturenames:
        h: Harness = request.getfixturevalue("harness")
        for which in ("gemini", "video"):
            h.pipeline.set_knobs(
                which, error_rate=0, outage_until=0, latency_s=0, job_fail_rate=0, job_seconds=0.5
            )


def dlq_messages(
    settings: Settings, request_ids: set[str], timeout: float = 30
) -> dict[str, dict[str, bytes]]:
    from tests.integration.kafka_util import headers_of, key_of, read_topic

    msgs = read_topic(
        settings, DLQ_TOPIC, lambda got: {key_of(m) for m in got} >= request_ids, timeout
    )
    return {key_of(m): headers_of(m) for m in msgs if key_of(m) in request_ids}


__all__ = ["Harness", "Path", "dlq_messages", "running_harness"]
