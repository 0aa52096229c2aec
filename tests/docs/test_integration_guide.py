"""The integration guide's code examples run, in order, against a real broker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import Broker

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "integration-guide.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_the_guide_has_examples() -> None:
    assert len(python_blocks(GUIDE.read_text())) >= 8


@pytest.mark.integration
def test_every_example_in_the_guide_runs(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIVIDLY_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("VIVIDLY_TOPIC_PARTITIONS", "1")
    from vividly.bus import ensure_topics
    from vividly.config import TRACKING_TOPIC

    ensure_topics(broker.settings(), {TRACKING_TOPIC: 3})
    namespace: dict[str, object] = {"__name__": "guide"}
    for n, block in enumerate(python_blocks(GUIDE.read_text()), 1):
        try:
            exec(compile(block, f"{GUIDE.name}[block {n}]", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"example {n} of the guide failed:\n{block}") from exc
    loop = namespace["loop"]
    assert loop.stats.handled == 1  # type: ignore[attr-defined]
    report = namespace["report"]
    assert report.ok  # type: ignore[attr-defined]
    namespace["publisher"].close(5)  # type: ignore[attr-defined]
