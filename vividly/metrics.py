"""Every Prometheus metric Vividly exports, defined once (prometheus-client, default
registry), and the ``/metrics`` server each process starts.

Names and units follow Prometheus conventions (``_seconds``, ``_total``, base units);
labels are bounded sets (stage, outcome, status, topic, partition, breaker, reason,
route), never a request id. The Grafana dashboard and the alert rules under ``deploy/``
use only these names (a test checks it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from prometheus_client import Counter, Gauge, Histogram, start_http_server

#: 0 closed, 1 half-open, 2 open.
BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}

# -- stages ---------------------------------------------------------------------------
stage_duration = Histogram(
    "vividly_stage_duration_seconds",
    "Time one stage attempt took, by stage and outcome (completed, failed).",
    ["stage", "outcome"],
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
retries_scheduled = Counter(
    "vividly_retries_scheduled_total", "Stage retries scheduled after a failure.", ["stage"]
)
dlq_messages = Counter(
    "vividly_dlq_messages_total",
    "Messages sent to requests.dlq, by stage (none for undecodable input) and reason.",
    ["stage", "reason"],
)
stage_oldest_in_flight = Gauge(
    "vividly_stage_oldest_in_flight_seconds",
    "Age of the oldest item a stage is working on now (0 when idle).",
    ["stage"],
)
stage_expected = Gauge(
    "vividly_stage_expected_seconds",
    "How long one item may reasonably take in a stage (the stuck-request alert's bound).",
    ["stage"],
)
requests_stalled = Gauge(
    "vividly_requests_stalled",
    "Unfinished requests with no event for longer than their current stage's expected "
    "time, by stage (refreshed by the monitoring API).",
    ["stage"],
)
stages_skipped = Counter(
    "vividly_stages_skipped_total",
    "Stage attempts not done because their request was cancelled.",
    ["stage"],
)
requests_finished = Counter(
    "vividly_requests_finished_total", "Requests that reached a terminal status.", ["status"]
)

# -- the consumer loop and the producer ------------------------------------------------
items_in_flight = Gauge(
    "vividly_items_in_flight", "Messages being handled at once by a service.", ["service"]
)
consumer_lag = Gauge(
    "vividly_consumer_lag_messages",
    "Messages between a consumer's position and the partition's end (librdkafka stats).",
    ["topic", "partition"],
)
events_published = Counter(
    "vividly_events_published_total", "Messages handed to the Kafka producer.", ["topic"]
)
publish_failures = Counter(
    "vividly_publish_failures_total", "Messages the broker did not acknowledge.", ["topic"]
)

# -- breakers ---------------------------------------------------------------------------
breaker_state = Gauge(
    "vividly_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["breaker"]
)
breaker_transitions = Counter(
    "vividly_breaker_transitions_total", "Circuit breaker state changes.", ["breaker", "to_state"]
)
breaker_calls = Counter(
    "vividly_breaker_calls_total", "Calls made through a circuit breaker.", ["breaker"]
)
breaker_failures = Counter(
    "vividly_breaker_failures_total", "Calls through a circuit breaker that failed.", ["breaker"]
)

# -- the read side ----------------------------------------------------------------------
# Labelled by the read-model schema, so only a projector process exports them.
projector_folded = Counter(
    "vividly_projector_events_folded_total",
    "Tracking events folded into the read model.",
    ["schema"],
)
projector_lag = Gauge(
    "vividly_projector_lag_seconds",
    "How far the read model is behind the newest tracking event (0 when caught up).",
    ["schema"],
)
projector_quarantined = Counter(
    "vividly_projector_quarantined",
    "Tracking events the fold could not take, kept aside in the quarantine table",
    ["schema"],
)
projector_log_mismatch = Counter(
    "vividly_projector_log_mismatch",
    "Times the stored offsets did not belong to the log being read (refused or rebuilt)",
    ["schema"],
)
projector_batch = Histogram(
    "vividly_projector_batch_seconds",
    "Time to fold and commit one batch.",
    ["schema"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
api_latency = Histogram(
    "vividly_api_request_duration_seconds",
    "Monitoring API request latency by route template.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

sse_clients = Gauge("vividly_sse_clients", "Stream clients connected to this API process.")
sse_closed = Counter(
    "vividly_sse_closed_total",
    "Stream clients the API closed: too_slow (queue over its cap), stuck (a write did not "
    "complete in time), refused (the process already had its maximum of clients).",
    ["reason"],
)


def record_kafka_stats(raw: str) -> None:
    """librdkafka's statistics callback: per assigned partition, the consumer lag."""
    try:
        stats = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    for topic, t in (stats.get("topics") or {}).items():
        for part, p in (t.get("partitions") or {}).items():
            if part == "-1" or p.get("fetch_state") in (None, "none", "stopped"):
                continue
            lag = p.get("consumer_lag", -1)
            if lag is not None and lag >= 0:
                consumer_lag.labels(topic, part).set(lag)


class OldestInFlight:
    """Start times of the items a stage is working on; feeds the oldest-age gauge."""

    def __init__(self, stage: str, expected_s: float, clock: Callable[[], float] = time.monotonic):
        self._started: dict[int, float] = {}
        self._clock = clock
        self._next = 0
        stage_expected.labels(stage).set(expected_s)
        stage_oldest_in_flight.labels(stage).set_function(self.oldest)

    def begin(self) -> int:
        self._next += 1
        self._started[self._next] = self._clock()
        return self._next

    def end(self, token: int) -> None:
        self._started.pop(token, None)

    def oldest(self) -> float:
        if not self._started:
            return 0.0
        return self._clock() - min(self._started.values())


def serve_metrics(host: str, port: int) -> None:
    """Serve the default registry on http://host:port/metrics (a daemon thread)."""
    if port:
        start_http_server(port, addr=host)
