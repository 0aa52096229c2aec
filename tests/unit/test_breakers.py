"""Breakers: open after fail_max, CircuitOpen instead of calls, events and stats."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from vividly.breakers import (
    BREAKERS,
    CircuitOpen,
    configure_breakers,
    get_all_circuit_breaker_stats,
    guarded,
    nano_banana_breaker,
    publish_breaker_events,
    reset_all,
)
from vividly.errors import ProviderError
from vividly.testing import FakePublisher
from vividly.tracker import RequestTracker


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    configure_breakers(3, 60)
    reset_all()
    yield
    reset_all()


async def fail() -> None:
    raise ProviderError("503", retryable=True, status=503)


async def bad_request() -> None:
    raise ProviderError("422", retryable=False, status=422)


async def ok() -> str:
    return "ok"


def test_the_four_breakers_exist() -> None:
    assert set(BREAKERS) == {"gemini", "nano_banana", "cdn", "smtp"}


def test_breaker_opens_after_fail_max_and_stops_calling() -> None:
    pub = FakePublisher()
    publish_breaker_events(RequestTracker(pub, producer="video"))
    calls = {"n": 0}

    async def counted() -> None:
        calls["n"] += 1
        await fail()

    async def run() -> None:
        for _ in range(2):
            with pytest.raises(ProviderError):
                await guarded(nano_banana_breaker, counted)
        with pytest.raises(CircuitOpen) as info:  # the third failure trips it
            await guarded(nano_banana_breaker, counted)
        assert info.value.breaker == "nano_banana"
        with pytest.raises(CircuitOpen):
            await guarded(nano_banana_breaker, counted)

    from prometheus_client import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"breaker": "nano_banana"}) or 0.0

    calls_before = sample("vividly_breaker_calls_total")
    failures_before = sample("vividly_breaker_failures_total")
    asyncio.run(run())
    assert calls["n"] == 3, "no call is made while the breaker is open"
    assert sample("vividly_breaker_calls_total") - calls_before == 3
    assert sample("vividly_breaker_failures_total") - failures_before == 3
    stats = get_all_circuit_breaker_stats()["nano_banana"]
    assert stats["state"] == "open"
    assert stats["total_calls"] == 3
    assert stats["total_failures"] == 3
    assert stats["rejected_calls"] == 2  # the tripping call and the one after
    assert stats["failure_rate"] == pytest.approx(1.0)
    assert stats["opened_at"] is not None
    assert stats["retry_at"] > stats["opened_at"]
    change = pub.messages[-1]
    assert change.key == b"nano_banana"
    ev = change.envelope().breaker_state_changed
    assert (ev.old_state, ev.new_state, ev.total_failures) == ("closed", "open", 3)


def test_client_errors_do_not_trip_the_breaker() -> None:
    async def run() -> None:
        for _ in range(5):
            with pytest.raises(ProviderError):
                await guarded(nano_banana_breaker, bad_request)
        assert await guarded(nano_banana_breaker, ok) == "ok"

    asyncio.run(run())
    assert nano_banana_breaker.current_state == "closed"


def test_half_open_trial_success_closes_it() -> None:
    configure_breakers(1, 0.05)

    async def run() -> None:
        with pytest.raises(CircuitOpen):
            await guarded(nano_banana_breaker, fail)
        await asyncio.sleep(0.06)
        assert await guarded(nano_banana_breaker, ok) == "ok"

    asyncio.run(run())
    assert nano_banana_breaker.current_state == "closed"


def test_every_state_change_updates_the_breaker_metrics() -> None:
    from prometheus_client import REGISTRY

    from vividly.breakers import install_breaker_metrics

    install_breaker_metrics()

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert value("vividly_breaker_state", breaker="nano_banana") == 0
    opened_before = (
        value("vividly_breaker_transitions_total", breaker="nano_banana", to_state="open") or 0.0
    )
    configure_breakers(1, 60)

    async def trip() -> None:
        with pytest.raises(CircuitOpen):
            await guarded(nano_banana_breaker, fail)

    asyncio.run(trip())
    assert value("vividly_breaker_state", breaker="nano_banana") == 2
    assert (
        value("vividly_breaker_transitions_total", breaker="nano_banana", to_state="open")
        == opened_before + 1
    )
    reset_all()
    assert value("vividly_breaker_state", breaker="nano_banana") == 0
