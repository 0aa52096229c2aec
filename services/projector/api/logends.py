"""Where the log ends, for telling a position the log never gave from one the read model
has not reached yet: one Kafka consumer per API process, used only for watermarks."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from vividly.config import Settings
from vividly.runtime.bus import consumer_config

log = logging.getLogger("vividly.api")


class LogEnds:
    def __init__(self, settings: Settings, topic: str, timeout_s: float = 2.0) -> None:
        conf = consumer_config(settings, "vividly-api-log-ends", "api-log-ends")
        conf.pop("stats_cb", None)
        conf.pop("statistics.interval.ms", None)
        self._consumer: Any = Consumer(conf)
        self._lock = threading.Lock()  # one librdkafka call at a time
        self.topic = topic
        self.timeout_s = timeout_s

    def _end(self, partition: int) -> int | None:
        with self._lock:
            meta = self._consumer.list_topics(self.topic, timeout=self.timeout_s)
            topic = meta.topics.get(self.topic)
            if topic is None or topic.error is not None:
                return None
            if partition not in topic.partitions:
                return -1
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), self.timeout_s, False
            )
            return int(high)

    async def end(self, partition: int) -> int | None:
        """The partition's next offset to be written; -1 when there is no such partition;
        None when the broker could not say (then nothing is ruled out)."""
        try:
            return await asyncio.to_thread(self._end, partition)
        except KafkaException as exc:
            log.warning("cannot read the log's end", extra={"error": str(exc)})
            return None

    def close(self) -> None:
        with self._lock:
            self._consumer.close()
