"""Tracker overhead and publish rate, against a bare ``Producer.produce()`` in the same run.

    .venv/bin/python -m bench.tracker [--calls 100000] [--rate-events 300000]
                                      [--bootstrap HOST:PORT]

Without --bootstrap it starts Apache Kafka on a free port and stops it at
the end. The last line printed is one JSON object with: tracker_p50_us, tracker_p99_us,
produce_p50_us, ratio_p50, publish_events_per_s, produce_events_per_s (and a few more).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from rich.console import Console
from rich.progress import Progress

from vividly.config import Settings
from vividly.platform.stack import ApacheKafkaBroker
from vividly.publish import KafkaPublisher, producer_config
from vividly.runtime.bus import ensure_topics
from vividly.tracker import RequestTracker

console = Console(stderr=True)


def percentile(sorted_ns: list[int], q: float) -> float:
    idx = min(len(sorted_ns) - 1, round(q * (len(sorted_ns) - 1)))
    return sorted_ns[idx] / 1000.0


def measure_tracker_latency(tracker: RequestTracker, rid: str, calls: int) -> list[int]:
    clock = time.perf_counter_ns
    log_event = tracker.log_event
    samples = [0] * calls
    data = {"chunks": 5, "model": "gemini-2.5-flash"}
    for i in range(calls):
        t0 = clock()
        log_event(rid, "api_call", "Calling Gemini API", "script_generation", "info", data)
        samples[i] = clock() - t0
    return samples


def measure_produce_latency(
    producer: Producer, topic: str, key: bytes, values: list[bytes], calls: int
) -> list[int]:
    clock = time.perf_counter_ns
    produce = producer.produce
    samples = [0] * calls
    for i in range(calls):
        value = values[i % len(values)]
        t0 = clock()
        produce(topic, value, key)
        samples[i] = clock() - t0
        if i % 1000 == 0:
            producer.poll(0)
    return samples


def tracker_rate(tracker: RequestTracker, rid: str, n: int) -> float:
    data = {"chunks": 5}
    t0 = time.perf_counter()
    for _ in range(n):
        tracker.log_event(rid, "api_call", "Calling Gemini API", "script_generation", "info", data)
    report = tracker.flush(120)
    elapsed = time.perf_counter() - t0
    if not report.ok:
        raise SystemExit(f"tracker rate run lost events: {report}")
    return n / elapsed


def produce_rate(producer: Producer, topic: str, key: bytes, values: list[bytes], n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        value = values[i % len(values)]
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.005)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - t0
    if left:
        raise SystemExit(f"bare produce run left {left} messages undelivered")
    return n / elapsed


def run(bootstrap: str, calls: int, rate_events: int) -> dict[str, Any]:
    settings = Settings(kafka_bootstrap=bootstrap)
    topic = f"bench.tracking.{int(time.time())}"
    ensure_topics(settings, {topic: 6})
    publisher = KafkaPublisher(settings, "bench-tracker")
    tracker = RequestTracker(publisher, producer="bench", topic=topic)
    rid, _ = tracker.create_request("stu", "Photosynthesis", "obj", "10", 5)
    # Bytes like the ones a tracker call produces (distinct, same size), built before the
    # clock starts, for the bare-produce baseline.
    values = []
    for _ in range(max(calls, rate_events)):
        env = tracker._envelope(rid)
        env.correlation_id = rid
        ev = env.event_logged
        ev.event_type, ev.message, ev.stage = "api_call", "Calling Gemini API", "script_generation"
        ev.severity = 2  # type: ignore[assignment]
        ev.event_data_json = b'{"chunks":5,"model":"gemini-2.5-flash"}'
        values.append(env.SerializeToString())
    value = values[0]
    key = rid.encode()
    bare = Producer(producer_config(settings, "bench-bare"))

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("warm-up", total=4)
        measure_tracker_latency(tracker, rid, 5000)
        measure_produce_latency(bare, topic, key, values, 5000)
        tracker.flush(60)
        bare.flush(60)
        progress.advance(task)

        gc.collect()
        progress.update(task, description=f"tracker latency ({calls:,} calls)")
        t_samples = sorted(measure_tracker_latency(tracker, rid, calls))
        tracker.flush(120)
        progress.advance(task)

        gc.collect()
        progress.update(task, description=f"bare produce latency ({calls:,} calls)")
        p_samples = sorted(measure_produce_latency(bare, topic, key, values, calls))
        bare.flush(120)
        progress.advance(task)

        progress.update(task, description=f"sustained rate ({rate_events:,} events each)")
        rate_tracker = tracker_rate(tracker, rid, rate_events)
        rate_bare = produce_rate(bare, topic, key, values, rate_events)
        progress.advance(task)

    publisher.close(30)
    result = {
        "tracker_p50_us": round(percentile(t_samples, 0.50), 3),
        "tracker_p99_us": round(percentile(t_samples, 0.99), 3),
        "tracker_mean_us": round(statistics.fmean(t_samples) / 1000.0, 3),
        "produce_p50_us": round(percentile(p_samples, 0.50), 3),
        "produce_p99_us": round(percentile(p_samples, 0.99), 3),
        "ratio_p50": round(percentile(t_samples, 0.50) / percentile(p_samples, 0.50), 2),
        "publish_events_per_s": round(rate_tracker),
        "produce_events_per_s": round(rate_bare),
        "rate_ratio": round(rate_tracker / rate_bare, 3),
        "event_bytes": len(value),
        "calls": calls,
        "rate_events": rate_events,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracker", description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rate-events", type=int, default=300_000)
    parser.add_argument("--bootstrap", help="use this broker instead of starting Apache Kafka")
    args = parser.parse_args(argv)
    broker: ApacheKafkaBroker | None = None
    if args.bootstrap is None:
        broker = ApacheKafkaBroker(Path(tempfile.mkdtemp(prefix="bench-kafka-")))
        broker.start()
        bootstrap = broker.bootstrap
    else:
        bootstrap = args.bootstrap
    try:
        result = run(bootstrap, args.calls, args.rate_events)
    finally:
        if broker is not None:
            broker.stop()
    console.print(
        f"tracker log_event p50 {result['tracker_p50_us']} µs, p99 {result['tracker_p99_us']} µs"
        f" (targets ≤ 10, ≤ 50); bare produce p50 {result['produce_p50_us']} µs;"
        f" ratio {result['ratio_p50']}x"
    )
    console.print(
        f"sustained: tracker {result['publish_events_per_s']:,} events/s, bare produce "
        f"{result['produce_events_per_s']:,}/s, ratio {result['rate_ratio']}"
        " (targets ≥ 50,000/s and ≥ 0.4)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
