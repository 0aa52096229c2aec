"""The fault suite's short run, with a fixed seed, as part of ``make test``: every fault
kind at least once against a 3-broker cluster, Postgres and the whole pipeline under
load, then the checker over the whole log and Postgres (``bench/faults.py``; run it
longer with ``python -m bench.faults --seed N --minutes M``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.faults import FAULTS, run

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)
def test_nothing_is_lost_or_done_twice_whatever_is_killed_when(
    tmp_path: Path, artifacts: Path
) -> None:
    result = run(seed=7, minutes=1.5, rate=4.0, home=tmp_path / "faults")
    (artifacts / "faults.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, default=str))
    assert set(result["faults_injected"]) == {*FAULTS, "stack_down_up"}, "every kind, at least once"
    assert result["requests_accepted"] >= 100
    assert result["requests_terminal_once"] == result["requests_accepted"]
    assert result["lost"] == 0, result["lost_requests"] + result["lost_events"]
    assert result["duplicated"] == 0, result["duplicated_examples"]
    assert result["emails_not_one"] == 0, result["emails_not_one_examples"]
    assert result["diverged"] == 0, result["diverged_by_table"]
    assert result["sse_missing"] == 0
    assert result["sse_repeated"] == 0
    assert result["sse_reconnects"] >= 1, "the stream client resumed across the faults"
    assert result["poison_written"] == 3 * 4 * 6
    assert result["poison_unaccounted"] == 0, result["poison_unaccounted_examples"]
    assert result["consumers_alive"], result["dead_processes"]
