"""Small helpers for reading topics back in integration tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Message, TopicPartition

from vividly.config import Settings
from vividly.runtime.bus import ensure_topics


def read_topic(
    settings: Settings,
    topic: str,
    until: Callable[[list[Message]], bool],
    timeout: float = 60.0,
) -> list[Message]:
    """Read ``topic`` from the beginning until ``until(messages)`` or ``timeout``."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(got):
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    got.append(msg)
    finally:
        consumer.close()
    return got


def committed(settings: Settings, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when none)."""
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
        }
    )
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def make_topics(settings: Settings, *names: str, partitions: int = 3) -> None:
    ensure_topics(settings, dict.fromkeys(names, partitions))


def key_of(msg: Message) -> str:
    key = msg.key()
    return key.decode() if isinstance(key, bytes) else str(key or "")


def headers_of(msg: Message) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    for k, v in pairs:
        out[k] = v if isinstance(v, bytes) else str(v or "").encode()
    return out
