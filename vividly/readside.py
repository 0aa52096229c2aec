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
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote


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

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw).get("detail")
            except ValueError:
                detail = raw.decode("utf-8", "replace")
            return exc.code, detail

    def get_request_status(self, request_id: str) -> dict[str, Any] | None:
        status, body = self._call("GET", f"/api/v1/monitoring/requests/{quote(request_id)}")
        if status == 404:
            return None
        if status != 200:
            raise ReadSideError(status, body)
        result: dict[str, Any] = body
        return result

    def retry_stage(self, request_id: str, stage: str, requested_by: str) -> bool:
        """True when the retry was accepted; False when the request's retry budget is
        spent. Other refusals (not failed, wrong stage, unknown request) raise."""
        status, body = self._call(
            "POST", f"/api/v1/requests/{quote(request_id)}/retry", {"stage": stage}
        )
        if status == 202:
            return True
        if status == 409 and isinstance(body, dict) and body.get("code") == "retry_budget_spent":
            return False
        raise ReadSideError(status, body)
