"""Script generation's external interface: Gemini ``generateContent`` via google-genai."""

from __future__ import annotations

from typing import Any, Protocol

from vividly.config import Settings
from vividly.errors import ProviderError, classify
from vividly.localgen import write_script
from vividly.runtime.clients import genai_client


class ScriptWriter(Protocol):
    model: str

    async def write(self, prompt: str, headers: dict[str, str]) -> str: ...


class GeminiScriptWriter:
    """The real client: the google-genai SDK, base URL from settings, per-call headers
    (X-Correlation-ID, traceparent) through GenerateContentConfig.http_options."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.client = client or genai_client(settings)
        self.model = settings.gemini_model

    async def write(self, prompt: str, headers: dict[str, str]) -> str:
        from google.genai import types

        try:
            response = await self.client.aio.models.generate_content(
                model=self.model,
                contents=prompt,
                config=types.GenerateContentConfig(
                    temperature=0.4,
                    http_options=types.HttpOptions(headers=headers),
                    # No tools are passed; without this the SDK logs "AFC is enabled"
                    # at INFO on every call.
                    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
                ),
            )
        except Exception as exc:
            raise classify(exc, "gemini generateContent") from exc
        text = response.text or ""
        if not text.strip():
            raise ProviderError("gemini returned no text", retryable=True)
        return text


class LocalScriptWriter:
    """In-process stand-in: the same composition the Gemini emulator serves."""

    model = "local"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def write(self, prompt: str, headers: dict[str, str]) -> str:
        self.prompts.append(prompt)
        return write_script(prompt)
