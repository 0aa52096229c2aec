"""Prometheus metrics shared by the services (prometheus-client, default registry).

Names and units follow Prometheus conventions; no per-request labels. Serving them on
``/metrics`` comes with the metrics issue; the values are kept from the start.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from pybreaker import CircuitBreaker

from vividly import breakers

#: 0 closed, 1 half-open, 2 open.
BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}

breaker_state = Gauge(
    "vividly_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["breaker"]
)
breaker_transitions = Counter(
    "vividly_breaker_transitions_total", "Circuit breaker state changes.", ["breaker", "to_state"]
)

_installed = False


def _on_change(cb: CircuitBreaker, old: str, new: str) -> None:
    name = str(cb.name)
    breaker_state.labels(name).set(BREAKER_STATE_VALUES.get(new, -1))
    breaker_transitions.labels(name, new).inc()


def install_breaker_metrics() -> None:
    """Keep the breaker gauges current (idempotent); every breaker starts at closed."""
    global _installed
    for name in breakers.BREAKERS:
        breaker_state.labels(name).set(0)
    if not _installed:
        breakers.on_state_change(_on_change)
        _installed = True
