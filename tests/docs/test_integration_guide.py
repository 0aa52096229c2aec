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


@pytest.mark.integration
def test_the_guides_tracing_example_run_with_tracing_on_nests_the_authors_span(
    broker: Broker,
) -> None:
    """The tracing example, run as a worker would with OTEL_TRACES_EXPORTER=console (in
    its own process: the tracer provider is global): the author's span is the child of
    the stage span, both in the request's trace, whose id the example prints."""
    import json
    import os
    import subprocess
    import sys

    blocks = python_blocks(GUIDE.read_text())
    setup = next(b for b in blocks if "KafkaPublisher(settings, client_id" in b)
    example = next(b for b in blocks if "configure_tracing(" in b)
    env = {
        **os.environ,
        "VIVIDLY_KAFKA_BOOTSTRAP": broker.bootstrap,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "guide-worker",
    }
    out = subprocess.run(
        [sys.executable, "-c", setup + "\n" + example],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    trace_line = next(line for line in out.stdout.splitlines() if line.startswith("trace "))
    trace_id = trace_line.split()[1]
    spans, text, i = [], out.stdout, 0
    decoder = json.JSONDecoder()
    while (i := text.find("{", i)) != -1:
        obj, i = decoder.raw_decode(text, i)
        spans.append(obj)
    by_name = {s["name"]: s for s in spans}
    stage, mine = by_name["stage script_generation"], by_name["choose a template"]
    assert mine["parent_id"] == stage["context"]["span_id"]
    assert stage["context"]["trace_id"] == mine["context"]["trace_id"] == "0x" + trace_id
    assert stage["attributes"]["vividly.outcome"] == "completed"
    assert stage["resource"]["attributes"]["service.name"] == "guide-worker"
