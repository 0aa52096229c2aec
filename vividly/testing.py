"""Small in-memory stand-ins implementing the SDK's interfaces, for unit tests.

The shared contract test (tests/contract) runs the same assertions against these and
against the real Kafka implementations, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from vividly.events import Envelope, decode_envelope
from vividly.publish import (
    CompletionWindow,
    DeliveryCallback,
    FailedDelivery,
    FlushReport,
    Headers,
    log,
)


@dataclass(frozen=True, slots=True)
class Published:
    topic: str
    key: bytes
    value: bytes
    headers: Headers

    def envelope(self) -> Envelope:
        return decode_envelope(self.value)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode()
        return None


class FakePublisher:
    """Records every message; delivery succeeds at once unless ``fail_topics`` says not."""

    def __init__(self, fail_topics: frozenset[str] = frozenset()) -> None:
        self.messages: list[Published] = []
        self.fail_topics = fail_topics
        self._window = CompletionWindow(first=1)
        self._seq = 0
        self._first_failed: int | None = None
        self.failed = 0
        self.failures: list[FailedDelivery] = []
        self._offsets: dict[str, int] = {}

    def publish(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Headers,
        on_delivery: DeliveryCallback | None = None,
    ) -> int:
        self._seq += 1
        self._window.add(self._seq)
        self._window.finish(self._seq)
        if topic in self.fail_topics:
            if self._first_failed is None:
                self._first_failed = self._seq
            self.failed += 1
            self.failures.append(FailedDelivery(topic, key, "configured to fail"))
            log.error("delivery failed", extra={"topic": topic, "error": "configured to fail"})
            if on_delivery is not None:
                error = cast(Any, _FakeError(f"delivery to {topic} failed"))
                on_delivery(error, FakeMessage(topic, 0, -1, key))
            return self._seq
        self.messages.append(Published(topic, key, value, list(headers)))
        offset = self._offsets.get(topic, 0)
        self._offsets[topic] = offset + 1
        if on_delivery is not None:
            on_delivery(None, FakeMessage(topic, 0, offset, key))
        return self._seq

    def delivered_through(self) -> int:
        through = self._window.done_through()
        return through if self._first_failed is None else min(through, self._first_failed - 1)

    def last_seq(self) -> int:
        return self._seq

    def when_delivered(self, seq: int, callback: Callable[[bool], None]) -> None:
        callback(self._first_failed is None or self._first_failed > seq)

    def flush(self, timeout: float = 30.0) -> FlushReport:
        return FlushReport(
            published=self._seq,
            delivered=len(self.messages),
            failed=self.failed,
            pending=0,
            failures=list(self.failures),
        )

    def envelopes(self, topic: str | None = None) -> list[Envelope]:
        return [m.envelope() for m in self.messages if topic is None or m.topic == topic]


@dataclass(frozen=True, slots=True)
class FakeMessage:
    """What a delivery report hands its callback (confluent-kafka's ``Message`` methods):
    one partition per topic, offsets counted from 0."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key


class _FakeError(Exception):
    def __str__(self) -> str:
        return str(self.args[0])
