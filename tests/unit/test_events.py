"""The contract's compatibility promises: old readers survive new writers."""

from __future__ import annotations

import pytest

from vividly.events import (
    EVENT_TYPES,
    DecodeError,
    Envelope,
    decode_envelope,
    event_of,
    event_type_name,
    new_event_id,
    traceparent_for,
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _with_unknown_event(env: Envelope, field_number: int) -> bytes:
    """Bytes a newer producer would write: the envelope plus a oneof member we lack."""
    inner = b"\x0a\x03new"  # field 1, length 3, "new"
    tag = _varint(field_number << 3 | 2)  # length-delimited
    return env.SerializeToString() + tag + _varint(len(inner)) + inner


def test_every_seed_event_type_is_in_the_contract() -> None:
    assert set(EVENT_TYPES) == {
        "request_created",
        "request_started",
        "stage_started",
        "stage_completed",
        "stage_failed",
        "stage_retry_scheduled",
        "event_logged",
        "request_completed",
        "request_failed",
        "request_retried",
        "breaker_state_changed",
        "request_waiting",
        "request_cancelled",
        "bulk_action_requested",
    }


def test_an_unknown_future_event_type_decodes_as_no_event() -> None:
    env = Envelope(event_id=new_event_id(), request_id="r-1", schema_version=1)
    decoded = decode_envelope(_with_unknown_event(env, 99))
    assert decoded.request_id == "r-1"
    assert event_type_name(decoded) is None
    assert event_of(decoded) is None


def test_a_newer_schema_version_with_new_fields_still_decodes() -> None:
    env = Envelope(event_id=new_event_id(), request_id="r-2", schema_version=7)
    env.stage_started.stage = "validation"
    data = env.SerializeToString() + _varint(50 << 3 | 0) + _varint(42)
    decoded = decode_envelope(data)
    assert decoded.schema_version == 7
    assert event_type_name(decoded) == "stage_started"
    assert decoded.stage_started.stage == "validation"


def test_garbage_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_envelope(b"\xff\xff\xff\xff")


def test_traceparent_is_w3c_shaped_and_uses_the_correlation_id() -> None:
    tp = traceparent_for("0190c8e1-1234-7abc-8def-0123456789ab")
    version, trace, span, flags = tp.split("-")
    assert (version, flags) == ("00", "01")
    assert trace == "0190c8e112347abc8def0123456789ab"
    assert len(span) == 16
    assert len(traceparent_for("not-a-uuid").split("-")[1]) == 32
