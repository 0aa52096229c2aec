"""The one failure policy: what is worth trying again, how often, how long to wait, what a
circuit breaker counts, and what a dead letter says.

Everything that decides about a failure asks this module: the consumer loop
(:mod:`vividly.runtime.bus`), the stage runner (:mod:`vividly.runtime.stage`), the
tracker's ``track_stage`` span, the breakers and every provider. The rules:

- **Retryable** (trying the same call again may succeed): an exception that says so itself
  (an ``is_retryable`` attribute: :class:`ProviderError`, :class:`RetryableError`,
  :class:`PermanentError`, ``CircuitOpen``); an HTTP status of 429 or 5xx (another 4xx is
  not); a network-level ``OSError`` (connection refused or reset, timeouts, DNS), but not
  a filesystem one (a missing file or a permission denied stays missing); an error of an
  HTTP client library (httpx, aiohttp, httpcore) that carries no status. Anything else
  (a bug, a bad input) is not retryable.
- **An outage of our own infrastructure** (Postgres restarting, a connection cut) is not
  the message's fault: the loop retries it for as long as it takes, without spending an
  attempt or dead-lettering the work. It is a retryable network error, or one of asyncpg's
  connection errors (SQLSTATE classes 08, 53, 57), unless the exception classified itself.
- **A breaker counts** exactly the retryable failures: a permanent error (a 4xx, a bad
  input, our own bug) says nothing about the service's health.
- **Attempts and backoff** come from one :class:`RetryPolicy` (``VIVIDLY_STAGE_MAX_ATTEMPTS``,
  ``VIVIDLY_RETRY_BACKOFF_S``, ``..._MAX_S``, ``VIVIDLY_RETRY_JITTER``): a handler raising a
  :class:`RetryableError` in the loop and a stage failing in the runner are tried the same
  number of times with the same backoff.
- **A dead letter** is built by :func:`dead_letter` only: the original bytes and headers,
  plus ``dlq-reason``, ``dlq-detail`` and where it came from, counted in
  ``vividly_dlq_messages_total``.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vividly import metrics
from vividly.publish import Headers, Outgoing

if TYPE_CHECKING:
    from vividly.config import Settings

__all__ = [
    "DeliveryFailed",
    "PermanentError",
    "ProviderError",
    "RetryPolicy",
    "RetryableError",
    "classify",
    "counts_against_breaker",
    "dead_letter",
    "is_outage",
    "is_retryable",
    "retryable_status",
]


class RetryableError(Exception):
    """A failure worth trying again (a timeout, a 503): retried under the policy."""

    is_retryable = True


class PermanentError(Exception):
    """A failure that will not get better: never retried, dead-lettered at once."""

    is_retryable = False


class DeliveryFailed(RuntimeError):
    """A message published while handling an input was not acknowledged by the broker
    (librdkafka has retried for ``delivery_timeout_ms`` by then). The loop stops so the
    input is redelivered after a restart; it is neither retryable nor an outage."""

    is_retryable = False


class ProviderError(Exception):
    """A call to an external API failed; ``is_retryable`` says whether to try again."""

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
    """HTTP statuses worth another try: 429 (slow down) and every 5xx."""
    return status == 429 or status >= 500


#: OSErrors about files, not networks: trying again finds the same file missing.
_FILESYSTEM = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
_FILESYSTEM_ERRNOS = frozenset({errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR})
_HTTP_CLIENTS = ("httpx", "aiohttp", "httpcore")
_RNG = random.Random()

#: asyncpg's exceptions for a connection that is gone, known by name (the SDK core does
#: not import asyncpg).
_PG_CONNECTION_ERRORS = frozenset(
    {
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "InternalClientError",
        "TooManyConnectionsError",
    }
)


def _declared(exc: BaseException) -> bool | None:
    flag = getattr(exc, "is_retryable", None)
    return flag if isinstance(flag, bool) else None


def _http_status(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    return code if isinstance(code, int) and 100 <= code < 600 else None


def _network(exc: BaseException) -> bool:
    if isinstance(exc, _FILESYSTEM):
        return False
    if isinstance(exc, OSError):  # TimeoutError, ConnectionError, socket.gaierror, …
        return exc.errno not in _FILESYSTEM_ERRNOS
    return False


def is_retryable(exc: BaseException) -> bool:
    """Whether trying the same call again may succeed (the module's rules)."""
    declared = _declared(exc)
    if declared is not None:
        return declared
    status = _http_status(exc)
    if status is not None:
        return retryable_status(status)
    if _network(exc):
        return True
    return type(exc).__module__.startswith(_HTTP_CLIENTS)


def is_outage(exc: BaseException) -> bool:
    """An outage of our own infrastructure (a lost or refused connection, Postgres
    restarting): retried until it passes, never dead-lettered, no attempt spent."""
    if _declared(exc) is not None:
        return False
    if _network(exc):
        return True
    state = str(getattr(exc, "sqlstate", "") or "")
    if state[:2] in ("08", "53", "57"):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    return type(exc).__module__.startswith("asyncpg") and bool(names & _PG_CONNECTION_ERRORS)


def counts_against_breaker(exc: BaseException) -> bool:
    """A breaker counts the failures that say the service is unwell: the retryable ones."""
    return is_retryable(exc)


def classify(exc: BaseException, what: str) -> ProviderError:
    """Any client exception as a :class:`ProviderError` whose retryability follows the
    rules above (a ProviderError is returned as it is)."""
    if isinstance(exc, ProviderError):
        return exc
    status = _http_status(exc)
    text = f"HTTP {status}: {exc}" if status is not None else f"{type(exc).__name__}: {exc}"
    return ProviderError(f"{what}: {text}", retryable=is_retryable(exc), status=status)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many tries a piece of work gets and how long to wait between them."""

    max_attempts: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    jitter: float = 0.2

    #: Waits while our own infrastructure is out: from 0.1 s, doubling, at most 5 s.
    OUTAGE_FIRST_S = 0.1
    OUTAGE_MAX_S = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, max_attempts: int | None = None) -> RetryPolicy:
        return cls(
            max_attempts=max_attempts or settings.stage_max_attempts,
            backoff_s=settings.retry_backoff_s,
            backoff_max_s=settings.retry_backoff_max_s,
            jitter=settings.retry_jitter,
        )

    def gives_up(self, attempt: int, exc: BaseException) -> bool:
        """After ``attempt`` failed with ``exc``: no retry (not retryable, or out of tries)."""
        return not is_retryable(exc) or attempt >= self.max_attempts

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before attempt ``attempt + 1``: exponential from ``backoff_s``, capped
        at ``backoff_max_s``, spread by ± ``jitter``."""
        base = min(self.backoff_s * (2.0 ** (attempt - 1)), self.backoff_max_s)
        spread = (rng or _RNG).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return max(0.0, base * (1 + spread))

    def outage_delay(self, attempt: int) -> float:
        """The wait before trying again through an outage (``attempt`` counts from 1)."""
        return min(self.OUTAGE_MAX_S, self.OUTAGE_FIRST_S * 2.0 ** min(attempt - 1, 16))


def dead_letter(
    topic: str,
    key: bytes,
    value: bytes,
    headers: Sequence[tuple[str, bytes]],
    *,
    reason: str,
    detail: str,
    stage: str = "",
    source: tuple[str, int, int] | None = None,
    group: str = "",
) -> Outgoing:
    """The dead letter for a message: its own bytes and headers, plus why and whence.

    ``reason`` is a short word (``decode_error``, ``handler_error``, ``retries_exhausted``,
    ``non_retryable``, ``oversized``…), ``detail`` the human explanation, ``source`` the
    (topic, partition, offset) consumed, ``group`` the consumer group, ``stage`` the stage
    whose failure it is. Counted in ``vividly_dlq_messages_total{stage, reason}``."""
    out: Headers = [
        *headers,
        ("dlq-reason", reason.encode()),
        ("dlq-detail", detail[:4000].encode()),
        ("dlq-failed-at-ms", str(int(time.time() * 1000)).encode()),
    ]
    if stage:
        out.append(("dlq-stage", stage.encode()))
    if source is not None:
        src_topic, partition, offset = source
        out += [
            ("dlq-source-topic", src_topic.encode()),
            ("dlq-source-partition", str(partition).encode()),
            ("dlq-source-offset", str(offset).encode()),
        ]
    if group:
        out.append(("dlq-consumer-group", group.encode()))
    metrics.dlq_messages.labels(stage or "none", reason).inc()
    return Outgoing(topic, key, value, out)
