"""Keeps the local stack's processes running: a process that exits is started again with
backoff, recorded (a JSON log line in ``supervisor.log``, the restart counter on the
supervisor's ``/metrics``, ``restarts`` in ``stack.json`` for ``vividly status``), and
nothing else is touched.

Backoff per process: 0.5 s after the first exit, doubling to 30 s while it keeps
exiting; once it has run for ``healthy_after_s`` the streak is forgotten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from vividly.platform.stack import Managed, StackError

log = logging.getLogger("vividly.platform.supervisor")

restarts_total = Counter(
    "vividly_supervisor_restarts",
    "Processes of the local stack started again after they exited",
    ["process"],
)


@dataclass
class Watched:
    name: str
    managed: Managed
    start: Callable[[], Managed]
    restarts: int = 0
    streak: int = 0
    started_at: float = 0.0
    due_at: float | None = None  # set while it is down: when the next start is tried
    last_exit: int | None = None


@dataclass
class Supervisor:
    """Call :meth:`check` every so often; ``on_change(watched)`` runs after each restart."""

    on_change: Callable[[Watched], None] = lambda _w: None
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    healthy_after_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    watched: dict[str, Watched] = field(default_factory=dict)

    def watch(self, name: str, managed: Managed, start: Callable[[], Managed]) -> None:
        self.watched[name] = Watched(name, managed, start, started_at=self.clock())

    def delay(self, streak: int) -> float:
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** max(0, streak - 1)))

    def check(self) -> list[Watched]:
        """Restart what is down and due; returns the processes started again now."""
        now = self.clock()
        restarted = []
        for w in self.watched.values():
            code = w.managed.proc.poll()
            if code is None:
                if w.streak and now - w.started_at >= self.healthy_after_s:
                    w.streak = 0
                continue
            if w.due_at is None:  # just found down
                w.streak += 1
                w.last_exit = code
                w.due_at = now + self.delay(w.streak)
                log.error(
                    "process exited; restarting it",
                    extra={
                        "component": w.name,
                        "exit_code": code,
                        "restart_in_s": round(w.due_at - now, 2),
                        "log": str(w.managed.log),
                    },
                )
            if now < w.due_at:
                continue
            try:
                w.managed = w.start()
            except (StackError, OSError) as exc:
                w.streak += 1
                w.due_at = now + self.delay(w.streak)
                log.error("restart failed", extra={"component": w.name, "error": str(exc)})
                continue
            w.restarts += 1
            w.due_at = None
            w.started_at = now
            restarts_total.labels(w.name).inc()
            log.warning(
                "process restarted",
                extra={"component": w.name, "pid": w.managed.pid, "restarts": w.restarts},
            )
            restarted.append(w)
            self.on_change(w)
        return restarted
