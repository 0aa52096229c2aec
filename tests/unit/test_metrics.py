"""Metric helpers: consumer lag from librdkafka statistics, the oldest-item gauge."""

from __future__ import annotations

import orjson
from prometheus_client import REGISTRY

from vividly import metrics


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_consumer_lag_comes_from_librdkafka_statistics() -> None:
    stats = {
        "topics": {
            "requests.scripted": {
                "partitions": {
                    "0": {"fetch_state": "active", "consumer_lag": 42},
                    "1": {"fetch_state": "active", "consumer_lag": -1},  # unknown yet
                    "-1": {"fetch_state": "none", "consumer_lag": -1},  # internal
                }
            }
        }
    }
    metrics.record_kafka_stats(orjson.dumps(stats).decode())
    assert value("vividly_consumer_lag_messages", topic="requests.scripted", partition="0") == 42
    assert value("vividly_consumer_lag_messages", topic="requests.scripted", partition="1") is None
    metrics.record_kafka_stats("not json")  # ignored, not raised


def test_oldest_in_flight_is_the_age_of_the_oldest_unfinished_item() -> None:
    now = [100.0]
    watch = metrics.OldestInFlight("unit_stage", 30.0, clock=lambda: now[0])
    assert value("vividly_stage_expected_seconds", stage="unit_stage") == 30.0
    assert value("vividly_stage_oldest_in_flight_seconds", stage="unit_stage") == 0.0
    first = watch.begin()
    now[0] = 110.0
    second = watch.begin()
    now[0] = 125.0
    assert value("vividly_stage_oldest_in_flight_seconds", stage="unit_stage") == 25.0
    watch.end(first)
    assert value("vividly_stage_oldest_in_flight_seconds", stage="unit_stage") == 15.0
    watch.end(second)
    assert value("vividly_stage_oldest_in_flight_seconds", stage="unit_stage") == 0.0
