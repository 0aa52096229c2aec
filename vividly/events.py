"""The event contract: generated protobuf types, re-exported, plus envelope helpers.

Schemas live in ``proto/vividly/v1``; ``make proto`` regenerates ``vividly/v1``.
Events are dispatched by their type through :data:`EVENT_TYPES`, never by string chains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

import uuid_utils
from google.protobuf.message import DecodeError, Message

from vividly.v1.events_pb2 import (
    BreakerStateChanged,
    Envelope,
    EventLogged,
    RequestCompleted,
    RequestCreated,
    RequestFailed,
    RequestRetried,
    RequestStarted,
    Severity,
    StageCompleted,
    StageFailed,
    StageRetryScheduled,
    StageStarted,
)
from vividly.v1.work_item_pb2 import RequestSpec, WorkItem

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "BreakerStateChanged",
    "DecodeError",
    "Envelope",
    "EventLogged",
    "MessageHeaders",
    "RequestCompleted",
    "RequestCreated",
    "RequestFailed",
    "RequestRetried",
    "RequestSpec",
    "RequestStarted",
    "Severity",
    "StageCompleted",
    "StageFailed",
    "StageRetryScheduled",
    "StageStarted",
    "WorkItem",
    "decode_envelope",
    "event_of",
    "event_type_name",
    "new_event_id",
    "new_span_id",
    "traceparent_for",
]

#: Version of the envelope contract this code writes. Readers accept newer versions
#: (unknown fields are kept and ignored) and skip event types they do not know.
SCHEMA_VERSION: Final = 1

#: oneof field name in Envelope → event class, e.g. "stage_completed" → StageCompleted.
EVENT_TYPES: Final[dict[str, type[Message]]] = {
    field.name: type(getattr(Envelope(), field.name))
    for field in Envelope.DESCRIPTOR.oneofs_by_name["event"].fields
}

#: Kafka header names used on every message the project produces.
H_TYPE: Final = "vividly-type"
H_CORRELATION: Final = "x-correlation-id"
H_TRACEPARENT: Final = "traceparent"
H_EVENT_TYPE: Final = "vividly-event"

ENVELOPE_TYPE: Final = Envelope.DESCRIPTOR.full_name  # "vividly.v1.Envelope"
WORK_ITEM_TYPE: Final = WorkItem.DESCRIPTOR.full_name  # "vividly.v1.WorkItem"

SEVERITIES: Final[dict[str, int]] = {
    "debug": Severity.SEVERITY_DEBUG,
    "info": Severity.SEVERITY_INFO,
    "warning": Severity.SEVERITY_WARNING,
    "error": Severity.SEVERITY_ERROR,
    "critical": Severity.SEVERITY_CRITICAL,
}
SEVERITY_NAMES: Final[dict[int, str]] = {v: k for k, v in SEVERITIES.items()}


def new_event_id() -> str:
    """A UUIDv7: time-ordered, so event ids sort by creation time."""
    return str(uuid_utils.uuid7())


def new_span_id() -> str:
    return os.urandom(8).hex()


def traceparent_for(correlation_id: str, span_id: str | None = None, parent: str = "") -> str:
    """The W3C traceparent of a new span ``span_id`` (random when not given).

    Its trace is ``parent``'s when that is a traceparent (the span is its child: a stage's
    event under the work item it consumed), else the correlation id's own: its 32 hex
    digits (any other id is hashed to them). Tying the trace id to the correlation id lets
    any tracing backend and our own read model join on the same value without a lookup.
    """
    span = span_id or new_span_id()
    if len(parent) == 55 and parent.startswith("00-"):
        return f"{parent[:36]}{span}-01"
    trace_id = correlation_id.replace("-", "").lower()
    if len(trace_id) != 32:
        trace_id = uuid_utils.uuid5(uuid_utils.NAMESPACE_URL, correlation_id).hex
    return f"00-{trace_id}-{span}-01"


def event_type_name(envelope: Envelope) -> str | None:
    """The oneof member set in ``envelope`` ("stage_completed", …), or None when the
    event is of a type this code does not know (written by a newer producer)."""
    name: str | None = envelope.WhichOneof("event")
    return name


def event_of(envelope: Envelope) -> Message | None:
    name = envelope.WhichOneof("event")
    if name is None:
        return None
    event: Message = getattr(envelope, name)
    return event


def decode_envelope(data: bytes) -> Envelope:
    """Parse an Envelope; raises :class:`DecodeError` on bytes that are not one."""
    env = Envelope()
    env.ParseFromString(data)
    return env


@dataclass(frozen=True, slots=True)
class MessageHeaders:
    """The headers of a consumed message, decoded once."""

    type_name: str | None
    correlation_id: str | None
    traceparent: str | None
    raw: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, headers: list[tuple[str, bytes | None]] | None) -> MessageHeaders:
        if not headers:
            return cls(None, None, None, ())
        found: dict[str, str] = {}
        raw: list[tuple[str, bytes]] = []
        for k, v in headers:
            value = v or b""
            raw.append((k, value))
            if k in (H_TYPE, H_CORRELATION, H_TRACEPARENT):
                found[k] = value.decode("utf-8", "replace")
        return cls(
            found.get(H_TYPE), found.get(H_CORRELATION), found.get(H_TRACEPARENT), tuple(raw)
        )
