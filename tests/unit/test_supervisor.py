"""The local stack's supervisor: restart what exited, with backoff, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from vividly.platform.stack import Managed
from vividly.platform.supervisor import Supervisor, Watched


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


def managed(pid: int) -> Managed:
    return Managed(f"p{pid}", cast(Any, FakeProc(pid)), "", Path("/dev/null"))


def test_an_exited_process_is_restarted_with_doubling_backoff_and_others_are_left_alone() -> None:
    now = [0.0]
    pids = iter(range(100, 200))
    changes: list[int] = []

    def changed(w: Watched) -> None:
        changes.append(w.restarts)

    sup = Supervisor(on_change=changed, clock=lambda: now[0], healthy_after_s=60)
    notify, api = managed(1), managed(2)
    sup.watch("notify", notify, lambda: managed(next(pids)))
    sup.watch("api", api, lambda: managed(next(pids)))

    cast(Any, notify.proc).code = -9  # kill -9
    assert sup.check() == []  # found down: restart due in 0.5 s
    now[0] = 0.4
    assert sup.check() == []
    now[0] = 0.5
    [w] = sup.check()
    assert (w.name, w.restarts, w.last_exit, w.managed.pid) == ("notify", 1, -9, 100)
    assert sup.watched["api"].managed is api, "the rest keeps running untouched"
    assert sup.watched["api"].restarts == 0

    # It keeps crashing: 1 s, then 2 s.
    cast(Any, w.managed.proc).code = 1
    sup.check()
    now[0] = 1.4
    assert sup.check() == []
    now[0] = 1.5
    assert sup.check()[0].restarts == 2
    cast(Any, sup.watched["notify"].managed.proc).code = 1
    sup.check()
    now[0] = 3.4
    assert sup.check() == []
    now[0] = 3.5
    assert sup.check()[0].restarts == 3
    assert changes == [1, 2, 3]

    # Healthy for a minute: the streak is forgotten, the next exit waits 0.5 s again.
    now[0] = 70.0
    sup.check()
    cast(Any, sup.watched["notify"].managed.proc).code = 1
    sup.check()
    now[0] = 70.5
    assert sup.check()[0].restarts == 4


def test_a_restart_that_fails_is_tried_again_later() -> None:
    from vividly.platform.stack import StackError

    now = [0.0]
    tries = [0]

    def start() -> Managed:
        tries[0] += 1
        if tries[0] == 1:
            raise StackError("port taken")
        return managed(7)

    sup = Supervisor(clock=lambda: now[0])
    m = managed(1)
    sup.watch("kafka", m, start)
    cast(Any, m.proc).code = 137
    sup.check()
    now[0] = 0.5
    assert sup.check() == []  # the restart failed
    now[0] = 1.5
    [w] = sup.check()
    assert w.managed.pid == 7
    assert tries[0] == 2
