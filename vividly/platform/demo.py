"""``vividly demo``: submit N varied requests and watch them go through the stages live."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from google.protobuf.message import DecodeError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vividly.config import STAGES, TRACKING_TOPIC, Settings
from vividly.events import decode_envelope
from vividly.publish import KafkaPublisher
from vividly.submit import submit_request
from vividly.tracker import RequestTracker

DEMO_REQUESTS: list[tuple[str, str]] = [
    ("Photosynthesis", "Explain how plants turn light into chemical energy"),
    ("Volcanoes", "Describe how volcanoes form at plate boundaries"),
    ("Fractions", "Add fractions with unlike denominators"),
    ("The water cycle", "Trace a water molecule through the water cycle"),
    ("Newton's laws of motion", "Apply F = ma to everyday examples"),
    ("Electric circuits", "Compare series and parallel circuits"),
    ("Ancient Egypt", "Explain why the Nile mattered to Egyptian farming"),
    ("DNA and genetics", "Describe how genes code for proteins"),
    ("The solar system", "Compare the inner and outer planets"),
    ("Chemical reactions", "Recognise the signs of a chemical reaction"),
    ("Pythagorean theorem", "Find a missing side of a right triangle"),
    ("Ecosystems and food webs", "Explain how energy moves through a food web"),
    ("Cell structure", "Compare plant and animal cells"),
    ("Weather and climate", "Tell weather apart from climate"),
    ("Plate tectonics", "Explain what happens at each kind of plate boundary"),
    ("The American Revolution", "Explain the causes of the American Revolution"),
    ("Human digestive system", "Follow food from the mouth to the large intestine"),
]


def _tail_consumer(settings: Settings) -> Consumer:
    """A consumer positioned at the current end of tracking.events (no group join wait)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"vividly-demo-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(TRACKING_TOPIC, timeout=10)
    parts = meta.topics[TRACKING_TOPIC].partitions
    consumer.assign([TopicPartition(TRACKING_TOPIC, p, OFFSET_END) for p in parts])
    # Make sure the positions are resolved before anything is submitted.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        consumer.consume(10, 0.1)
        if all(tp.offset >= 0 for tp in consumer.position(consumer.assignment())):
            break
    return consumer


def run_demo(settings: Settings, count: int, timeout: float, console: Console) -> int:
    if count < 1:
        console.print("[red]--count must be at least 1[/]")
        return 2
    consumer = _tail_consumer(settings)
    publisher = KafkaPublisher(settings, "vividly-demo")
    tracker = RequestTracker(publisher, producer="demo")
    rng = random.Random()
    ids: set[str] = set()
    for i in range(count):
        topic, objective = DEMO_REQUESTS[i % len(DEMO_REQUESTS)]
        rid, _ = submit_request(
            tracker,
            publisher,
            student_id=f"demo-student-{i % 7}",
            topic=topic,
            learning_objective=objective,
            grade_level=str(rng.randint(3, 12)),
            duration_minutes=rng.choice((1, 2, 3, 5)),
            organization_id="org-demo",
            metadata={"source": "demo"},
        )
        ids.add(rid)
    if not publisher.flush(30).ok:
        console.print("[red]Could not deliver the requests; is the stack up (vividly status)?[/]")
        return 1
    outcome: dict[str, str] = {}
    waiting: set[str] = set()
    outputs: dict[str, Any] = {}
    started = time.monotonic()
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        tasks = {s: progress.add_task(s, total=count, note="") for s in STAGES}
        overall = progress.add_task("[bold]requests finished", total=count, note="")
        in_stage = dict.fromkeys(STAGES, 0)
        while len(outcome) < count and time.monotonic() - started < timeout:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is not None:
                    continue
                try:
                    env = decode_envelope(msg.value() or b"")
                except DecodeError:  # poison in the log: the projector quarantines it
                    continue
                rid = env.request_id
                if rid not in ids:
                    continue
                kind = env.WhichOneof("event")
                if kind == "stage_started":
                    in_stage[env.stage_started.stage] += 1
                elif kind == "stage_completed":
                    st = env.stage_completed.stage
                    in_stage[st] = max(0, in_stage[st] - 1)
                    progress.advance(tasks[st])
                    waiting.discard(rid)
                elif kind == "stage_failed":
                    st = env.stage_failed.stage
                    in_stage[st] = max(0, in_stage[st] - 1)
                elif kind == "request_waiting":
                    waiting.add(rid)
                elif kind in ("request_completed", "request_failed") and rid not in outcome:
                    outcome[rid] = kind
                    outputs[rid] = getattr(env, kind)
                    progress.advance(overall)
            for s in STAGES:
                progress.update(tasks[s], note=f"{in_stage[s]} running" if in_stage[s] else "")
            failed = sum(1 for o in outcome.values() if o == "request_failed")
            progress.update(
                overall,
                note=(f"{failed} failed " if failed else "")
                + (f"{len(waiting)} waiting (circuit open)" if waiting else ""),
            )
    consumer.close()
    publisher.close(5)
    done = sum(1 for o in outcome.values() if o == "request_completed")
    failed = sum(1 for o in outcome.values() if o == "request_failed")
    console.print(
        f"{done} completed, {failed} failed, {count - len(outcome)} unfinished "
        f"in {time.monotonic() - started:.1f}s"
    )
    sample = next((o for o in outputs.values() if getattr(o, "video_url", "")), None)
    if sample is not None:
        console.print(
            f"videos:     {sample.video_url.rsplit('/', 1)[0]}/<request_id>.mp4"
            f"  (e.g. {sample.video_url})"
        )
        console.print(f"thumbnails: {sample.thumbnail_url.rsplit('/', 1)[0]}/<request_id>.jpg")
    from vividly.platform.stack import StackState

    mail = (StackState(settings.home.resolve()).read() or {}).get("mail_dir")
    if mail:
        console.print(f"emails:     {mail}/*.eml")
    return 0 if len(outcome) == count else 1
