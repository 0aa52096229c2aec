"""``vividly events export``: decoded tracking events from the log, for analysts.

Reads ``tracking.events`` straight from Kafka (not the read model), from the first offset
at or after ``--since`` (Kafka's time index) to the end as it was when the export started
(or ``--until``), filters by request and stage, and writes JSON lines, CSV or Parquet in
batches, so memory stays flat however long the range.
"""

from __future__ import annotations

import csv
import io
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from vividly.config import TRACKING_TOPIC, Settings
from vividly.events import Envelope
from vividly.runtime.bus import offsets_at

FORMATS = ("jsonl", "csv", "parquet")
COLUMNS = (
    "event_id",
    "occurred_at",
    "request_id",
    "correlation_id",
    "event_type",
    "stage",
    "attempt",
    "producer",
    "schema_version",
    "partition",
    "offset",
    "payload",
)
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (naive means UTC) or a duration ago: ``90s``, ``15m``, ``2h``, ``7d``."""
    m = _AGO.match(text.strip())
    if m:
        ago = timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
        return (now or datetime.now(UTC)) - ago
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-28T10:00:00Z) or an age (15m, 2h, 7d)"
        ) from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ExportFilter:
    since: datetime | None = None
    until: datetime | None = None
    request_id: str | None = None
    stage: str | None = None


def row_of(env: Envelope, partition: int, offset: int) -> dict[str, Any] | None:
    kind = env.WhichOneof("event")
    if kind is None:
        return None
    ev = getattr(env, kind)
    payload = MessageToDict(ev, preserving_proto_field_name=True)
    for key in [k for k in payload if k.endswith("_json")]:  # JSON bytes → objects
        raw = getattr(ev, key)
        try:
            payload[key.removesuffix("_json")] = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            payload[key.removesuffix("_json")] = raw.decode("utf-8", "replace")
        del payload[key]
    if kind == "stage_failed" and "input" in payload:
        payload["input"] = {"stage": ev.input.stage, "attempt": ev.input.attempt}
    at = datetime.fromtimestamp(env.occurred_at.seconds + env.occurred_at.nanos / 1e9, UTC)
    event_type = ev.event_type if kind == "event_logged" and ev.event_type else kind
    return {
        "event_id": env.event_id,
        "occurred_at": at.isoformat(),
        "request_id": env.request_id or None,
        "correlation_id": env.correlation_id or None,
        "event_type": event_type,
        "stage": getattr(ev, "stage", "") or None,
        "attempt": getattr(ev, "attempt", 0) or None,
        "producer": env.producer,
        "schema_version": env.schema_version,
        "partition": partition,
        "offset": offset,
        "payload": payload,
    }


def read_events(
    settings: Settings,
    flt: ExportFilter,
    *,
    topic: str = TRACKING_TOPIC,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Decoded events in the range, partition by partition interleaved as consumed."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "vividly-export",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
        }
    )
    try:
        meta = consumer.list_topics(topic, 10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic} does not exist on {settings.kafka_bootstrap}")
        parts = sorted(meta.topics[topic].partitions)
        ends: dict[int, int] = {}
        starts: dict[int, int] = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), 10)
            starts[p], ends[p] = low, high
        if flt.since is not None:
            starts.update(offsets_at(consumer, topic, parts, flt.since))
        if flt.until is not None:  # first offset after `until` ends the range
            after = flt.until + timedelta(milliseconds=1)
            for p, off in offsets_at(consumer, topic, parts, after).items():
                ends[p] = min(ends[p], off)
        remaining = {p: ends[p] - starts[p] for p in parts if ends[p] > starts[p]}
        if on_total is not None:
            on_total(sum(remaining.values()))
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in parts])
        # The range is a snapshot: it ends at the end offsets read above (or --until's).
        # A partition that stops answering for long is reported, not waited on forever.
        quiet_since = time.monotonic()
        while remaining:
            msgs = consumer.consume(2000, 0.25)
            if not msgs:
                if time.monotonic() - quiet_since > 30:
                    raise RuntimeError(
                        f"the log stopped short of its end offsets on partitions "
                        f"{sorted(remaining)}; is the broker up?"
                    )
                continue
            quiet_since = time.monotonic()
            done = 0
            for m in msgs:
                if m.error() is not None:
                    continue
                p, off = m.partition() or 0, m.offset() or 0
                if off >= ends.get(p, 0):
                    continue
                done += 1
                if p in remaining and off + 1 >= ends[p]:
                    remaining.pop(p, None)
                env = Envelope()
                try:
                    env.ParseFromString(m.value() or b"")
                except DecodeError:
                    continue
                if flt.request_id and env.request_id != flt.request_id:
                    continue
                row = row_of(env, p, off)
                if row is None or (flt.stage and row["stage"] != flt.stage):
                    continue
                yield row
            if on_progress is not None:
                on_progress(done)
    finally:
        consumer.close()


# ---------------------------------------------------------------------- writers
def write_jsonl(rows: Iterator[dict[str, Any]], out: IO[bytes]) -> int:
    n = 0
    for row in rows:
        out.write(orjson.dumps(row) + b"\n")
        n += 1
    return n


def write_csv(rows: Iterator[dict[str, Any]], out: IO[bytes]) -> int:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    n = 0
    for row in rows:
        writer.writerow(
            [orjson.dumps(row[c]).decode() if c == "payload" else row[c] for c in COLUMNS]
        )
        n += 1
    text.flush()
    text.detach()
    return n


def write_parquet(rows: Iterator[dict[str, Any]], path: Path, batch: int = 50_000) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("event_id", pa.string()),
            ("occurred_at", pa.timestamp("us", tz="UTC")),
            ("request_id", pa.string()),
            ("correlation_id", pa.string()),
            ("event_type", pa.string()),
            ("stage", pa.string()),
            ("attempt", pa.int32()),
            ("producer", pa.string()),
            ("schema_version", pa.int32()),
            ("partition", pa.int32()),
            ("offset", pa.int64()),
            ("payload", pa.string()),  # JSON text
        ]
    )
    n = 0
    with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
        cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}

        def flush() -> None:
            if cols["event_id"]:
                writer.write_table(pa.table(cols, schema=schema))
                for v in cols.values():
                    v.clear()

        for row in rows:
            for c in COLUMNS:
                value = row[c]
                if c == "payload":
                    value = orjson.dumps(value).decode()
                elif c == "occurred_at":
                    value = datetime.fromisoformat(value)
                cols[c].append(value)
            n += 1
            if len(cols["event_id"]) >= batch:
                flush()
        flush()
    return n


def export(rows: Iterator[dict[str, Any]], fmt: str, output: Path | None) -> int:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        if output is None:
            raise ValueError("parquet needs --output FILE")
        return write_parquet(rows, output)
    if output is None:
        return (write_jsonl if fmt == "jsonl" else write_csv)(rows, sys.stdout.buffer)
    with output.open("wb") as f:
        return (write_jsonl if fmt == "jsonl" else write_csv)(rows, f)
