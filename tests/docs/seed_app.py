"""Stand-ins for the application code the seed's worker calls but does not show (its
cache, RAG, Gemini and video calls, CDN, email): small and deterministic, with switches a
test turns to make one step fail. What the worker does with our SDK is the real thing."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from pybreaker import CircuitBreakerError

from vividly import TrackingSession

__all__ = [
    "CacheService",
    "CircuitBreakerError",
    "Session",
    "call_gemini_api",
    "call_nano_banana_api",
    "check_nano_banana_status",
    "download_video",
    "generate_thumbnail",
    "process_content_request_from_stage",
    "retrieve_oer_content",
    "send_email",
    "send_error_notification",
    "student_email",
    "student_id",
    "traceback",
    "upload_to_cdn",
]

#: The seed's worker sends to free variables of these names.
student_email = "student@example.org"
student_id = "s-seed"


#: The seed's ``db: Session``: what hands the tracker its publisher and reader.
Session = TrackingSession


@dataclass
class World:
    """What the stand-ins did, and the switches that make a step fail."""

    fail_video: str | None = None
    emails: list[dict[str, Any]] = field(default_factory=list)
    error_notifications: list[tuple[str, str, str]] = field(default_factory=list)
    resumed: list[tuple[str, str]] = field(default_factory=list)


WORLD = World()


class CacheService:
    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def set(self, key: str, value: Any, ttl: int = 0) -> None:
        self._data[key] = value


def retrieve_oer_content(topic: str, learning_objective: str, top_k: int) -> list[dict[str, Any]]:
    return [
        {"source": f"oer-{i}", "text": f"{topic}: {learning_objective} ({i})"} for i in range(top_k)
    ]


def call_gemini_api(topic: str, learning_objective: str, context: list[dict[str, Any]]) -> str:
    return f"A short lesson on {topic}. " + " ".join(c["text"] for c in context)


def call_nano_banana_api(script: str, duration_minutes: int, style: str) -> str:
    return f"job-{abs(hash(script)) % 10_000}"


def check_nano_banana_status(job_id: str) -> dict[str, Any]:
    if WORLD.fail_video:
        return {"status": "failed", "error": WORLD.fail_video, "progress": 40}
    return {
        "status": "completed",
        "video_url": f"https://video.example/{job_id}.mp4",
        "progress": 100,
    }


def download_video(url: str) -> bytes:
    return b"\x00\x00\x00\x18ftypmp42" + url.encode()


def upload_to_cdn(data: bytes, filename: str) -> str:
    return f"https://cdn.example/{filename}"


def generate_thumbnail(data: bytes) -> str:
    return "https://cdn.example/thumb.jpg"


def send_email(to: str, template: str, context: dict[str, Any]) -> None:
    WORLD.emails.append({"to": to, "template": template, **context})


def send_error_notification(student_id: str, topic: str, error: str) -> None:
    WORLD.error_notifications.append((student_id, topic, error))


def process_content_request_from_stage(db: Any, request_id: str, stage: str) -> None:
    WORLD.resumed.append((request_id, stage))
