"""Circuit breakers for the external APIs, defined once here (pybreaker).

``gemini_breaker``, ``nano_banana_breaker``, ``cdn_breaker`` and ``smtp_breaker`` guard the
Gemini API, the video API, the S3/CDN upload and SMTP. Every state change is published as
a BreakerStateChanged event (once :func:`publish_breaker_events` has been given a tracker)
and logged; :func:`get_all_circuit_breaker_stats` returns what the seed guide reads:
state, total calls, total failures, failure rate and when the breaker opened.

Use from asyncio code with :func:`guarded`; it raises :class:`CircuitOpen` (carrying when
the breaker will let a trial call through) instead of calling a service known to be down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pybreaker
from pybreaker import CircuitBreaker, CircuitBreakerError

from vividly import metrics
from vividly.errors import counts_against_breaker

if TYPE_CHECKING:
    from vividly.tracker import RequestTracker

__all__ = [
    "BREAKERS",
    "CircuitBreakerError",
    "CircuitOpen",
    "cdn_breaker",
    "configure_breakers",
    "gemini_breaker",
    "get_all_circuit_breaker_stats",
    "guarded",
    "install_breaker_metrics",
    "nano_banana_breaker",
    "publish_breaker_events",
    "retry_at",
    "smtp_breaker",
]


log = logging.getLogger("vividly.breakers")
T = TypeVar("T")


class CircuitOpen(Exception):
    """The breaker is open: the call was not made. ``retry_at`` is epoch seconds."""

    is_retryable = True

    def __init__(self, breaker: str, retry_at: float) -> None:
        super().__init__(f"circuit breaker {breaker!r} is open until {retry_at:.0f}")
        self.breaker = breaker
        self.retry_at = retry_at


def _never_counts(exc: BaseException) -> bool:
    """Failures that say nothing about the service's health do not trip the breaker
    (:func:`vividly.errors.counts_against_breaker` decides)."""
    return not counts_against_breaker(exc)


@dataclass
class _Counters(pybreaker.CircuitBreakerListener):
    """Totals pybreaker does not keep, and the hooks state changes go to."""

    total_calls: int = 0
    total_failures: int = 0
    rejected_calls: int = 0
    opened_at: float | None = None
    on_change: list[Callable[[CircuitBreaker, str, str], None]] = field(default_factory=list)

    def before_call(self, cb: CircuitBreaker, func: Any, *args: Any, **kwargs: Any) -> None:
        self.total_calls += 1
        metrics.breaker_calls.labels(str(cb.name)).inc()

    def failure(self, cb: CircuitBreaker, exc: BaseException) -> None:
        self.total_failures += 1
        metrics.breaker_failures.labels(str(cb.name)).inc()

    def state_change(self, cb: CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else "closed"
        new = new_state.name
        self.opened_at = time.time() if new == "open" else self.opened_at
        if new == "closed":
            self.opened_at = None
        log.warning(
            "circuit breaker state changed",
            extra={"breaker": cb.name, "old_state": old, "new_state": new},
        )
        for hook in list(self.on_change):
            try:
                hook(cb, old, new)
            except Exception:  # a broken hook must not break the guarded call
                log.exception("breaker state hook failed", extra={"breaker": cb.name})


DEFAULT_FAIL_MAX = 5
DEFAULT_RESET_TIMEOUT_S = 30.0


def _make(name: str) -> CircuitBreaker:
    return CircuitBreaker(
        fail_max=DEFAULT_FAIL_MAX,
        reset_timeout=DEFAULT_RESET_TIMEOUT_S,
        exclude=[_never_counts],
        listeners=[_Counters()],
        name=name,
    )


gemini_breaker = _make("gemini")
nano_banana_breaker = _make("nano_banana")
cdn_breaker = _make("cdn")
smtp_breaker = _make("smtp")

#: Every breaker by name.
BREAKERS: dict[str, CircuitBreaker] = {
    str(b.name): b for b in (gemini_breaker, nano_banana_breaker, cdn_breaker, smtp_breaker)
}


def _counters(cb: CircuitBreaker) -> _Counters:
    for listener in cb.listeners:
        if isinstance(listener, _Counters):
            return listener
    raise LookupError(f"breaker {cb.name} has no counters")


def configure_breakers(fail_max: int, reset_timeout_s: float) -> None:
    """Apply settings (``VIVIDLY_BREAKER_FAIL_MAX`` / ``..._RESET_TIMEOUT_S``) to all."""
    for cb in BREAKERS.values():
        cb.fail_max = fail_max
        cb.reset_timeout = reset_timeout_s


def publish_breaker_events(tracker: RequestTracker) -> None:
    """Publish every state change of every breaker as a BreakerStateChanged event."""

    def hook(cb: CircuitBreaker, old: str, new: str) -> None:
        c = _counters(cb)
        tracker.breaker_state_changed(
            str(cb.name),
            old,
            new,
            fail_counter=cb.fail_counter,
            success_counter=cb.success_counter,
            total_calls=c.total_calls,
            total_failures=c.total_failures,
        )

    for cb in BREAKERS.values():
        counters = _counters(cb)
        counters.on_change = [h for h in counters.on_change if h.__name__ != "hook"]
        counters.on_change.append(hook)


def on_state_change(hook: Callable[[CircuitBreaker, str, str], None]) -> None:
    """Call ``hook(breaker, old, new)`` on every state change (metrics, loop gates)."""
    for cb in BREAKERS.values():
        _counters(cb).on_change.append(hook)


_metrics_installed = False


def install_breaker_metrics() -> None:
    """Keep the breaker gauges current (idempotent); every breaker starts at closed."""
    global _metrics_installed
    for name in BREAKERS:
        metrics.breaker_state.labels(name).set(0)
    if not _metrics_installed:

        def on_change(cb: Any, old: str, new: str) -> None:
            name = str(cb.name)
            metrics.breaker_state.labels(name).set(metrics.BREAKER_STATE_VALUES.get(new, -1))
            metrics.breaker_transitions.labels(name, new).inc()

        on_state_change(on_change)
        _metrics_installed = True


def retry_at(cb: CircuitBreaker) -> float | None:
    """When an open breaker will let a trial call through (epoch s); None if not open."""
    if cb.current_state != "open":
        return None
    opened = cb._state_storage.opened_at
    start = opened.timestamp() if opened is not None else time.time()
    return start + float(cb.reset_timeout)


async def guarded(cb: CircuitBreaker, call: Callable[[], Awaitable[T]]) -> T:
    """Await ``call()`` through ``cb``; raise :class:`CircuitOpen` instead when it is open."""
    try:
        with cb.calling():
            return await call()
    except CircuitBreakerError:
        _counters(cb).rejected_calls += 1
        due = retry_at(cb) or (time.time() + float(cb.reset_timeout))
        raise CircuitOpen(cb.name or "?", due) from None


def get_all_circuit_breaker_stats() -> dict[str, dict[str, Any]]:
    """Per breaker: state, total_calls (calls made), total_failures, rejected_calls (not
    made: the breaker was open), failure_rate, fail_counter,
    opened_at (epoch s or None) and retry_at, as the seed's health check reads them."""
    out: dict[str, dict[str, Any]] = {}
    for name, cb in BREAKERS.items():
        c = _counters(cb)
        out[name] = {
            "state": cb.current_state,
            "total_calls": c.total_calls,
            "total_failures": c.total_failures,
            "rejected_calls": c.rejected_calls,
            "failure_rate": c.total_failures / c.total_calls if c.total_calls else 0.0,
            "fail_counter": cb.fail_counter,
            "opened_at": c.opened_at,
            "retry_at": retry_at(cb),
        }
    return out


def reset_all() -> None:
    """Close every breaker and zero its counters (tests, and `vividly` tools)."""
    for cb in BREAKERS.values():
        cb.close()
        c = _counters(cb)
        c.total_calls = c.total_failures = c.rejected_calls = 0
        c.opened_at = None
