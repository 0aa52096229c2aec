"""Running pipeline stages: tracking, breakers, retries and failure handling in one place.

A stage service registers a :class:`StageRunner` as the consumer loop's WorkItem handler.
For each work item the runner runs its stages in order (the video service has two), and:

- tracks each with StageStarted / StageCompleted (through the tracker, with duration and
  output) and records the completion in the :class:`Ledger`, so a redelivered item never
  completes the same stage attempt twice;
- when a stage's breaker is open, does not burn the attempt: the request is marked
  ``waiting`` with reason ``circuit_open``, the runner stops taking new input (its
  ``accepting`` gate), and the item waits for the breaker's trial call;
- on a retryable failure with attempts left: StageFailed (retryable), StageRetryScheduled
  with the due time (exponential backoff with jitter), and the item is republished to the
  stage's own input topic with the attempt raised and a not-before header;
- on a non-retryable failure or when attempts run out: StageFailed, RequestFailed with
  the stage, the work item to ``requests.dlq``, and a failure item to the notification
  topic for the student's error email;
- after the last stage, the ``on_done`` hook (notify completes the request).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from pybreaker import CircuitBreaker

from vividly import metrics, tracing
from vividly.breakers import CircuitOpen, guarded, retry_at
from vividly.config import DLQ_TOPIC, RENDERED, STAGE_EXPECTED_S, STAGES, Settings
from vividly.errors import RetryPolicy, dead_letter, is_retryable
from vividly.events import WorkItem
from vividly.publish import Outgoing
from vividly.runtime.bus import Delivery
from vividly.tracker import Captured, RequestTracker

log = logging.getLogger("vividly.runtime.stage")
T = TypeVar("T")

H_NOT_BEFORE = "vividly-not-before-ms"


@dataclass(frozen=True, slots=True)
class Recorded:
    """How one stage attempt ended, as the ledger keeps it: ``outcome`` "completed" (with
    the stage's ``output`` JSON) or "failed"; the tracking ``events`` that outcome
    published; for a failure, the work items it sent on (``outgoing``: the retry, or the
    dead letter and the error-email item)."""

    outcome: str
    output: bytes = b"{}"
    events: tuple[Captured, ...] = ()
    outgoing: tuple[Captured, ...] = ()

    def encode_messages(self) -> bytes:
        return orjson.dumps({"e": _pack(self.events), "o": _pack(self.outgoing)})

    @classmethod
    def decode(cls, outcome: str, output: bytes, messages: bytes | None) -> Recorded:
        if not messages:  # a row from before the ledger kept messages
            return cls(outcome, output)
        data = orjson.loads(messages)
        return cls(outcome, output, _unpack(data["e"]), _unpack(data["o"]))


def _pack(msgs: Sequence[Captured]) -> list[Any]:
    b64 = base64.b64encode
    return [
        [t, b64(k).decode(), b64(v).decode(), [[hk, b64(hv).decode()] for hk, hv in h]]
        for t, k, v, h in msgs
    ]


def _unpack(rows: list[Any]) -> tuple[Captured, ...]:
    d = base64.b64decode
    return tuple((t, d(k), d(v), [(hk, d(hv)) for hk, hv in h]) for t, k, v, h in rows)


class Ledger(Protocol):
    """Durable record of finished stage attempts (Postgres in services, memory in tests).

    The runner asks it before doing an attempt's work, and records the outcome before
    publishing anything of it: a redelivered item republishes the recorded messages
    instead of working again, however the first try ended or was cut short."""

    async def lookup(self, request_id: str, stage: str, attempt: int) -> Recorded | None: ...

    async def record(
        self, request_id: str, stage: str, attempt: int, recorded: Recorded
    ) -> Recorded:
        """Store ``recorded`` unless this attempt has an outcome; return the stored one."""
        ...

    async def cancelled(self, request_id: str) -> bool:
        """Whether the request was cancelled (its stages are then skipped)."""
        ...


class MemoryLedger:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, int], Recorded] = {}
        self.cancelled_ids: set[str] = set()

    async def cancelled(self, request_id: str) -> bool:
        return request_id in self.cancelled_ids

    async def lookup(self, request_id: str, stage: str, attempt: int) -> Recorded | None:
        return self.rows.get((request_id, stage, attempt))

    async def record(
        self, request_id: str, stage: str, attempt: int, recorded: Recorded
    ) -> Recorded:
        return self.rows.setdefault((request_id, stage, attempt), recorded)


class Cancelled(Exception):
    """Raised by a stage's work that saw its request cancelled (``ctx.is_cancelled()``)
    and stopped: the attempt ends "cancelled", with no retry, dead letter or email."""

    is_retryable = False


class UnpairedBreaker(TypeError):
    """A stage's work called through a breaker its :class:`Stage` does not list: when that
    breaker opened, items would be held while input kept flowing. A wiring bug of the
    service's composition root (``main.py``), reported on the first call."""

    is_retryable = False


@dataclass
class StageContext:
    """What a stage's work function gets besides the item: its tracker, ids, attempt, and
    the breakers its :class:`Stage` pairs it with (None: not checked, as in unit tests
    that build a context by hand)."""

    tracker: RequestTracker
    item: WorkItem
    stage: str
    attempt: int
    breakers: tuple[CircuitBreaker, ...] | None = None
    cancel_check: Callable[[str], Awaitable[bool]] | None = None

    async def is_cancelled(self) -> bool:
        """Whether the request was cancelled meanwhile (long work asks between steps and
        raises :class:`Cancelled`, after undoing what it started outside)."""
        if self.cancel_check is None:
            return False
        return await self.cancel_check(self.item.request_id)

    async def guarded(self, breaker: CircuitBreaker, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` through ``breaker``, which must be one of the stage's own (the
        ones whose opening pauses the stage's input)."""
        if self.breakers is not None and breaker not in self.breakers:
            raise UnpairedBreaker(
                f"stage {self.stage} called through breaker {breaker.name!r}, which its Stage "
                f"does not list ({', '.join(str(b.name) for b in self.breakers) or 'none'})"
            )
        return await guarded(breaker, call)

    @property
    def request_id(self) -> str:
        return self.item.request_id

    @property
    def correlation_id(self) -> str:
        return self.item.correlation_id

    def headers(self) -> dict[str, str]:
        """Correlation headers for outgoing HTTP calls."""
        out = {"X-Correlation-ID": self.item.correlation_id}
        if self.item.traceparent:
            out["traceparent"] = self.item.traceparent
        return out

    def log(
        self,
        event_type: str,
        message: str,
        severity: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        self.tracker.log_event(
            self.item.request_id,
            event_type,
            message,
            stage_name=self.stage,
            severity=severity,
            event_data=data,
        )

    def output_of(self, stage: str) -> dict[str, Any]:
        raw = self.item.outputs_json.get(stage)
        return orjson.loads(raw) if raw else {}


StageWork = Callable[[WorkItem, StageContext], Awaitable[dict[str, Any]]]


@dataclass
class Stage:
    name: str
    work: StageWork
    breakers: tuple[CircuitBreaker, ...] = ()
    max_attempts: int | None = None  # default: settings.stage_max_attempts

    def __post_init__(self) -> None:
        if self.name not in STAGES:
            raise ValueError(f"unknown stage {self.name!r}")


class StageRunner:
    """The WorkItem handler every stage service registers with its ConsumerLoop."""

    def __init__(
        self,
        *,
        tracker: RequestTracker,
        stages: Sequence[Stage],
        settings: Settings,
        input_topic: str,
        next_topic: str | None,
        ledger: Ledger,
        notify_topic: str = RENDERED,
        dlq_topic: str = DLQ_TOPIC,
        on_done: Callable[[WorkItem], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.tracker = tracker
        self.stages = list(stages)
        self.by_name = {s.name: i for i, s in enumerate(self.stages)}
        self.settings = settings
        self.input_topic = input_topic
        self.next_topic = next_topic
        self.ledger = ledger
        self.notify_topic = notify_topic
        self.dlq_topic = dlq_topic
        self.on_done = on_done
        self.rng = rng or random.Random()
        self._oldest = {
            s.name: metrics.OldestInFlight(s.name, STAGE_EXPECTED_S.get(s.name, 300.0))
            for s in self.stages
        }

    # -- the loop's gate: take no new input while one of our breakers is open -----------
    def accepting(self) -> bool:
        now = time.time()
        for s in self.stages:
            for breaker in s.breakers:
                due = retry_at(breaker)
                if due is not None and due > now:
                    return False
        return True

    async def __call__(self, delivery: Delivery, item: WorkItem) -> list[Outgoing]:
        first = self.by_name.get(item.stage)
        if first is None:
            raise ValueError(
                f"{self.input_topic} carries stage {item.stage!r}; this service "
                f"runs {', '.join(self.by_name)}"
            )
        await self._wait_until_due(delivery)
        current = item
        for index in range(first, len(self.stages)):
            stage = self.stages[index]
            rec = await self._run(stage, current, last=index == len(self.stages) - 1)
            if rec.outcome != "completed":
                return [Outgoing(t, k, v, list(h)) for t, k, v, h in rec.outgoing]
            current = self._advance(current, stage.name, orjson.loads(rec.output))
        if self.next_topic is None:
            return []
        return [Outgoing.work_item(self.next_topic, current)]

    # -- one stage -------------------------------------------------------------------------
    async def _run(self, stage: Stage, item: WorkItem, last: bool) -> Recorded:
        attempt = item.attempt or 1
        with tracing.stage_span(item.request_id, stage.name, attempt) as span:
            rec = await self._attempt(stage, item, attempt, last, span)
            span.outcome(rec.outcome)
            return rec

    async def _attempt(
        self, stage: Stage, item: WorkItem, attempt: int, last: bool, span: tracing.StageSpan
    ) -> Recorded:
        rid = item.request_id
        done = await self.ledger.lookup(rid, stage.name, attempt)
        if done is not None:
            # A redelivery: this attempt has an outcome already. Its messages may or may
            # not have reached the broker, so publish them again (the same event ids:
            # the projector keeps one); never do the work again.
            span.replayed()
            log.info(
                "stage attempt already finished; republishing its outcome",
                extra={"stage": stage.name, "attempt": attempt, "outcome": done.outcome},
            )
            self.tracker.republish(done.events)
            return done
        if await self.ledger.cancelled(rid):
            return await self._skip(stage, rid, attempt, "the request was cancelled; skipped")
        ctx = StageContext(
            self.tracker, item, stage.name, attempt, stage.breakers, self.ledger.cancelled
        )
        self.tracker.start_stage(rid, stage.name, attempt=attempt)
        started = time.perf_counter()
        watch = self._oldest[stage.name]
        token = watch.begin()
        failure: Recorded | None = None
        try:
            while True:
                try:
                    output = await stage.work(item, ctx)
                    break
                except CircuitOpen as exc:
                    await self._hold(rid, stage, exc)
                    if await self.ledger.cancelled(rid):  # cancelled while it waited
                        why = "the request was cancelled while it waited; skipped"
                        failure = await self._skip(stage, rid, attempt, why, record=False)
                        break
                except Cancelled as exc:
                    failure = await self._skip(stage, rid, attempt, str(exc), record=False)
                    break
                except Exception as exc:
                    metrics.stage_duration.labels(stage.name, "failed").observe(
                        time.perf_counter() - started
                    )
                    span.failed(exc)
                    failure = self._failed(stage, item, attempt, exc, started)
                    break
        finally:
            watch.end(token)
        if failure is None:
            metrics.stage_duration.labels(stage.name, "completed").observe(
                time.perf_counter() - started
            )
            raw = orjson.dumps(output)
            with self.tracker.capturing() as events:
                self.tracker.complete_stage(
                    rid,
                    stage.name,
                    output_data=output,
                    attempt=attempt,
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
                if last and self.on_done is not None:
                    await self.on_done(self._advance(item, stage.name, output))
            mine = Recorded("completed", raw, tuple(events))
        else:
            mine = failure
        stored = await self.ledger.record(rid, stage.name, attempt, mine)
        if stored is not mine:
            log.info(
                "another delivery of this attempt finished first; publishing its outcome",
                extra={"stage": stage.name, "attempt": attempt},
            )
        self.tracker.republish(stored.events)
        return stored

    async def _skip(
        self, stage: Stage, rid: str, attempt: int, why: str, *, record: bool = True
    ) -> Recorded:
        """The request was cancelled: this attempt does nothing more and sends nothing on
        (no retry, no dead letter, no email). Recorded, so a redelivery does not ask
        again and publishes the same event."""
        log.info("skipping a cancelled request", extra={"stage": stage.name, "attempt": attempt})
        metrics.stages_skipped.labels(stage.name).inc()
        with self.tracker.capturing() as events:
            self.tracker.log_event(
                rid, "stage_cancelled", why, stage_name=stage.name, severity="warning"
            )
        mine = Recorded("cancelled", events=tuple(events))
        if not record:
            return mine
        stored = await self.ledger.record(rid, stage.name, attempt, mine)
        self.tracker.republish(stored.events)
        return stored

    async def _hold(self, request_id: str, stage: Stage, exc: CircuitOpen) -> None:
        """Wait, without burning the attempt, until the breaker lets a trial call through."""
        self.tracker.mark_waiting(
            request_id,
            stage.name,
            "circuit_open",
            f"{exc.breaker} circuit breaker is open",
            exc.retry_at,
        )
        # Spread the trial calls a little so one request probes first.
        await asyncio.sleep(max(0.0, exc.retry_at - time.time()) + self.rng.uniform(0, 0.25))

    def _failed(
        self, stage: Stage, item: WorkItem, attempt: int, exc: BaseException, started: float
    ) -> Recorded:
        with self.tracker.capturing() as events:
            outgoing = self._fail(stage, item, attempt, exc, started)
        return Recorded(
            "failed",
            events=tuple(events),
            outgoing=tuple((o.topic, o.key, o.value, list(o.headers)) for o in outgoing),
        )

    def _fail(
        self, stage: Stage, item: WorkItem, attempt: int, exc: BaseException, started: float
    ) -> list[Outgoing]:
        rid = item.request_id
        retryable = is_retryable(exc)
        policy = RetryPolicy.from_settings(self.settings, stage.max_attempts)
        max_attempts = policy.max_attempts
        message = str(exc) or type(exc).__name__
        details = {
            "exception_type": type(exc).__name__,
            "attempt": attempt,
            "max_attempts": max_attempts,
        }
        details.update(getattr(exc, "details", None) or {})
        self.tracker.fail_stage(
            rid,
            stage.name,
            message,
            error_details=details,
            is_retryable=retryable,
            attempt=attempt,
            work_item=item,
            duration_ms=(time.perf_counter() - started) * 1000,
        )
        if not policy.gives_up(attempt, exc):
            delay = policy.delay(attempt, self.rng)
            due = time.time() + delay
            self.tracker.schedule_retry(rid, stage.name, attempt + 1, due, message)
            metrics.retries_scheduled.labels(stage.name).inc()
            retry = WorkItem()
            retry.CopyFrom(item)
            retry.stage = stage.name
            retry.attempt = attempt + 1
            out = Outgoing.work_item(self.input_topic, retry)
            out.headers.append((H_NOT_BEFORE, str(int(due * 1000)).encode()))
            return [out]
        reason = "retries_exhausted" if retryable else "non_retryable"
        self.tracker.fail_request(rid, message, stage.name, {**details, "reason": reason})
        plain = Outgoing.work_item(self.dlq_topic, item)
        dead = dead_letter(
            plain.topic,
            plain.key,
            plain.value,
            plain.headers,
            reason=reason,
            detail=f"{stage.name}: {message}",
            stage=stage.name,
        )
        failure = WorkItem()
        failure.CopyFrom(item)
        failure.stage = "notification"
        failure.attempt = 1
        failure.failure.stage = stage.name
        failure.failure.error_message = message
        return [dead, Outgoing.work_item(self.notify_topic, failure)]

    async def _wait_until_due(self, delivery: Delivery) -> None:
        for key, value in delivery.headers.raw:
            if key == H_NOT_BEFORE:
                delay = int(value) / 1000.0 - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                return

    def _advance(self, item: WorkItem, stage: str, output: dict[str, Any]) -> WorkItem:
        nxt = WorkItem()
        nxt.CopyFrom(item)
        nxt.outputs_json[stage] = orjson.dumps(output)
        following = STAGES.index(stage) + 1
        nxt.stage = STAGES[following] if following < len(STAGES) else stage
        nxt.attempt = 1
        return nxt
