from __future__ import annotations

import json
import logging

from vividly.logs import JsonFormatter, log_context


def test_log_lines_are_one_json_object_with_request_and_correlation_ids() -> None:
    fmt = JsonFormatter("script")
    token = log_context.set({"request_id": "r-1", "correlation_id": "c-1"})
    try:
        record = logging.LogRecord(
            "vividly.runtime.bus", logging.WARNING, __file__, 1, "retrying %s", ("gemini",), None
        )
        record.attempt = 2
        line = fmt.format(record)
    finally:
        log_context.reset(token)
    assert "\n" not in line
    out = json.loads(line)
    assert out["msg"] == "retrying gemini"
    assert (out["request_id"], out["correlation_id"]) == ("r-1", "c-1")
    assert (out["service"], out["level"], out["attempt"]) == ("script", "warning", 2)
    assert out["ts"].endswith("Z")
