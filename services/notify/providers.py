"""Notification's external interface: SMTP (smtplib; the aiosmtpd sink locally)."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import Message
from typing import Protocol

from vividly.clients import ProviderError, classify
from vividly.config import Settings


class Mailer(Protocol):
    async def send(self, message: Message) -> None: ...


class SmtpMailer:
    def __init__(self, settings: Settings) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.timeout = settings.http_timeout_s

    async def send(self, message: Message) -> None:
        def deliver() -> None:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.send_message(message)

        try:
            await asyncio.to_thread(deliver)
        except smtplib.SMTPResponseException as exc:
            raise ProviderError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}",
                retryable=400 <= exc.smtp_code < 500,
                status=exc.smtp_code,
            ) from exc
        except Exception as exc:
            raise classify(exc, "SMTP") from exc


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
