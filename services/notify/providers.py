"""Notification's external interface: SMTP (smtplib; the aiosmtpd sink locally)."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import threading
import time
from email.message import Message
from typing import Protocol

from vividly import tracing
from vividly.config import Settings
from vividly.errors import ProviderError, classify


class Mailer(Protocol):
    async def send(self, message: Message) -> None: ...


class SmtpMailer:
    """smtplib over a few kept-open connections (like any mail relay client): a send is
    MAIL/RCPT/DATA on an idle connection, not a new TCP connection, EHLO and QUIT.

    A kept connection the server has dropped (idle timeout, restart) fails at MAIL FROM,
    before anything is sent: the send is then retried once on a new connection.
    Connections idle longer than ``max_idle_s`` are closed rather than reused.
    """

    def __init__(self, settings: Settings, pool_size: int = 4, max_idle_s: float = 30.0) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.timeout = settings.http_timeout_s
        self.pool_size = pool_size
        self.max_idle_s = max_idle_s
        self._idle: list[tuple[smtplib.SMTP, float]] = []
        self._lock = threading.Lock()
        self.connections_opened = 0

    def _take(self) -> tuple[smtplib.SMTP, bool]:
        """A connection, and whether it was kept from an earlier send."""
        now = time.monotonic()
        with self._lock:
            while self._idle:
                smtp, since = self._idle.pop()
                if now - since <= self.max_idle_s:
                    return smtp, True
                _quietly_close(smtp)
        return self._open(), False

    def _open(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with self._lock:  # sends run on several threads
            self.connections_opened += 1
        return smtp

    def _give_back(self, smtp: smtplib.SMTP) -> None:
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append((smtp, time.monotonic()))
                return
        _quietly_close(smtp)

    def _deliver(self, message: Message) -> None:
        smtp, kept = self._take()
        try:
            smtp.send_message(message)
        except smtplib.SMTPServerDisconnected:
            _quietly_close(smtp)
            if not kept:
                raise
            smtp = self._open()
            try:
                smtp.send_message(message)
            except BaseException:
                _quietly_close(smtp)
                raise
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException):
            # The connection is fine; only this message was refused.
            self._reset_and_give_back(smtp)
            raise
        except BaseException:
            _quietly_close(smtp)
            raise
        self._give_back(smtp)

    def _reset_and_give_back(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            _quietly_close(smtp)
            return
        self._give_back(smtp)

    async def send(self, message: Message) -> None:
        # smtplib has no OpenTelemetry instrumentation: the client span is our own, named
        # and attributed like the conventions' other client calls.
        with tracing.client_span(
            "smtp send",
            {
                "server.address": self.host,
                "server.port": self.port,
                "network.protocol.name": "smtp",
                "vividly.recipients": len(message.get_all("To", [])),
            },
        ) as span:
            try:
                await self._send(message)
            except ProviderError as exc:
                if span is not None:
                    span.set_status(tracing.error_status(exc))
                    if exc.status is not None:
                        span.set_attribute("smtp.response.status_code", exc.status)
                raise

    async def _send(self, message: Message) -> None:
        try:
            await asyncio.to_thread(self._deliver, message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise ProviderError(
                f"SMTP refused {', '.join(exc.recipients)}: {codes}",
                retryable=all(400 <= c < 500 for c in codes),
                status=max(codes, default=None),
            ) from exc
        except smtplib.SMTPResponseException as exc:
            raise ProviderError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}",
                retryable=400 <= exc.smtp_code < 500,
                status=exc.smtp_code,
            ) from exc
        except Exception as exc:
            raise classify(exc, "SMTP") from exc

    async def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for smtp, _ in idle:
            await asyncio.to_thread(_quit, smtp)


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        _quietly_close(smtp)


def _quietly_close(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        smtp.close()


class MemoryMailer:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def send(self, message: Message) -> None:
        self.sent.append(message)


class NullMailer:
    """Counts messages and keeps none (the framework benchmark)."""

    def __init__(self) -> None:
        self.count = 0

    async def send(self, message: Message) -> None:
        self.count += 1
