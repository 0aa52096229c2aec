"""Clients for the external APIs, built from settings, and how their errors classify.

Every provider wraps failures in :class:`ProviderError`, whose ``is_retryable`` says
whether trying again can help (timeouts, connection errors, 429 and 5xx) or not (other
4xx). Non-retryable errors do not count against a circuit breaker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vividly.config import Settings


class ProviderError(Exception):
    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.is_retryable = retryable
        self.status = status
        self.details = {"status_code": status, **(details or {})}


def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def classify(exc: BaseException, what: str) -> ProviderError:
    """Turn any client exception into a ProviderError with the right retryability."""
    if isinstance(exc, ProviderError):
        return exc
    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(code, int) and 100 <= code < 600:
        return ProviderError(
            f"{what}: HTTP {code}: {exc}", retryable=retryable_status(code), status=code
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionError | OSError):
        return ProviderError(f"{what}: {type(exc).__name__}: {exc}", retryable=True)
    module = type(exc).__module__
    if module.startswith(("httpx", "aiohttp", "httpcore")):
        return ProviderError(f"{what}: {type(exc).__name__}: {exc}", retryable=True)
    return ProviderError(f"{what}: {type(exc).__name__}: {exc}", retryable=False)


def genai_client(settings: Settings) -> Any:
    """A google-genai Client pointed at ``VIVIDLY_GEMINI_BASE_URL`` (the local emulator
    by default; a real key and URL work unchanged). The SDK's own retries are off: the
    stage runner owns retries, so each attempt is tracked."""
    from google import genai
    from google.genai import types

    return genai.Client(
        api_key=settings.gemini_api_key,
        http_options=types.HttpOptions(
            base_url=settings.gemini_base_url,
            timeout=int(settings.http_timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
