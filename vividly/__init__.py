"""Vividly request tracking: the SDK a pipeline service imports.

``import vividly`` gives a stage author the SDK core: the tracker, the event types, the
circuit breakers, the failure policy, the settings and the testing fakes. Names are loaded
on first use, so importing one small module (``vividly.media``, ``vividly.rules``) does not
load protobuf or the Kafka client.

The rest of the package is in two layers above this one: :mod:`vividly.runtime` (what runs
a service: the consumer loop, the stage runner, ledgers) and :mod:`vividly.platform` (the
local stack, the CLI, the demo, export and replay). The core imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vividly.lazy import lazy_exports

__version__ = "0.1.0"

#: Each public name and the core module it lives in.
_EXPORTS: dict[str, str] = {
    # the tracker
    "RequestTracker": "vividly.tracker",
    "StageSpan": "vividly.tracker",
    "TrackerError": "vividly.tracker",
    "UnknownStageError": "vividly.tracker",
    "UnknownSeverityError": "vividly.tracker",
    "PayloadError": "vividly.tracker",
    "ReadSideUnavailable": "vividly.tracker",
    "ReadModelBehind": "vividly.tracker",
    "Position": "vividly.tracker",
    "TrackingSession": "vividly.tracker",
    "ApiStatusReader": "vividly.readside",
    "submit_request": "vividly.submit",
    # events
    "Envelope": "vividly.events",
    "WorkItem": "vividly.events",
    "MessageHeaders": "vividly.events",
    "decode_envelope": "vividly.events",
    # publishing
    "KafkaPublisher": "vividly.publish",
    "Publisher": "vividly.publish",
    "Outgoing": "vividly.publish",
    "DeliveryFailed": "vividly.publish",
    # breakers (the seed's examples import these three)
    "gemini_breaker": "vividly.breakers",
    "nano_banana_breaker": "vividly.breakers",
    "get_all_circuit_breaker_stats": "vividly.breakers",
    "cdn_breaker": "vividly.breakers",
    "smtp_breaker": "vividly.breakers",
    "CircuitOpen": "vividly.breakers",
    "guarded": "vividly.breakers",
    # the failure policy
    "ProviderError": "vividly.errors",
    "RetryableError": "vividly.errors",
    "PermanentError": "vividly.errors",
    "RetryPolicy": "vividly.errors",
    "is_retryable": "vividly.errors",
    # settings
    "Settings": "vividly.config",
    "STAGES": "vividly.config",
    # testing fakes
    "FakePublisher": "vividly.testing",
}

__all__ = [
    "STAGES",
    "ApiStatusReader",
    "CircuitOpen",
    "DeliveryFailed",
    "Envelope",
    "FakePublisher",
    "KafkaPublisher",
    "MessageHeaders",
    "Outgoing",
    "PayloadError",
    "PermanentError",
    "Position",
    "ProviderError",
    "Publisher",
    "ReadModelBehind",
    "ReadSideUnavailable",
    "RequestTracker",
    "RetryPolicy",
    "RetryableError",
    "Settings",
    "StageSpan",
    "TrackerError",
    "TrackingSession",
    "UnknownSeverityError",
    "UnknownStageError",
    "WorkItem",
    "cdn_breaker",
    "decode_envelope",
    "gemini_breaker",
    "get_all_circuit_breaker_stats",
    "guarded",
    "is_retryable",
    "nano_banana_breaker",
    "smtp_breaker",
    "submit_request",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from vividly.breakers import (
        CircuitOpen,
        cdn_breaker,
        gemini_breaker,
        get_all_circuit_breaker_stats,
        guarded,
        nano_banana_breaker,
        smtp_breaker,
    )
    from vividly.config import STAGES, Settings
    from vividly.errors import (
        PermanentError,
        ProviderError,
        RetryableError,
        RetryPolicy,
        is_retryable,
    )
    from vividly.events import Envelope, MessageHeaders, WorkItem, decode_envelope
    from vividly.publish import DeliveryFailed, KafkaPublisher, Outgoing, Publisher
    from vividly.readside import ApiStatusReader
    from vividly.submit import submit_request
    from vividly.testing import FakePublisher
    from vividly.tracker import (
        PayloadError,
        Position,
        ReadModelBehind,
        ReadSideUnavailable,
        RequestTracker,
        StageSpan,
        TrackerError,
        TrackingSession,
        UnknownSeverityError,
        UnknownStageError,
    )
