"""One email per outcome of a request, whatever is redelivered."""

from __future__ import annotations

import asyncio
from email.message import Message

import orjson

from services.notify.handlers import MemorySendLedger, Notifier, NotifyHandler
from services.notify.providers import MemoryMailer
from vividly.breakers import smtp_breaker
from vividly.config import Settings
from vividly.events import MessageHeaders, WorkItem
from vividly.runtime.bus import Delivery
from vividly.runtime.stage import MemoryLedger, Stage, StageRunner
from vividly.testing import FakePublisher
from vividly.tracker import RequestTracker

D = Delivery("requests.rendered", 0, 1, b"r", MessageHeaders.parse(None), 0)


def body(msg: Message) -> str:
    raw = msg.get_payload(decode=True)
    assert isinstance(raw, bytes)
    return raw.decode()


def setup() -> tuple[NotifyHandler, MemoryMailer, FakePublisher]:
    pub = FakePublisher()
    tracker = RequestTracker(pub)
    mailer = MemoryMailer()
    notifier = Notifier(mailer, MemorySendLedger(), "Vividly <noreply@vividly.edu>", smtp_breaker)
    runner = StageRunner(
        tracker=tracker,
        settings=Settings(),
        input_topic="requests.rendered",
        next_topic=None,
        ledger=MemoryLedger(),
        stages=[Stage("notification", notifier.content_ready, breakers=(notifier.breaker,))],
    )
    return NotifyHandler(runner, notifier, tracker, "x"), mailer, pub


def ready_item() -> WorkItem:
    w = WorkItem(request_id="r1", correlation_id="c1", stage="notification", attempt=1)
    w.request.topic = "Volcanoes"
    w.request.student_id = "stu-1"
    w.outputs_json["video_processing"] = orjson.dumps(
        {"cdn_url": "http://cdn/r1.mp4", "thumbnail_url": "http://cdn/r1.jpg"}
    )
    return w


def test_content_ready_email_is_sent_once_across_redeliveries() -> None:
    handler, mailer, _ = setup()
    for _ in range(3):
        asyncio.run(handler(D, ready_item()))
    assert len(mailer.sent) == 1
    msg = mailer.sent[0]
    assert msg["To"] == "stu-1@students.vividly.local"
    assert msg["Subject"] == "Your video on Volcanoes is ready"
    assert msg["Message-ID"] == "<r1.content_ready@vividly.edu>"
    assert "http://cdn/r1.mp4" in body(msg)


def test_a_failure_item_sends_the_error_email_once_and_runs_no_stage() -> None:
    handler, mailer, pub = setup()
    w = ready_item()
    w.failure.stage = "video_generation"
    w.failure.error_message = "Video generation failed: corrupt frame"
    for _ in range(2):
        assert asyncio.run(handler(D, w)) == []
    assert [m["X-Vividly-Template"] for m in mailer.sent] == ["error"]
    assert "corrupt frame" in body(mailer.sent[0])
    kinds = [m.envelope().WhichOneof("event") for m in pub.messages]
    assert "stage_started" not in kinds
    logged = [m.envelope().event_logged.event_type for m in pub.messages]
    assert logged == ["error_notification_sent", "error_notification_skipped"]


def test_a_claim_left_by_a_sender_that_died_before_sending_is_taken_after_its_lease() -> None:
    """notify killed between claiming the email and sending it: the redelivered item must
    not see the claim as "sent"; it waits out the lease, then sends, same Message-ID."""
    now = [0.0]
    ledger = MemorySendLedger(lease_s=60.0, clock=lambda: now[0])
    mailer = MemoryMailer()
    notifier = Notifier(mailer, ledger, "x", smtp_breaker, claim_poll_s=0.001)
    item = ready_item()
    # The process that died: it claimed, and never sent or released.
    assert asyncio.run(ledger.claim("r1", "content_ready", "<r1.content_ready@vividly.edu>", "a"))

    async def redelivered() -> bool:
        from services.notify.handlers import compose

        task = asyncio.create_task(
            notifier.send_once(item, "content_ready", compose(item, "content_ready", "x"))
        )
        for _ in range(50):
            await asyncio.sleep(0.002)
        assert not task.done(), "a young claim is waited on, not taken and not skipped"
        assert mailer.sent == []
        now[0] = 61.0  # the dead sender's lease runs out
        return await task

    assert asyncio.run(redelivered()) is True
    assert [m["Message-ID"] for m in mailer.sent] == ["<r1.content_ready@vividly.edu>"]
    assert ledger.rows[("r1", "content_ready")][0] == "sent"
