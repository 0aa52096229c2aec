"""The fault suite: the whole pipeline under load while processes are killed, paused and
restarted, then a checker that reads the whole log and Postgres.

    .venv/bin/python -m bench.faults [--seed 7] [--minutes 3] [--rate 4]

Against a 3-broker KRaft Apache Kafka cluster (RF 3, min ISR 2), Postgres, the
emulators, every stage service, two projectors in one group and the monitoring API,
submissions go through the API (a service token, an Idempotency-Key per submission,
resent on a refusal) for ``--minutes`` while faults are injected at seeded random
moments:

- ``kill_leader_broker``: SIGKILL of the broker leading most tracking.events partitions,
  restarted a few seconds later on its log;
- ``pause_broker``: SIGSTOP of a broker for longer than the group session timeout;
- ``kill_postgres``: SIGKILL of Postgres, restarted on its data directory;
- ``kill_service``: SIGKILL of each stage service in turn (a seeded order), restarted;
- ``kill_notify_mid_send``: notify SIGKILLed after claiming an email and before sending
  it, hit deterministically by holding the SMTP sink's MAIL FROM (its latency knob);
- ``kill_projector``: SIGKILL of one of the two projectors mid-batch, restarted;
- ``stack_down_up``: every process stopped and started again on the state on disk.

Poison (random bytes, truncated protobuf, an unknown type header, an oversized message)
is written to every topic during the run. After the load stops and the pipeline
settles, the checker reports (last line, one JSON object): requests accepted (202),
requests with exactly one terminal event, events lost (a 202's request missing from the
log or never terminal; an outcome a stage ledger recorded missing from the log),
duplicated (more than one terminal event, or stage completion, for one request or
attempt), emails_not_one (an outcome without exactly one distinct Message-ID), diverged
(read-model rows that differ from a from-scratch fold of the log), the SSE client that
resumed across the faults (every seq exactly once), poison not found in the DLQ or the
quarantine, the faults injected, and the longest window in which submissions were refused.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from vividly.config import DLQ_TOPIC, STAGE_TOPICS, TRACKING_TOPIC, Settings
from vividly.events import ENVELOPE_TYPE, H_TYPE, Envelope, WorkItem
from vividly.platform.pipeline import SERVICES, Pipeline, PipelinePorts, load_corpus
from vividly.platform.stack import ApacheKafkaBroker, EmbeddedPostgres, Managed, free_port
from vividly.platform.supervisor import Supervisor
from vividly.runtime.auth import mint
from vividly.runtime.bus import ensure_topics
from vividly.runtime.db import migrate

SECRET = "fault-suite-" + os.urandom(24).hex()
TOPICS = (*STAGE_TOPICS, TRACKING_TOPIC, DLQ_TOPIC)
FAULTS = (
    "kill_leader_broker",
    "pause_broker",
    "kill_postgres",
    "kill_service",
    "kill_notify_mid_send",
    "kill_projector",
)
PROJECTORS = ("projector", "projector-2")


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for(what: str, fn: Any, timeout: float = 120.0, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except Exception:  # the thing is coming back up
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------------------- the stack
@dataclass
class Stack:
    home: Path
    brokers: list[ApacheKafkaBroker]
    pg: EmbeddedPostgres
    pipeline: Pipeline
    settings: Settings
    supervisor: Supervisor = field(default_factory=Supervisor)
    supervising: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    def supervise(self) -> None:
        """Restart any pipeline process that exits (as ``vividly up`` does), on a thread."""

        def starter(name: str) -> Callable[[], Managed]:
            return lambda: self.pipeline.restart(name)

        for name, managed in self.pipeline.procs.items():
            self.supervisor.watch(name, managed, starter(name))

        def loop() -> None:
            while not self._stop.wait(0.25):
                if self.supervising.is_set():
                    self.supervisor.check()

        self.supervising.set()
        threading.Thread(target=loop, daemon=True, name="supervisor").start()

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    @classmethod
    def start(cls, home: Path, job_seconds: float) -> Stack:
        brokers = ApacheKafkaBroker.cluster(home / "kafka", 3)
        for b in brokers:
            b.start(wait=False)
        for b in brokers:
            b.wait_ready()
        pg = EmbeddedPostgres(home / "pgdata", free_port())
        pg.start()
        asyncio.run(migrate(pg.url))
        bootstrap = ",".join(b.bootstrap for b in brokers)
        settings = Settings(kafka_bootstrap=bootstrap, replication_factor=3, topic_partitions=3)
        ensure_topics(settings, dict.fromkeys(TOPICS, 3))
        pipeline = Pipeline(
            bootstrap,
            pg.url,
            home,
            PipelinePorts.free(),
            video_job_seconds=job_seconds,
            extra_env={
                "VIVIDLY_REPLICATION_FACTOR": "3",
                "VIVIDLY_TOPIC_PARTITIONS": "3",
                "VIVIDLY_JWT_SECRET": SECRET,
                "VIVIDLY_EMAIL_CLAIM_LEASE_S": "4",
                "VIVIDLY_SSE_HEARTBEAT_S": "1",
                "VIVIDLY_RETRY_BACKOFF_S": "0.5",
                "VIVIDLY_STAGE_MAX_ATTEMPTS": "5",
                "VIVIDLY_HTTP_TIMEOUT_S": "10",
            },
        )
        stack = cls(home, brokers, pg, pipeline, settings)
        pipeline.start_emulators()
        # Some requests fail for real (a video job that ends failed: the error email),
        # and some external calls fail once (retries).
        pipeline.set_knobs("video", job_fail_rate=0.08, error_rate=0.03)
        pipeline.set_knobs("gemini", error_rate=0.03)
        asyncio.run(load_corpus(pg.url, pipeline.gemini_url))
        pipeline.start_services()
        pipeline.start_service("projector")
        stack.start_second_projector()
        pipeline.start_service("api")
        stack.supervise()
        return stack

    def start_second_projector(self) -> None:
        p = self.pipeline
        p._python(
            "projector-2",
            ["-m", "services.projector.main"],
            None,
            env={"VIVIDLY_METRICS_PORT": str(free_port())},
        )

    def kill(self, name: str) -> None:
        """SIGKILL; the supervisor starts it again."""
        m = self.pipeline.procs[name]
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(10)

    def running(self, name: str) -> bool:
        m = self.pipeline.procs.get(name)
        return m is not None and m.proc.poll() is None

    def stop(self) -> None:
        self._stop.set()
        self.supervising.clear()
        self.pipeline.stop()
        for b in self.brokers:
            b.stop()
        self.pg.stop()

    def leader_broker(self) -> ApacheKafkaBroker:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        meta = admin.list_topics(TRACKING_TOPIC, timeout=10)
        leaders = collections.Counter(
            p.leader for p in meta.topics[TRACKING_TOPIC].partitions.values()
        )
        node = leaders.most_common(1)[0][0]
        return next(b for b in self.brokers if b.node_id == node)

    def smtp_latency(self, seconds: float) -> None:
        (self.pipeline.mail_dir / "_latency").write_text(str(seconds))


# ---------------------------------------------------------------------------- the load
@dataclass
class Load:
    api_url: str
    rate: float
    seed: int
    accepted: dict[str, str] = field(default_factory=dict)  # request_id -> idempotency key
    refusals: int = 0
    max_refusal_window_s: float = 0.0
    _refused_since: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(self.seed)
        token = mint(SECRET, role="service", sub="fault-load", org=None, ttl_s=3600)
        headers = {"Authorization": f"Bearer {token}"}
        n = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                n += 1
                body = {
                    "student_id": f"stu-{n % 50}",
                    "organization_id": f"org-{n % 5}",
                    "topic": rng.choice(["Volcanoes", "Tides", "Cells", "Rivers"]),
                    "learning_objective": "Explain it to a student",
                    "grade_level": "10",
                    "duration_minutes": 1,
                }
                key = f"fault-{self.seed}-{n}"
                self._submit(client, headers, body, key)
                self._stop.wait(1 / self.rate)

    def _submit(self, client: httpx.Client, headers: dict[str, str], body: Any, key: str) -> None:
        # A refused submission is sent again with the same key until it is accepted (or
        # the load stops): the key makes it one request however often it is sent.
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                r = client.post(
                    f"{self.api_url}/api/v1/requests",
                    json=body,
                    headers={**headers, "Idempotency-Key": key},
                )
                ok = r.status_code == 202
                if 400 <= r.status_code < 500:  # a final answer about the input, not a refusal
                    raise AssertionError(f"the load's own submission was refused: {r.text}")
            except httpx.HTTPError:
                ok = False
            if ok:
                self.accepted[r.json()["request_id"]] = key
                if self._refused_since is not None:
                    window = time.monotonic() - self._refused_since
                    self.max_refusal_window_s = max(self.max_refusal_window_s, window)
                    self._refused_since = None
                return
            self.refusals += 1
            if self._refused_since is None:
                self._refused_since = began
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------------- SSE client
class SseClient:
    """An admin's stream, resumed with Last-Event-ID after every drop."""

    def __init__(self, api_url: str) -> None:
        self.url = f"{api_url}/api/v1/monitoring/stream"
        self.token = mint(SECRET, role="admin", sub="fault-sse", org=None, ttl_s=3600)
        self.seqs: list[int] = []
        self.first_live: int | None = None
        self.reconnects = 0
        self.resumed_from: list[int | None] = []  # the Last-Event-ID of each connection
        self.statuses: list[int] = []  # the answer to each connection
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        wait_for("the SSE client to connect", lambda: self.first_live is not None, 30)

    def _run(self) -> None:
        while not self._stop.is_set():
            headers = {"Authorization": f"Bearer {self.token}"}
            if self.seqs:
                headers["Last-Event-ID"] = str(self.seqs[-1])
            elif self.first_live is not None:
                headers["Last-Event-ID"] = str(self.first_live)
            last = headers.get("Last-Event-ID")
            self.resumed_from.append(int(last) if last else None)
            try:
                with httpx.stream("GET", self.url, headers=headers, timeout=10) as r:
                    self.statuses.append(r.status_code)
                    for line in r.iter_lines():
                        if self._stop.is_set():
                            return
                        if (
                            line.startswith(": connected, live from seq ")
                            and self.first_live is None
                        ):
                            self.first_live = int(line.rsplit(" ", 1)[1])
                        elif line.startswith("id: "):
                            self.seqs.append(int(line[4:]))
            except (httpx.HTTPError, OSError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:120])
            self.reconnects += 1
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


# ---------------------------------------------------------------------------- poison
def write_poison(bootstrap: str, rng: random.Random, round_no: int) -> list[tuple[str, int, int]]:
    """One of each kind of poison to every topic a service consumes; their positions."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    written: list[tuple[str, int, int]] = []

    def report(err: Any, msg: Any) -> None:
        if err is None:
            written.append((msg.topic(), msg.partition(), msg.offset()))

    good = Envelope(event_id=str(uuid.uuid4()), request_id="poison")
    good.occurred_at.GetCurrentTime()
    good.request_created.request.topic = "poison"
    for topic in (*STAGE_TOPICS, TRACKING_TOPIC):
        type_name = ENVELOPE_TYPE if topic == TRACKING_TOPIC else WorkItem.DESCRIPTOR.full_name
        kinds: list[tuple[bytes, str]] = [
            (rng.randbytes(64), type_name),
            (good.SerializeToString()[:9], type_name),  # truncated
            (rng.randbytes(32), "vividly.v9.SomethingNew"),  # unknown type header
            (b"\x0a" + rng.randbytes(8) + b"x" * 900_000, type_name),  # oversized
        ]
        for value, header in kinds:
            p.produce(
                topic,
                value,
                f"poison-{round_no}".encode(),
                headers=[(H_TYPE, header.encode())],
                on_delivery=report,
            )
    p.flush(30)
    return written


# ---------------------------------------------------------------------------- faults
@dataclass
class Injector:
    stack: Stack
    rng: random.Random
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def inject(self, kind: str) -> None:
        say(f"fault: {kind}")
        getattr(self, kind)()
        self.counts[kind] += 1

    def kill_leader_broker(self) -> None:
        b = self.stack.leader_broker()
        b.kill()
        time.sleep(self.rng.uniform(2, 5))
        b.start(wait=True)

    def pause_broker(self) -> None:
        b = self.rng.choice(self.stack.brokers)
        assert b.managed is not None
        os.kill(b.managed.pid, signal.SIGSTOP)
        time.sleep(self.stack.settings.session_timeout_ms / 1000 + 2)
        os.kill(b.managed.pid, signal.SIGCONT)

    def kill_postgres(self) -> None:
        import psutil

        pg = self.stack.pg
        assert pg.managed is not None
        children = psutil.Process(pg.managed.pid).children()
        pg.managed.proc.kill()
        pg.managed.proc.wait(10)
        # Its backends notice the postmaster is gone and exit; the new one needs them gone.
        wait_for(
            "Postgres' backends to exit", lambda: not any(c.is_running() for c in children), 30
        )
        time.sleep(self.rng.uniform(0.5, 2))
        pg.start()

    def kill_service(self) -> None:
        """Every stage service, in a seeded order, each SIGKILLed at a random moment
        once the one before is back."""
        names = list(SERVICES)
        self.rng.shuffle(names)
        for name in names:
            time.sleep(self.rng.uniform(0.2, 1.5))
            self.stack.kill(name)
            wait_for(f"{name} restarted", lambda n=name: self.stack.running(n), 60)

    def kill_notify_mid_send(self) -> None:
        """Hold the SMTP sink's MAIL FROM: notify claims, then waits on the sink; kill it
        there (a claim in 'sending' and nothing sent), then let the sink go."""
        stack = self.stack
        stack.smtp_latency(30)
        try:
            wait_for("an email claimed and not yet sent", lambda: _sending(stack.pg.url), 60)
            stack.kill("notify")
        finally:
            stack.smtp_latency(0)
        wait_for("notify restarted", lambda: stack.running("notify"), 60)

    def kill_projector(self) -> None:
        name = self.rng.choice(PROJECTORS)
        self.stack.kill(name)
        wait_for(f"{name} restarted", lambda: self.stack.running(name), 60)

    def stack_down_up(self) -> None:
        stack, p = self.stack, self.stack.pipeline
        stack.supervising.clear()
        try:
            for name in [*PROJECTORS, "api", *SERVICES]:
                if name in p.procs:
                    p.procs[name].stop(30)
            # All brokers at once, as a machine going down does (one by one, the last
            # one waits out its controlled shutdown with no controller quorum left).
            stoppers = [threading.Thread(target=b.stop) for b in stack.brokers]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join(60)
            stack.pg.stop()
            for b in stack.brokers:
                b.start(wait=False)
            for b in stack.brokers:
                b.wait_ready()
            stack.pg.start()
        finally:
            stack.supervising.set()
        for name in [*SERVICES, *PROJECTORS, "api"]:
            wait_for(f"{name} back", lambda n=name: stack.running(n), 90)


def _sending(url: str) -> bool:
    async def go() -> bool:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM vividly.notifications WHERE status = 'sending'"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(go())


# ---------------------------------------------------------------------------- the checker
def read_log(bootstrap: str, topic: str) -> list[Any]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = c.list_topics(topic, 10)
        parts = sorted(meta.topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Any] = []
        pos = dict.fromkeys(parts, 0)
        deadline = time.monotonic() + 120
        while any(pos[p] < ends[p] for p in parts) and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                if m.error() is None:
                    out.append(m)
                    pos[m.partition() or 0] = (m.offset() or 0) + 1
        return out
    finally:
        c.close()


async def settle(url: str, accepted: set[str], timeout: float) -> int:
    """Wait until every accepted request is terminal in the read model; how many are."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM vividly_read.requests WHERE request_id = ANY($1::text[])"
                " AND status IN ('completed', 'failed')",
                list(accepted),
            )
            if done == len(accepted) or time.monotonic() > deadline:
                return int(done)
            await asyncio.sleep(1)
    finally:
        await conn.close()


async def caught_up(url: str, bootstrap: str) -> None:
    """Wait until the live read model's stored offsets reach the end of the log."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "check-watermarks"})
    try:
        meta = c.list_topics(TRACKING_TOPIC, 10)
        ends = {
            p: c.get_watermark_offsets(TopicPartition(TRACKING_TOPIC, p), 10)[1]
            for p in meta.topics[TRACKING_TOPIC].partitions
        }
    finally:
        c.close()
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT partition, next_offset FROM vividly_read.projector_offsets"
                " WHERE topic = $1",
                TRACKING_TOPIC,
            )
            stored = {r["partition"]: r["next_offset"] for r in rows}
            if all(stored.get(p, 0) >= e for p, e in ends.items()):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError("the projectors did not reach the end of the log")
    finally:
        await conn.close()


COMPARE = {
    "requests": "request_id",
    "request_stages": "request_id, stage, attempt",
    "stage_metrics_hour": "bucket, stage",
    "request_metrics_hour": "bucket",
    "status_counts": "organization_id, status",
    "breakers": "name",
    "quarantine": 'topic, partition, "offset"',
}


async def diverged(url: str, settings: Settings) -> dict[str, int]:
    """Rows of the live read model that differ from a from-scratch fold of the log."""
    from services.projector.runner import replay

    await replay(settings, url, "fault_check")
    conn = await asyncpg.connect(url)
    out: dict[str, int] = {}
    try:
        for table, order in COMPARE.items():
            cols = "*" if table != "quarantine" else 'topic, partition, "offset", reason'
            # A count that went up and down again is a row holding 0 in a fold that saw
            # the two moves in different batches, and no row in one that saw them
            # together: the same count.
            where = " WHERE n <> 0" if table == "status_counts" else ""
            live = await conn.fetch(
                f"SELECT {cols} FROM vividly_read.{table}{where} ORDER BY {order}"
            )
            fresh = await conn.fetch(
                f"SELECT {cols} FROM fault_check.{table}{where} ORDER BY {order}"
            )
            a = {_freeze(r) for r in live}
            b = {_freeze(r) for r in fresh}
            out[table] = len(a ^ b)
        cols = "event_id, request_id, event_type, stage, attempt, severity, message, data"
        a = {_freeze(r) for r in await conn.fetch(f"SELECT {cols} FROM vividly_read.events")}
        b = {_freeze(r) for r in await conn.fetch(f"SELECT {cols} FROM fault_check.events")}
        out["events"] = len(a ^ b)
    finally:
        await conn.close()
    return out


def _freeze(row: Any) -> tuple[Any, ...]:
    """A row as a comparable value: arrays as tuples, floats to 6 significant decimals
    (a sum folded in another order differs in its last bits, not in its value)."""
    out: list[Any] = []
    for v in row.values():
        if isinstance(v, list):
            v = tuple(v)
        elif isinstance(v, float):
            v = float(f"{v:.6e}")
        out.append(v)
    return tuple(out)


def check(
    stack: Stack, load: Load, sse: SseClient, poison: list[tuple[str, int, int]]
) -> dict[str, Any]:
    bootstrap, url = stack.bootstrap, stack.pg.url
    log = read_log(bootstrap, TRACKING_TOPIC)
    created: set[str] = set()
    terminal: dict[str, set[str]] = collections.defaultdict(set)
    outcome: dict[str, str] = {}
    completions: dict[tuple[str, str, int], set[str]] = collections.defaultdict(set)
    in_log: set[str] = set()
    for m in log:
        env = Envelope()
        try:
            env.ParseFromString(m.value() or b"")
        except Exception:
            continue
        in_log.add(env.event_id)
        kind = env.WhichOneof("event")
        if kind == "request_created":
            created.add(env.request_id)
        elif kind in ("request_completed", "request_failed"):
            terminal[env.request_id].add(env.event_id)
            outcome[env.request_id] = "content_ready" if kind == "request_completed" else "error"
        elif kind == "stage_completed":
            ev = env.stage_completed
            completions[(env.request_id, ev.stage, ev.attempt)].add(env.event_id)
    accepted = set(load.accepted)
    lost_requests = sorted(r for r in accepted if r not in created or not terminal.get(r))
    # Every outcome a stage ledger recorded (the outbox) is in the log.
    ledger_events = asyncio.run(_ledger_event_ids(url))
    lost_events = sorted(ledger_events - in_log)
    dup_terminal = sorted(r for r in accepted if len(terminal.get(r, ())) > 1)
    dup_stages = sorted(k for k, ids in completions.items() if len(ids) > 1)
    # Emails: one distinct Message-ID per outcome.
    ids: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for path in stack.pipeline.emails():
        msg = email.message_from_bytes(path.read_bytes())
        key = (str(msg["X-Vividly-Request-ID"]), str(msg["X-Vividly-Template"]))
        ids[key].add(str(msg["Message-ID"]))
    emails_not_one = sorted(r for r in accepted if len(ids.get((r, outcome.get(r, "?")), ())) != 1)
    # The SSE client: every seq after it connected, exactly once.
    seen = collections.Counter(sse.seqs)
    table = asyncio.run(_seqs_after(url, sse.first_live or 0))
    sse_missing = sorted(table - set(seen))
    sse_repeated = sorted(s for s, n in seen.items() if n > 1)
    # Poison: each in the DLQ (stage topics) or in quarantine (tracking.events).
    dlq = read_log(bootstrap, DLQ_TOPIC)
    dead = set()
    for m in dlq:
        h = {k: (v or b"").decode() for k, v in (m.headers() or [])}
        if "dlq-source-topic" in h:
            dead.add(
                (h["dlq-source-topic"], int(h["dlq-source-partition"]), int(h["dlq-source-offset"]))
            )
    quarantined = asyncio.run(_quarantined(url))
    unaccounted = [p for p in poison if p not in dead and p not in quarantined]
    div = asyncio.run(diverged(url, stack.settings))
    return {
        "requests_accepted": len(accepted),
        "requests_terminal_once": sum(1 for r in accepted if len(terminal.get(r, ())) == 1),
        "lost": len(lost_requests) + len(lost_events),
        "lost_requests": lost_requests[:10],
        "lost_events": lost_events[:10],
        "duplicated": len(dup_terminal) + len(dup_stages),
        "duplicated_examples": [*dup_terminal[:5], *map(str, dup_stages[:5])],
        "emails_not_one": len(emails_not_one),
        "emails_not_one_examples": emails_not_one[:10],
        "diverged": sum(div.values()),
        "diverged_by_table": div,
        "sse_frames": len(sse.seqs),
        "sse_reconnects": sse.reconnects,
        "sse_missing": len(sse_missing),
        "sse_missing_examples": sse_missing[:20],
        "sse_resumed_from": sse.resumed_from[:60],
        "sse_statuses": sse.statuses[:60],
        "sse_errors": sse.errors[:20],
        "sse_repeated": len(sse_repeated),
        "poison_written": len(poison),
        "poison_unaccounted": len(unaccounted),
        "poison_unaccounted_examples": unaccounted[:10],
        "tracking_events_in_log": len(log),
    }


async def _ledger_event_ids(url: str) -> set[str]:
    from vividly.runtime.stage import Recorded

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT outcome, output::text AS output, messages FROM vividly.stage_ledger"
        )
    finally:
        await conn.close()
    out = set()
    for r in rows:
        rec = Recorded.decode(r["outcome"], r["output"].encode(), r["messages"])
        for topic, _k, value, _h in rec.events:
            if topic == TRACKING_TOPIC:
                out.add(Envelope.FromString(value).event_id)
    return out


async def _seqs_after(url: str, first: int) -> set[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT seq FROM vividly_read.events WHERE seq > $1", first)
        return {r["seq"] for r in rows}
    finally:
        await conn.close()


async def _quarantined(url: str) -> set[tuple[str, int, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch('SELECT topic, partition, "offset" FROM vividly_read.quarantine')
        return {(r["topic"], r["partition"], r["offset"]) for r in rows}
    finally:
        await conn.close()


# ---------------------------------------------------------------------------- the run
def run(seed: int, minutes: float, rate: float, home: Path | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    home = home or Path(tempfile.mkdtemp(prefix="vividly-faults-"))
    os.environ.setdefault("VIVIDLY_PG_FAST", "")  # fsync on: Postgres is killed for real
    began = time.monotonic()
    say(f"starting a 3-broker cluster, Postgres and the pipeline in {home}")
    stack = Stack.start(home, job_seconds=1.0)
    load = Load(stack.pipeline.api_url, rate, seed)
    sse = SseClient(stack.pipeline.api_url)
    injector = Injector(stack, rng)
    poison: list[tuple[str, int, int]] = []
    try:
        sse.start()
        loader = threading.Thread(target=load.run, daemon=True)
        loader.start()
        # Every kind of fault at least once, in a seeded order, then random ones, spread
        # over the run; stack_down_up once, in the middle; poison three times.
        plan = list(FAULTS)
        rng.shuffle(plan)
        duration = minutes * 60
        spare = max(0, int(duration / 20) - len(plan) - 1)
        plan += [rng.choice(FAULTS) for _ in range(spare)]
        plan.insert(len(plan) // 2, "stack_down_up")
        gap = duration / (len(plan) + 1)
        for i, kind in enumerate(plan):
            time.sleep(rng.uniform(0.5, 1.0) * gap)
            if i in (0, len(plan) // 3, 2 * len(plan) // 3):
                poison += write_poison(stack.bootstrap, rng, i)
            injector.inject(kind)
        time.sleep(max(0.0, duration - (time.monotonic() - began)) if duration > 0 else 0)
        load.stop()
        loader.join(30)
        say(f"load stopped: {len(load.accepted)} accepted; settling")
        done = asyncio.run(settle(stack.pg.url, set(load.accepted), 240))
        say(f"{done} of {len(load.accepted)} terminal; waiting for the projectors")
        asyncio.run(caught_up(stack.pg.url, stack.bootstrap))
        wait_for("the SSE client to catch up", lambda: _sse_caught_up(stack.pg.url, sse), 30)
        sse.stop()
        result = check(stack, load, sse, poison)
        alive = {n: m.proc.poll() is None for n, m in stack.pipeline.procs.items()}
        result.update(
            {
                "seed": seed,
                "minutes": minutes,
                "faults_injected": dict(injector.counts),
                "faults_total": sum(injector.counts.values()),
                "max_refusal_window_s": round(load.max_refusal_window_s, 2),
                "submissions_refused": load.refusals,
                "consumers_alive": all(alive.values()),
                "restarts": {
                    n: w.restarts for n, w in stack.supervisor.watched.items() if w.restarts
                },
                "dead_processes": sorted(n for n, a in alive.items() if not a),
                "elapsed_s": round(time.monotonic() - began, 1),
            }
        )
        return result
    finally:
        load.stop()
        sse.stop()
        stack.stop()


def _sse_caught_up(url: str, sse: SseClient) -> bool:
    newest = asyncio.run(_max_seq(url))
    return bool(sse.seqs) and sse.seqs[-1] >= newest


async def _max_seq(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM vividly_read.events"))
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=4.0, help="submissions per second")
    args = p.parse_args(argv)
    result = run(args.seed, args.minutes, args.rate)
    print(json.dumps(result, default=str))
    bad = result["lost"] or result["duplicated"] or result["diverged"] or result["emails_not_one"]
    sys.exit(1 if bad or result["poison_unaccounted"] else 0)


if __name__ == "__main__":
    main()
