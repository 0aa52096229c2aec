"""The tracker's read side over HTTP: ``get_request_status`` and ``retry_stage`` against
the monitoring API, so the seed's retry example works unchanged::

    reader = ApiStatusReader("http://127.0.0.1:8000", token)
    tracker = RequestTracker(publisher, status_reader=reader)
    status = tracker.get_request_status(request_id)
    if status["status"] == "failed" and not tracker.retry_stage(request_id, status["error_stage"]):
        print("Max retries exceeded")

Standard library only (urllib), synchronous like the seed's API.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

from vividly.tracker import Position, ReadModelBehind


class ReadSideError(RuntimeError):
    """The monitoring API answered with an error the caller should see."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"monitoring API error {status}: {detail}")
        self.status = status
        self.detail = detail


class ApiStatusReader:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One API call: (status, the JSON body, or the error's ``detail``)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw).get("detail")
            except ValueError:
                detail = raw.decode("utf-8", "replace")
            return exc.code, detail

    def _waiting(
        self, method: str, path: str, body: Any, position: Position | None, wait_s: float
    ) -> tuple[int, Any]:
        """One call, asked again while the read model is behind ``position`` and
        ``wait_s`` is not spent (the API grants at most API_MAX_WAIT_S a call)."""
        deadline = time.monotonic() + wait_s
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            status, answer = self.call(
                method, path + _after(position, remaining), body, timeout=self.timeout + remaining
            )
            if not _behind(status, answer) or deadline - time.monotonic() <= 0.05:
                return status, answer

    def get_request_status(
        self, request_id: str, position: Position | None = None, wait_s: float = 5.0
    ) -> dict[str, Any] | None:
        """The request as the monitoring API shows it; with a ``position`` (where the
        caller's last write landed), only once the read model has folded past it."""
        status, body = self._waiting(
            "GET", f"/api/v1/monitoring/requests/{quote(request_id)}", None, position, wait_s
        )
        if status == 404:
            return None
        if status != 200:
            raise _error(status, body, position)
        result: dict[str, Any] = body
        return result

    def retry_stage(
        self,
        request_id: str,
        stage: str,
        requested_by: str,
        position: Position | None = None,
        wait_s: float = 5.0,
    ) -> bool:
        """True when the retry was accepted; False when the request's retry budget is
        spent. Other refusals (not failed, wrong stage, unknown request) raise."""
        status, body = self._waiting(
            "POST",
            f"/api/v1/requests/{quote(request_id)}/retry",
            {"stage": stage},
            position,
            wait_s,
        )
        if status == 202:
            return True
        if status == 409 and isinstance(body, dict) and body.get("code") == "retry_budget_spent":
            return False
        raise _error(status, body, position)


#: The longest wait the API grants one call; a longer wait is several calls.
API_MAX_WAIT_S = 10.0


def _after(position: Position | None, wait_s: float) -> str:
    if position is None:
        return ""
    wait = min(max(wait_s, 0.0), API_MAX_WAIT_S)
    return "?" + urlencode({"position": str(position), "wait_s": f"{wait:.3f}"})


def _behind(status: int, body: Any) -> bool:
    return status == 503 and isinstance(body, dict) and body.get("code") == "read_model_behind"


def _error(status: int, body: Any, position: Position | None) -> Exception:
    if _behind(status, body):
        folded = body.get("folded")
        return ReadModelBehind(str(body.get("message")), position, folded)
    return ReadSideError(status, body)
