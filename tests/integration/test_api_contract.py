"""The OpenAPI document is the contract: schemathesis (every check, positive and negative
data, a fixed seed, a bounded time) against the served API finds nothing. The endless SSE
stream is left out of fuzzing; its contract is tested in test_api.py and test_tenancy.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.readside import ReadSide, make_request, side, visible, wait_for

pytestmark = pytest.mark.integration

__all__ = ["side"]

ST = Path(sys.executable).with_name("st")
SEED = 20261201


def test_the_spec_declares_bearer_auth_and_every_status_a_route_answers(side: ReadSide) -> None:
    spec = httpx.get(f"{side.url}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            codes = set(op["responses"])
            if path in ("/healthz", "/readyz"):
                assert "security" not in op, path
                continue
            assert op["security"], f"{method} {path}"
            assert {"401", "422"} <= codes, f"{method} {path}: {sorted(codes)}"
            if path != "/api/v1/monitoring/requests/{request_id}":
                assert "403" in codes, f"{method} {path}: {sorted(codes)}"
            if method == "post":
                assert {"413", "503"} <= codes, f"{method} {path}: {sorted(codes)}"
    assert "429" in spec["paths"]["/api/v1/monitoring/stream"]["get"]["responses"]


def test_schemathesis_finds_no_failure(side: ReadSide, unique: str, tmp_path: Path) -> None:
    # Something to read: a finished and a failed request (the failed one retryable).
    done = make_request(side.tracker, f"org-{unique}", f"s-{unique}")
    failed = make_request(side.tracker, f"org-{unique}", f"s-{unique}", outcome="failed")
    side.flush()
    wait_for(lambda: visible(side, done) and visible(side, failed), what="fold")
    token = side.token("admin", "fuzz-admin")
    run = subprocess.run(
        [
            str(ST),
            "run",
            f"{side.url}/openapi.json",
            "--checks",
            "all",
            "--mode",
            "all",
            "--seed",
            str(SEED),
            "--max-examples",
            "40",
            "--max-time",
            "120",
            # One worker: CPython 3.11's ast.parse is not thread-safe ("AST constructor
            # recursion depth mismatch" inside Hypothesis with two).
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--exclude-path",
            "/api/v1/monitoring/stream",
            "--request-timeout",
            "20",
            "-H",
            f"Authorization: Bearer {token}",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    out = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(out)
    # Its closing line ("== 1 warning in 150.03s ==") and the count of test cases.
    lines = [line.strip(" =") for line in out.splitlines()]
    closing = [line for line in lines if re.fullmatch(r".* in [0-9.]+s", line)]
    cases = [line for line in lines if re.fullmatch(r"\d+ generated, .*", line)]
    print(f"schemathesis: {cases[-1] if cases else '?'} · {closing[-1] if closing else '?'}")
    assert run.returncode == 0, out[-20000:]
    assert closing, out[-3000:]
    assert not re.search(r"fail|error", closing[-1]), out[-20000:]
    assert cases, out[-3000:]
    generated, passed = map(int, re.findall(r"(\d+) (?:generated|passed)", cases[-1])[:2])
    assert generated > 1000
    assert passed == generated
