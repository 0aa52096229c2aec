"""Notification: the student's content_ready email, or the error email for a failed
request; one email per outcome of a request, however often a message is redelivered."""

from __future__ import annotations

import asyncio
import logging
import time
from email.charset import QP, Charset
from email.message import Message
from email.mime.text import MIMEText
from email.utils import formatdate
from typing import Any, Protocol, cast

from pybreaker import CircuitBreaker

from services.notify.providers import Mailer
from vividly.breakers import guarded
from vividly.events import WorkItem
from vividly.publish import Outgoing
from vividly.runtime.bus import Delivery
from vividly.runtime.stage import Cancelled, StageContext, StageRunner
from vividly.tracker import RequestTracker

log = logging.getLogger("vividly.notify")


class SendLedger(Protocol):
    async def claim(self, request_id: str, kind: str, message_id: str, recipient: str) -> str:
        """ "send" (send it now), "sent" (it was) or "busy" (another sender holds it)."""
        ...

    async def mark_sent(self, request_id: str, kind: str) -> None: ...

    async def release(self, request_id: str, kind: str) -> None: ...


class MemorySendLedger:
    """The in-memory :class:`SendLedger`: a claim is busy until marked sent or released,
    or until ``lease_s`` has passed (its sender is taken to be dead)."""

    def __init__(self, lease_s: float = 60.0, clock: Any = time.monotonic) -> None:
        self.rows: dict[tuple[str, str], tuple[str, float]] = {}
        self.lease_s = lease_s
        self.clock = clock

    async def claim(self, request_id: str, kind: str, message_id: str, recipient: str) -> str:
        key = (request_id, kind)
        now = self.clock()
        row = self.rows.get(key)
        if row is not None:
            if row[0] == "sent":
                return "sent"
            if now - row[1] < self.lease_s:
                return "busy"
        self.rows[key] = ("sending", now)
        return "send"

    async def mark_sent(self, request_id: str, kind: str) -> None:
        self.rows[(request_id, kind)] = ("sent", self.clock())

    async def release(self, request_id: str, kind: str) -> None:
        if self.rows.get((request_id, kind), ("",))[0] == "sending":
            del self.rows[(request_id, kind)]


def recipient(item: WorkItem) -> str:
    return item.request.student_email or f"{item.request.student_id}@students.vividly.local"


def compose(
    item: WorkItem,
    kind: str,
    sender: str,
    video_url: str = "",
    thumbnail_url: str = "",
    error: str = "",
) -> Message:
    """The email for one outcome. (compat32 MIMEText: the modern EmailMessage re-parses
    every header it is given, at about ten times the cost.)"""
    topic = item.request.topic
    if kind == "content_ready":
        subject = f"Your video on {topic} is ready"
        body = (
            f"Hi!\n\nYour video on {topic} is ready to watch:\n{video_url}\n\n"
            f"Thumbnail: {thumbnail_url}\n\nHappy learning,\nVividly\n"
        )
    else:
        subject = f"We couldn't make your video on {topic}"
        body = (
            f"Hi!\n\nSorry: we could not make your video on {topic}.\n"
            f"What went wrong: {error}\n\nYou can submit the request again, or ask your "
            "teacher to retry it from the dashboard.\n\nVividly\n"
        )
    charset = Charset("utf-8")
    charset.body_encoding = QP  # readable .eml files, not base64
    msg = MIMEText(body, "plain", cast(Any, charset))  # typeshed says str; Charset works
    msg["From"] = sender
    msg["To"] = recipient(item)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{item.request_id}.{kind}@vividly.edu>"
    msg["X-Correlation-ID"] = item.correlation_id
    msg["X-Vividly-Request-ID"] = item.request_id
    msg["X-Vividly-Template"] = kind
    msg["Subject"] = subject
    return msg


class Notifier:
    def __init__(
        self,
        mailer: Mailer,
        ledger: SendLedger,
        sender: str,
        breaker: CircuitBreaker,
        claim_poll_s: float = 0.5,
    ) -> None:
        self.mailer = mailer
        self.breaker = breaker  # SMTP's: the notification Stage pauses input while open
        self.ledger = ledger
        self.sender = sender
        self.claim_poll_s = claim_poll_s

    async def send_once(
        self, item: WorkItem, kind: str, msg: Message, ctx: StageContext | None = None
    ) -> bool:
        """Send unless this outcome's email was already sent; True if sent now.

        A claim another sender holds is waited on: either it is marked sent (nothing to
        do), or its lease runs out because that sender died between claiming and
        recording the send, and this one sends (under the same Message-ID, so a resend
        after a crash between the server's acceptance and our record is one email)."""
        waited = False
        while True:
            state = await self.ledger.claim(
                item.request_id, kind, str(msg["Message-ID"]), str(msg["To"])
            )
            if state == "sent":
                return False
            if state == "send":
                break
            if not waited:
                log.info(
                    "email claimed by another sender; waiting for it to be sent or its lease",
                    extra={"kind": kind},
                )
                waited = True
            await asyncio.sleep(self.claim_poll_s)
        try:
            send = lambda: self.mailer.send(msg)  # noqa: E731
            await (ctx.guarded(self.breaker, send) if ctx else guarded(self.breaker, send))
        except BaseException:
            await self.ledger.release(item.request_id, kind)
            raise
        await self.ledger.mark_sent(item.request_id, kind)
        return True

    async def content_ready(self, item: WorkItem, ctx: StageContext) -> dict[str, Any]:
        if await ctx.is_cancelled():  # the last look before the email goes
            raise Cancelled("the request was cancelled before its email was sent")
        vp = ctx.output_of("video_processing")
        msg = compose(
            item, "content_ready", self.sender, vp.get("cdn_url", ""), vp.get("thumbnail_url", "")
        )
        sent = await self.send_once(item, "content_ready", msg, ctx)
        if sent:
            ctx.log(
                "notification_sent",
                "Email sent to student",
                data={"template": "content_ready", "to": str(msg["To"])},
            )
        else:
            ctx.log("notification_skipped", "content_ready email was already sent")
        return {
            "template": "content_ready",
            "recipient": str(msg["To"]),
            "message_id": str(msg["Message-ID"]),
            "sent_now": sent,
        }


class NotifyHandler:
    """Normal items run the notification stage; failure items send the error email."""

    def __init__(
        self, runner: StageRunner, notifier: Notifier, tracker: RequestTracker, sender: str
    ) -> None:
        self.runner = runner
        self.notifier = notifier
        self.tracker = tracker
        self.sender = sender

    async def __call__(self, delivery: Delivery, item: WorkItem) -> list[Outgoing]:
        if not item.HasField("failure"):
            return await self.runner(delivery, item)
        msg = compose(item, "error", self.sender, error=item.failure.error_message)
        sent = await self.notifier.send_once(item, "error", msg)
        self.tracker.log_event(
            item.request_id,
            "error_notification_sent" if sent else "error_notification_skipped",
            f"Error email {'sent' if sent else 'was already sent'} to student",
            severity="info",
            event_data={"failed_stage": item.failure.stage},
        )
        return []


def completer(tracker: RequestTracker) -> Any:
    async def complete(item: WorkItem) -> None:
        import orjson

        vp = orjson.loads(item.outputs_json.get("video_processing") or b"{}")
        sg = orjson.loads(item.outputs_json.get("script_generation") or b"{}")
        tracker.complete_request(
            item.request_id,
            video_url=vp.get("cdn_url", ""),
            script_text=sg.get("script", ""),
            thumbnail_url=vp.get("thumbnail_url", ""),
        )

    return complete
