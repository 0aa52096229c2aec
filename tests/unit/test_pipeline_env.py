"""`vividly up` hands the user's own VIVIDLY_* settings to the services it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from vividly.platform.pipeline import Pipeline, PipelinePorts


def test_the_users_settings_reach_the_services_and_the_stacks_addresses_win(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VIVIDLY_STAGE_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("VIVIDLY_KAFKA_BOOTSTRAP", "somewhere-else:9092")
    p = Pipeline(
        "127.0.0.1:1234", "postgresql://x@127.0.0.1:5/db", tmp_path, PipelinePorts(1, 2, 3, 4, 5)
    )
    env = p.env()
    assert env["VIVIDLY_STAGE_MAX_ATTEMPTS"] == "7"
    assert env["VIVIDLY_KAFKA_BOOTSTRAP"] == "127.0.0.1:1234", "the stack's broker, not the user's"
    assert env["VIVIDLY_HOME"] == str(tmp_path)
