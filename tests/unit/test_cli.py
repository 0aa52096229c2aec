from __future__ import annotations

import pytest

from vividly.platform.cli import main


def test_a_bad_flag_prints_usage_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["up", "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: vividly" in err
    assert "unrecognized arguments: --bogus" in err
    assert "Traceback" not in err


def test_a_bad_setting_is_reported_by_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIVIDLY_KAFKA_PORT", "not-a-port")
    assert main(["status"]) == 2
    assert "kafka_port" in capsys.readouterr().err
