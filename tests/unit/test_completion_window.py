from __future__ import annotations

import random

from vividly.publish import CompletionWindow


def test_low_is_the_oldest_unfinished_whatever_the_finish_order() -> None:
    w = CompletionWindow()
    for n in range(10, 20):
        w.add(n)
    assert w.low() == 10
    w.finish(12)
    w.finish(11)
    assert w.low() == 10
    assert w.done_through() == 9
    w.finish(10)
    assert w.low() == 13
    assert w.done_through() == 12
    for n in range(13, 20):
        w.finish(n)
    assert w.low() is None
    assert w.done_through() == 19
    assert len(w) == 0


def test_random_orders_never_report_past_an_unfinished_number() -> None:
    rng = random.Random(7)
    for _ in range(200):
        w = CompletionWindow()
        numbers = list(range(50))
        for n in numbers:
            w.add(n)
        order = numbers[:]
        rng.shuffle(order)
        finished: set[int] = set()
        for n in order:
            w.finish(n)
            finished.add(n)
            unfinished = set(numbers) - finished
            assert w.low() == (min(unfinished) if unfinished else None)
