"""Stored offsets belong to one log: which cluster, which topic (Kafka's topic id), and
positions that exist in it.

A read model keeps, with its offsets, the identity of the log it folded
(``projector_log``). Before a projector folds anything it compares them with the log it
is about to read (:func:`check`, no I/O): another cluster, a recreated topic, an offset
past the log's end (a broker that lost an unsynced tail, or simply another log), or a
log that now starts after an offset (events deleted before they were folded) is a
mismatch, reported with every reason; the projector then refuses or rebuilds, never
skips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LogMismatch(RuntimeError):
    """The read model's stored offsets do not belong to the log being read."""


@dataclass(frozen=True, slots=True)
class LogIdentity:
    cluster_id: str
    topic_id: str


def check(
    topic: str,
    stored: LogIdentity | None,
    actual: LogIdentity,
    offsets: dict[int, int],
    watermarks: dict[int, tuple[int, int]],
) -> list[str]:
    """Why ``offsets`` (partition → next offset to fold) cannot be resumed on the log
    described by ``actual`` and ``watermarks`` (partition → (low, high)); [] when they can."""
    reasons: list[str] = []
    if stored is not None and stored.cluster_id != actual.cluster_id:
        reasons.append(
            f"the read model was folded from Kafka cluster {stored.cluster_id}; "
            f"this broker is cluster {actual.cluster_id}"
        )
    elif stored is not None and stored.topic_id != actual.topic_id:
        reasons.append(
            f"{topic} was recreated: the read model was folded from topic id "
            f"{stored.topic_id}, the log now has topic id {actual.topic_id}"
        )
    for part, nxt in sorted(offsets.items()):
        if part not in watermarks:
            reasons.append(f"{topic}[{part}] has a stored offset {nxt} but no such partition")
            continue
        low, high = watermarks[part]
        if nxt > high:
            reasons.append(
                f"{topic}[{part}]: the stored offset {nxt} is past the log's end {high} "
                "(the log lost events the read model holds, or it is another log)"
            )
        elif nxt < low:
            reasons.append(
                f"{topic}[{part}]: the log starts at {low}, after the stored offset {nxt}: "
                f"events {nxt}..{low - 1} were deleted before they were folded"
            )
    return reasons


def read_log(
    admin: Any, consumer: Any, topic: str, timeout: float = 10.0
) -> tuple[LogIdentity, dict[int, tuple[int, int]]]:
    """The identity and every partition's (low, high) watermarks of ``topic`` (blocking)."""
    from confluent_kafka import TopicCollection, TopicPartition

    cluster = admin.describe_cluster(request_timeout=timeout).result(timeout)
    described = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
    desc = described[topic].result(timeout)
    identity = LogIdentity(str(cluster.cluster_id), str(desc.topic_id))
    marks = {}
    for p in sorted(pi.id for pi in desc.partitions):
        marks[p] = _watermarks(consumer, TopicPartition(topic, p), timeout)
    return identity, marks


def _watermarks(consumer: Any, tp: Any, timeout: float) -> tuple[int, int]:
    """A partition's watermarks, asked again while the broker says it is moving (a topic
    just created: "not leader", "leader not available"), for at most ``timeout``."""
    import time

    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout, False)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = bool(err is not None and getattr(err, "retriable", lambda: False)())
            moving = "leader" in str(exc).lower()
            if not (retriable or moving) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
