"""Clients for the external APIs, built from settings. (How their failures classify is
:mod:`vividly.errors`'s: :class:`~vividly.errors.ProviderError` and
:func:`~vividly.errors.classify`.)"""

from __future__ import annotations

from typing import Any

from vividly.config import Settings


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
