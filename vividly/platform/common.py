"""What the CLI's commands share: the running stack's settings and the usage error."""

from __future__ import annotations

import os
from typing import Any

from vividly.config import Settings
from vividly.platform.stack import StackState


class UsageError(Exception):
    """A flag's value is wrong: the CLI prints its usage and this message (exit 2)."""


def stack_settings(settings: Settings) -> Settings:
    """``settings`` with the running local stack's addresses where the environment does
    not set them, so `vividly submit` and friends find the stack without exports."""
    data = StackState(settings.home.resolve()).read() or {}
    env = data.get("env") or {}
    if not env and data.get("processes"):
        procs = data["processes"]
        env = {
            "VIVIDLY_KAFKA_BOOTSTRAP": procs.get("kafka", {}).get("url"),
            "VIVIDLY_DATABASE_URL": procs.get("postgres", {}).get("url"),
        }
    from pydantic import TypeAdapter

    update: dict[str, Any] = {}
    for key, value in env.items():
        name = key.removeprefix("VIVIDLY_").lower()
        field = Settings.model_fields.get(name)
        if value and field is not None and field.annotation and key not in os.environ:
            # stack.json holds strings: give each setting its own type (home a Path, a
            # port an int), as reading the environment would; model_copy does not.
            update[name] = TypeAdapter(field.annotation).validate_python(value)
    return settings.model_copy(update=update) if update else settings


def trace_like_the_stack(settings: Settings, service: str = "cli") -> bool:
    """Export this command's spans (its ``submit request`` roots) where the running local
    stack exports its own, unless the environment says otherwise (its OTEL_* settings
    win); returns whether tracing is on. Call :func:`vividly.runtime.telemetry.shutdown`
    before exiting."""
    from vividly.runtime import telemetry

    data = StackState(settings.home.resolve()).read() or {}
    otel: dict[str, str] = data.get("otel") or {}
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if otel and not disabled and not telemetry.requested(os.environ):
        for key, value in otel.items():
            os.environ.setdefault(key, value)  # the SDK's exporters read the environment
    return telemetry.configure(service)
