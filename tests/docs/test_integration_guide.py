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


def test_the_guide_imports_only_the_public_surface() -> None:
    """A service author reads the guide: every name it imports from us is in the public
    surface (``vividly.__all__``, or ``vividly.runtime.__all__`` for the loop and the
    stage runner), never from a module path inside a layer."""
    import vividly
    import vividly.runtime

    surfaces = {"vividly": set(vividly.__all__), "vividly.runtime": set(vividly.runtime.__all__)}
    found = 0
    for block in python_blocks(GUIDE.read_text()):
        for module, names in re.findall(r"^from (vividly[\w.]*) import ([\w, ]+)$", block, re.M):
            found += 1
            assert module in surfaces, f"the guide imports from {module}"
            missing = {n.strip() for n in names.split(",")} - surfaces[module]
            assert not missing, f"{missing} are not in {module}.__all__"
        assert "import vividly." not in block
    assert found >= 4


@pytest.mark.integration
def test_every_example_in_the_guide_runs(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIVIDLY_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("VIVIDLY_TOPIC_PARTITIONS", "1")
    from vividly.config import TRACKING_TOPIC
    from vividly.runtime.bus import ensure_topics

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
