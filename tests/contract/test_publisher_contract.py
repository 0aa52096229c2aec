"""One set of assertions for every Publisher: the in-memory fake and the real Kafka one.

If the fake drifts from what KafkaPublisher does, these fail for one of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BROKERS, BrokerPool
from tests.integration.kafka_util import make_topics, read_topic
from vividly.config import Settings
from vividly.platform.stack import free_port
from vividly.publish import KafkaPublisher, Publisher
from vividly.testing import FakePublisher


@pytest.fixture(params=["fake", *BROKERS])
def publisher_and_reader(
    request: pytest.FixtureRequest, unique: str, broker_pool: BrokerPool
) -> Iterator[tuple[Publisher, Any, str]]:
    topic = f"contract-{unique}"
    if request.param == "fake":
        fake = FakePublisher()

        def read_fake(n: int) -> list[tuple[bytes, bytes]]:
            return [(m.key, m.value) for m in fake.messages if m.topic == topic]

        yield fake, read_fake, topic
        return
    settings = broker_pool.get(request.param).settings()
    make_topics(settings, topic)
    pub = KafkaPublisher(settings, "contract")

    def read_kafka(n: int) -> list[tuple[bytes, bytes]]:
        msgs = read_topic(settings, topic, lambda got: len(got) >= n, timeout=30)
        return [(m.key() or b"", m.value() or b"") for m in msgs]

    try:
        yield pub, read_kafka, topic
    finally:
        pub.close(5)


def test_published_messages_arrive_and_are_acknowledged(
    publisher_and_reader: tuple[Publisher, Any, str],
) -> None:
    pub, read, topic = publisher_and_reader
    acks: list[object] = []
    done = threading.Event()

    def on_delivery(err: object, _msg: object) -> None:
        acks.append(err)
        if len(acks) == 50:
            done.set()

    seqs = [
        pub.publish(
            topic, f"k{i % 5}".encode(), f"v{i}".encode(), [("h", b"1")], on_delivery=on_delivery
        )
        for i in range(50)
    ]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 50
    report = pub.flush(30)
    assert done.wait(10)
    assert acks == [None] * 50
    assert report.ok
    assert report.pending == 0
    assert report.delivered >= 50
    assert pub.delivered_through() == pub.last_seq() == seqs[-1]
    got = read(50)
    assert sorted(v for _, v in got) == sorted(f"v{i}".encode() for i in range(50))
    # Per key, order is kept.
    for k in range(5):
        values = [v for key, v in got if key == f"k{k}".encode()]
        assert values == [f"v{i}".encode() for i in range(k, 50, 5)]


def test_failed_deliveries_are_reported_not_silent(caplog: pytest.LogCaptureFixture) -> None:
    """Real: a broker that is not there. Fake: a topic configured to fail."""
    dead = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", delivery_timeout_ms=1000)
    real = KafkaPublisher(dead, "contract-dead")
    fake = FakePublisher(fail_topics=frozenset({"t"}))
    for pub in (real, fake):
        errors: list[object] = []

        def record(err: object, _msg: object, errors: list[object] = errors) -> None:
            errors.append(err)

        caplog.clear()
        with caplog.at_level(logging.ERROR):
            for i in range(3):
                pub.publish(
                    "t",
                    b"k",
                    f"v{i}".encode(),
                    [],
                    on_delivery=record,
                )
            report = pub.flush(10)
        assert report.failed == 3, type(pub).__name__
        assert not report.ok
        assert len(errors) == 3
        assert all(e is not None for e in errors)
        # A failed delivery is never "settled": nothing at or after it counts as
        # acknowledged, and a wait over it ends with ok=False.
        assert pub.delivered_through() == 0
        outcome: list[bool] = []
        pub.when_delivered(pub.last_seq(), outcome.append)
        assert outcome == [False]
        assert "delivery failed" in caplog.text
        assert len(report.failures) == 3
    real.close(1)


def test_a_failure_stops_the_acknowledged_mark_even_after_later_successes(
    broker_pool: BrokerPool, unique: str
) -> None:
    """Real and fake: good, failed, good. Only the first counts as acknowledged."""
    settings = broker_pool.get(BROKERS[0]).settings()
    good = f"contract-ok-{unique}"
    make_topics(settings, good)
    missing = f"contract-missing-{unique}"  # never created: auto-create is off
    real = KafkaPublisher(settings.model_copy(update={"delivery_timeout_ms": 2000}), "c-mixed")
    fake = FakePublisher(fail_topics=frozenset({missing}))
    for pub in (real, fake):
        first = pub.publish(good, b"k", b"1", [])
        pub.flush(10)
        bad = pub.publish(missing, b"k", b"2", [])
        pub.flush(10)
        later = pub.publish(good, b"k", b"3", [])
        pub.flush(10)
        assert pub.delivered_through() == first == bad - 1, type(pub).__name__
        results: list[bool] = []
        pub.when_delivered(first, results.append)
        pub.when_delivered(later, results.append)
        assert results == [True, False], type(pub).__name__
    real.close(1)


def test_when_delivered_fires_once_everything_up_to_seq_is_settled(
    publisher_and_reader: tuple[Publisher, Any, str],
) -> None:
    pub, _read, topic = publisher_and_reader
    got: list[str] = []
    pub.when_delivered(pub.last_seq(), lambda ok: got.append(f"none:{ok}"))  # at once
    assert got == ["none:True"]
    seqs = [pub.publish(topic, b"k", f"w{i}".encode(), []) for i in range(20)]
    fired = threading.Event()

    def all_done(ok: bool) -> None:
        got.append(f"all:{ok}")
        fired.set()

    pub.when_delivered(seqs[-1], all_done)
    assert fired.wait(30)
    assert pub.delivered_through() >= seqs[-1]
    pub.when_delivered(seqs[0], lambda ok: got.append(f"late:{ok}"))  # settled: at once
    assert got == ["none:True", "all:True", "late:True"]
