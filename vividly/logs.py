"""Structured logs: one JSON object a line, with request_id and correlation_id where known.

The consumer loop sets :data:`log_context` while it handles a message, so every log line
written inside a handler carries the request it is about without the handler passing it.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

#: request_id / correlation_id (and anything else) for log lines in the current task.
log_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "vividly_log_context", default=None
)

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = log_context.get()
        if ctx:
            out.update(ctx)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON lines. Call once, from ``main()``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
