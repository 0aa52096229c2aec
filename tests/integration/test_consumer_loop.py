"""The one consumer loop against real brokers: redelivery after SIGKILL, commits that
never pass an unfinished item, poison messages to the DLQ, SIGTERM drains."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker
from tests.integration.kafka_util import committed, headers_of, key_of, make_topics, read_topic
from vividly.config import Settings
from vividly.errors import PermanentError, RetryableError
from vividly.events import H_TYPE, WorkItem
from vividly.publish import KafkaPublisher, Outgoing
from vividly.runtime.bus import ConsumerLoop, Delivery

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def produce_items(settings: Settings, topic: str, ids: list[str]) -> None:
    pub = KafkaPublisher(settings, "feeder")
    for rid in ids:
        item = WorkItem(request_id=rid, correlation_id=f"c-{rid}", stage="validation", attempt=1)
        out = Outgoing.of(topic, rid, item, item.correlation_id)
        pub.publish(out.topic, out.key, out.value, out.headers)
    assert pub.close(30).ok


def journal_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def wait_until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Worker:
    def __init__(
        self,
        broker: Broker,
        group: str,
        src: str,
        dst: str,
        dlq: str,
        journal: Path,
        delay: float,
        max_in_flight: int,
    ) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "tests.integration.loop_worker",
            "--bootstrap",
            broker.bootstrap,
            "--group",
            group,
            "--input",
            src,
            "--output",
            dst,
            "--dlq",
            dlq,
            "--journal",
            str(journal),
            "--delay",
            str(delay),
            "--max-in-flight",
            str(max_in_flight),
        ]
        self.log = journal.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=out, stderr=out)
        return self.proc

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


@contextlib.contextmanager
def running(loop: ConsumerLoop, publisher: KafkaPublisher) -> Iterator[ConsumerLoop]:
    """Run ``loop`` on a thread of its own; stop, join and close on the way out."""
    runner = threading.Thread(target=lambda: asyncio.run(loop.run()), daemon=True)
    runner.start()
    try:
        yield loop
    finally:
        loop.stop()
        runner.join(30)
        publisher.close(5)
    assert not runner.is_alive(), "the loop did not stop"


def topics(settings: Settings, unique: str) -> tuple[str, str, str]:
    src, dst, dlq = f"in-{unique}", f"out-{unique}", f"dlq-{unique}"
    make_topics(settings, src, dst, dlq, partitions=3)
    return src, dst, dlq


def test_sigkill_mid_flight_loses_nothing(
    broker: Broker, unique: str, tmp_path: Path, workers: list[Worker]
) -> None:
    settings = broker.settings()
    src, dst, dlq = topics(settings, unique)
    ids = [f"r{i:03d}" for i in range(120)]
    produce_items(settings, src, ids)
    journal = tmp_path / "journal.txt"
    first = Worker(broker, f"g-{unique}", src, dst, dlq, journal, delay=0.5, max_in_flight=24)
    workers.append(first)
    proc = first.start()

    def busy_after_30() -> bool:
        lines = journal_lines(journal)
        done = sum(1 for j in lines if j[0] == "done")
        return done >= 30 and sum(1 for j in lines if j[0] == "start") > done + 5

    wait_until(busy_after_30, 90, "the first worker to finish 30 items with more in flight")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    lines = journal_lines(journal)
    started = {j[1] for j in lines if j[0] == "start"}
    finished = {j[1] for j in lines if j[0] == "done"}
    in_flight = started - finished
    assert in_flight, "the kill should have caught items in flight"

    second = Worker(broker, f"g-{unique}", src, dst, dlq, journal, delay=0.05, max_in_flight=24)
    workers.append(second)
    second_proc = second.start()
    out = read_topic(settings, dst, lambda got: {key_of(m) for m in got} >= set(ids), timeout=120)
    assert {key_of(m) for m in out} >= set(ids), "every input has an output"
    later = {
        j[1] for j in journal_lines(journal) if j[0] == "start" and j[2] == str(second_proc.pid)
    }
    assert in_flight <= later, "what was in flight at the kill was redelivered"


def test_commits_never_pass_an_unfinished_item(broker: Broker, unique: str) -> None:
    settings = broker.settings(commit_interval_s=0.05)
    src, dst, dlq = topics(settings, unique)
    make_topics(settings, src + "-1p", partitions=1)
    src = src + "-1p"
    ids = [f"r{i:02d}" for i in range(20)]
    produce_items(settings, src, ids)
    release = threading.Event()
    finished: list[str] = []

    async def handle(_d: Delivery, item: WorkItem) -> list[Outgoing]:
        if item.request_id == "r04":
            while not release.is_set():
                await asyncio.sleep(0.01)
        finished.append(item.request_id)
        return [Outgoing.of(dst, item.request_id, item)]

    group = f"g-{unique}"
    loop_pub = KafkaPublisher(settings, "commit-test")
    loop = ConsumerLoop(
        settings=settings,
        group_id=group,
        topics=[src],
        publisher=loop_pub,
        handlers={WorkItem: handle},
        dlq_topic=dlq,
        max_in_flight=50,
        topic_partitions={src: 1, dlq: 3},
    )
    try:
        with running(loop, loop_pub):
            wait_until(lambda: len(finished) == 19, 60, "19 of 20 items to finish")
            time.sleep(1.0)  # many commit intervals
            assert committed(settings, group, src, 1)[0] == 4, "stopped at the unfinished r04"
            release.set()
            wait_until(
                lambda: committed(settings, group, src, 1)[0] == 20,
                30,
                "the commit to reach the end once r04 finished",
            )
    finally:
        release.set()


def test_poison_messages_go_to_the_dlq_with_the_reason_and_the_loop_goes_on(
    broker: Broker, unique: str
) -> None:
    settings = broker.settings(stage_max_attempts=2)
    src, dst, dlq = topics(settings, unique)
    pub = KafkaPublisher(settings, "poison-feeder")

    def send_item(rid: str) -> None:
        o = Outgoing.of(src, rid, WorkItem(request_id=rid, stage="validation"))
        pub.publish(o.topic, o.key, o.value, o.headers)

    send_item("good-1")
    pub.publish(src, b"garbage", b"\xff\xff\xff\xff\x0f", [(H_TYPE, b"vividly.v1.WorkItem")])
    send_item("good-2")
    send_item("explode")
    send_item("flaky")
    pub.publish(src, b"alien", b"{}", [(H_TYPE, b"acme.Order")])
    send_item("good-3")
    assert pub.close(30).ok
    calls: dict[str, int] = {}

    async def handle(_d: Delivery, item: WorkItem) -> list[Outgoing]:
        calls[item.request_id] = calls.get(item.request_id, 0) + 1
        if item.request_id == "explode":
            raise PermanentError("script too long")
        if item.request_id == "flaky":
            raise RetryableError("503 from upstream")
        return [Outgoing.of(dst, item.request_id, item)]

    loop_pub = KafkaPublisher(settings, "poison")
    loop = ConsumerLoop(
        settings=settings,
        group_id=f"g-{unique}",
        topics=[src],
        publisher=loop_pub,
        handlers={WorkItem: handle},
        dlq_topic=dlq,
        topic_partitions={src: 3, dlq: 3},
    )
    with running(loop, loop_pub):
        out = read_topic(settings, dst, lambda got: len(got) >= 3)
        dead = read_topic(settings, dlq, lambda got: len(got) >= 4)
    assert sorted(key_of(m) for m in out) == ["good-1", "good-2", "good-3"]
    reasons = {key_of(m): headers_of(m) for m in dead}
    assert set(reasons) == {"garbage", "explode", "flaky", "alien"}
    assert reasons["garbage"]["dlq-reason"] == b"decode_error"
    assert reasons["explode"]["dlq-reason"] == b"handler_error"
    assert b"PermanentError: script too long" in reasons["explode"]["dlq-detail"]
    assert reasons["flaky"]["dlq-reason"] == b"retries_exhausted"
    assert reasons["alien"]["dlq-reason"] == b"decode_error"
    assert b"acme.Order" in reasons["alien"]["dlq-detail"]
    assert reasons["garbage"]["dlq-source-topic"] == src.encode()
    assert calls["flaky"] == 2  # stage_max_attempts: the one attempts setting
    # The dead-lettered original bytes are kept as they were.
    garbage = next(m for m in dead if m.key() == b"garbage")
    assert garbage.value() == b"\xff\xff\xff\xff\x0f"
    assert loop.stats.dead_lettered == 4


def test_sigterm_drains_in_flight_work_and_commits(
    broker: Broker, unique: str, tmp_path: Path, workers: list[Worker]
) -> None:
    settings = broker.settings()
    src, dst, dlq = topics(settings, unique)
    ids = [f"r{i:02d}" for i in range(12)]
    produce_items(settings, src, ids)
    journal = tmp_path / "journal.txt"
    group = f"g-{unique}"
    w = Worker(broker, group, src, dst, dlq, journal, delay=2.0, max_in_flight=12)
    workers.append(w)
    proc = w.start()
    wait_until(
        lambda: sum(1 for j in journal_lines(journal) if j[0] == "start") == 12,
        60,
        "all 12 items to be in flight",
    )
    assert not any(j[0] == "done" for j in journal_lines(journal))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    lines = journal_lines(journal)
    assert sum(1 for j in lines if j[0] == "done") == 12, "in-flight work was finished"
    assert lines[-1][0] == "exit"
    assert lines[-1][3] == "ok=True"
    offsets = committed(settings, group, src, 3)
    assert sum(max(o, 0) for o in offsets.values()) == 12, offsets
    out = read_topic(settings, dst, lambda got: len(got) >= 12)
    assert sorted(key_of(m) for m in out) == ids


def test_a_closed_gate_holds_partitions_assigned_after_the_pause(
    broker: Broker, unique: str
) -> None:
    """The breaker opened before the group assigned anything: the partitions that arrive
    later must be held too, until the gate opens (no item handled while it is closed)."""
    settings = broker.settings()
    src, _dst, dlq = topics(settings, unique)
    ids = [f"r{i:02d}" for i in range(12)]
    produce_items(settings, src, ids)
    gate_open = threading.Event()
    held: list[str] = []
    control: list[str] = []

    def loop_for(group: str, seen: list[str], gates: list[object]) -> tuple[ConsumerLoop, Any]:
        async def handle(_d: Delivery, item: WorkItem) -> list[Outgoing]:
            seen.append(item.request_id)
            return []

        pub = KafkaPublisher(settings, group)
        loop = ConsumerLoop(
            settings=settings,
            group_id=group,
            topics=[src],
            publisher=pub,
            handlers={WorkItem: handle},
            gates=gates,  # type: ignore[arg-type]
            dlq_topic=dlq,
        )
        return loop, pub

    gated, gated_pub = loop_for(f"g-held-{unique}", held, [gate_open.is_set])
    free, free_pub = loop_for(f"g-free-{unique}", control, [])
    with running(gated, gated_pub), running(free, free_pub):
        assert gated.ready.wait(60), "the gated loop got its partitions"
        # The control group reads the same items: they are there to be fetched.
        wait_until(lambda: sorted(control) == ids, 60, "the control loop to handle all")
        assert held == [], "nothing is taken while the gate is closed"
        gate_open.set()
        wait_until(lambda: sorted(held) == ids, 60, "the held items once the gate opens")


def test_a_failed_delivery_is_never_committed_and_stops_the_loop(
    broker: Broker, unique: str
) -> None:
    """A tracking event that cannot be delivered (its topic does not exist): the input's
    offset is not committed, and the loop stops so the input is redelivered."""
    from vividly.publish import DeliveryFailed
    from vividly.tracker import RequestTracker

    settings = broker.settings(delivery_timeout_ms=1500, commit_interval_s=0.05)
    src, dst, dlq = topics(settings, unique)
    make_topics(settings, src + "-1p", partitions=1)
    src = src + "-1p"
    produce_items(settings, src, ["r0", "r1", "r2"])
    pub = KafkaPublisher(settings, "delivery-test")
    tracker = RequestTracker(pub, topic=f"no-such-topic-{unique}")  # auto-create is off
    handled: list[str] = []

    async def handle(_d: Delivery, item: WorkItem) -> list[Outgoing]:
        handled.append(item.request_id)
        if item.request_id == "r1":
            tracker.log_event(item.request_id, "x", "an event that is never delivered")
        return [Outgoing.of(dst, item.request_id, item)]

    group = f"g-{unique}"
    loop = ConsumerLoop(
        settings=settings,
        group_id=group,
        topics=[src],
        publisher=pub,
        handlers={WorkItem: handle},
        dlq_topic=dlq,
        max_in_flight=1,
        topic_partitions={src: 1, dst: 3, dlq: 3},
    )
    with pytest.raises(DeliveryFailed):
        asyncio.run(loop.run())
    pub.close(5)
    assert handled[:2] == ["r0", "r1"]
    assert committed(settings, group, src, 1)[0] <= 1, "never past the input whose event failed"
    out = read_topic(settings, dst, lambda got: len(got) >= 1, timeout=15)
    assert [key_of(m) for m in out] == ["r0"], "r1's output was not sent ahead of its events"


def test_an_output_that_cannot_be_delivered_stops_the_loop_without_committing_it(
    broker: Broker, unique: str
) -> None:
    from vividly.publish import DeliveryFailed

    settings = broker.settings(delivery_timeout_ms=1500, commit_interval_s=0.05)
    src, _dst, dlq = topics(settings, unique)
    make_topics(settings, src + "-1p", partitions=1)
    src = src + "-1p"
    produce_items(settings, src, ["r0", "r1"])
    missing = f"no-such-output-{unique}"  # auto-create is off: the delivery fails

    async def handle(_d: Delivery, item: WorkItem) -> list[Outgoing]:
        return [Outgoing.of(missing, item.request_id, item)]

    group = f"g-{unique}"
    pub = KafkaPublisher(settings, "output-test")
    loop = ConsumerLoop(
        settings=settings,
        group_id=group,
        topics=[src],
        publisher=pub,
        handlers={WorkItem: handle},
        dlq_topic=dlq,
        max_in_flight=1,
        topic_partitions={src: 1, dlq: 3},
    )
    with pytest.raises(DeliveryFailed, match=missing):
        asyncio.run(loop.run())
    pub.close(5)
    assert committed(settings, group, src, 1)[0] < 1, "r0 is redelivered after the restart"
