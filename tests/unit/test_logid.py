"""Stored offsets belong to one log: every way they can fail to is reported."""

from __future__ import annotations

from services.projector.logid import LogIdentity, check

A = LogIdentity("cluster-a", "topic-1")
MARKS = {0: (0, 10), 1: (5, 7)}


def test_offsets_inside_the_same_log_resume() -> None:
    assert check("t", A, A, {0: 10, 1: 5}, MARKS) == []
    assert check("t", None, A, {}, MARKS) == [], "a first start has nothing to check"


def test_another_cluster_is_named() -> None:
    [reason] = check("t", A, LogIdentity("cluster-b", "topic-1"), {0: 3}, MARKS)
    assert "cluster-a" in reason
    assert "cluster-b" in reason


def test_a_recreated_topic_is_named() -> None:
    [reason] = check("t", A, LogIdentity("cluster-a", "topic-2"), {}, MARKS)
    assert "recreated" in reason


def test_offsets_past_the_end_and_before_the_start_are_each_reported() -> None:
    reasons = check("t", A, A, {0: 11, 1: 4, 2: 1}, MARKS)
    assert len(reasons) == 3
    assert "t[0]: the stored offset 11 is past the log's end 10" in reasons[0]
    assert "t[1]: the log starts at 5, after the stored offset 4" in reasons[1]
    assert "t[2] has a stored offset 1 but no such partition" in reasons[2]


def test_a_log_that_lost_its_tail_after_a_power_cut_is_caught_without_an_identity() -> None:
    # Same cluster id on disk, but the unsynced tail is gone: the offset is past the end.
    assert check("t", None, A, {0: 12}, MARKS)
