"""Settings for every Vividly process, read from ``VIVIDLY_*`` environment variables.

Nothing here does I/O at import time: a :class:`Settings` is built in ``main()`` and
passed down. ``DATABASE_URL`` is honoured as well as ``VIVIDLY_DATABASE_URL``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The six stages, in pipeline order.
STAGES: tuple[str, ...] = (
    "validation",
    "rag_retrieval",
    "script_generation",
    "video_generation",
    "video_processing",
    "notification",
)

TRACKING_TOPIC = "tracking.events"
DLQ_TOPIC = "requests.dlq"

#: Stage topics: each stage service consumes one and produces the next.
STAGE_TOPICS: tuple[str, ...] = (
    "requests.submitted",
    "requests.validated",
    "requests.retrieved",
    "requests.scripted",
    "requests.rendered",
)
SUBMITTED, VALIDATED, RETRIEVED, SCRIPTED, RENDERED = STAGE_TOPICS
#: Every topic of the pipeline: the stage topics, the tracking log and the dead letters.
PIPELINE_TOPICS: tuple[str, ...] = (*STAGE_TOPICS, TRACKING_TOPIC, DLQ_TOPIC)

#: How long one item may reasonably spend in each stage (seconds): the bound of the
#: "request stuck in a stage" alert, exported as vividly_stage_expected_seconds.
STAGE_EXPECTED_S: dict[str, float] = {
    "validation": 30,
    "rag_retrieval": 60,
    "script_generation": 180,
    "video_generation": 900,
    "video_processing": 300,
    "notification": 60,
}

#: The topic each stage's work items arrive on (a retry republishes there).
STAGE_INPUT_TOPICS: dict[str, str] = {
    "validation": SUBMITTED,
    "rag_retrieval": VALIDATED,
    "script_generation": RETRIEVED,
    "video_generation": SCRIPTED,
    "video_processing": SCRIPTED,
    "notification": RENDERED,
}


class Settings(BaseSettings):
    """Configuration shared by the SDK, the services and the CLI."""

    model_config = SettingsConfigDict(env_prefix="VIVIDLY_", extra="ignore")

    # --- Kafka -----------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated."
    )
    topic_partitions: int = Field(default=6, ge=1, description="Partitions per topic on create.")
    replication_factor: int = Field(default=1, ge=1)
    fetch_wait_max_ms: int = Field(
        default=100,
        ge=0,
        description="How long the broker may hold a fetch for data; Apache Kafka answers "
        "as soon as data arrives, so this bounds idle polling, not the hand-off latency.",
    )
    session_timeout_ms: int = Field(default=6000, ge=1000, description="Consumer session timeout.")
    tracking_retention_ms: int = Field(
        default=-1,
        ge=-1,
        description="retention.ms of tracking.events: -1 keeps the log forever (it is the "
        "source of truth). Applied when topics are created and to existing topics.",
    )
    producer_linger_ms: float = Field(default=1.0, ge=0)
    producer_compression: str = Field(default="lz4")
    producer_queue_max_messages: int = Field(default=500_000, ge=1000)
    delivery_timeout_ms: int = Field(default=30_000, ge=1000)

    # --- the consumer loop -------------------------------------------------------------
    max_in_flight: int = Field(default=64, ge=1, description="Messages handled at once.")
    drain_timeout_s: float = Field(default=30.0, ge=0)
    commit_interval_s: float = Field(default=0.5, gt=0)
    causal_events: bool = Field(
        default=True,
        description="Publish a handler's outputs only once its tracking events are "
        "acknowledged, so the next stage's events always follow this one's in the log.",
    )

    # --- tracker -----------------------------------------------------------------------
    producer_name: str = Field(default="vividly", description="Service name put on events.")
    max_message_bytes: int = Field(
        default=512 * 1024,
        ge=64 * 1024,
        description="Largest work item or tracking event a consumer takes; a larger one is "
        "dead-lettered (stage topics) or quarantined (tracking.events) as oversized.",
    )
    max_payload_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Limit for output/event/error JSON data."
    )

    # --- Postgres ----------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("VIVIDLY_DATABASE_URL", "DATABASE_URL")
    )

    # --- the embedded local stack ------------------------------------------------------
    home: Path = Field(default=Path(".vividly"), description="Where the local stack keeps state.")
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(
        default=9093, ge=1, le=65535, description="The embedded broker's KRaft controller."
    )
    kafka_heap: str = Field(
        default="384m", pattern=r"^[0-9]+[mMgG]$", description="The embedded broker's JVM heap."
    )
    pg_port: int = Field(default=5433, ge=1, le=65535)
    api_port: int = Field(default=8000, ge=1, le=65535)
    gemini_port: int = Field(default=8701, ge=1, le=65535, description="Gemini emulator.")
    video_port: int = Field(default=8702, ge=1, le=65535, description="Video API emulator.")
    s3_port: int = Field(default=8703, ge=1, le=65535, description="moto's S3 server.")
    jaeger_otlp_port: int = Field(
        default=4318, ge=1, le=65535, description="The local Jaeger's OTLP/HTTP receiver."
    )
    jaeger_otlp_grpc_port: int = Field(
        default=4317, ge=1, le=65535, description="The local Jaeger's OTLP/gRPC receiver."
    )
    jaeger_query_port: int = Field(
        default=16686, ge=1, le=65535, description="The local Jaeger's query API (and UI)."
    )
    jaeger_query_grpc_port: int = Field(default=16685, ge=1, le=65535)
    jaeger_health_port: int = Field(default=13133, ge=1, le=65535)
    jaeger_query_url: str = Field(
        default="",
        description="Jaeger's query API, read by GET …/requests/{id}/trace (never exposed "
        "to callers: Jaeger has no login); empty: the route answers 503.",
    )

    # --- stages: retries and breakers -------------------------------------------------
    # One policy for both (vividly.errors.RetryPolicy): a stage's attempts, and the tries
    # the consumer loop gives a handler that raises a RetryableError.
    stage_max_attempts: int = Field(
        default=3, ge=1, description="Tries per stage (and per handler in the loop)."
    )
    retry_backoff_s: float = Field(default=1.0, ge=0, description="First retry delay.")
    retry_backoff_max_s: float = Field(default=30.0, ge=0)
    retry_jitter: float = Field(default=0.2, ge=0, le=1, description="± fraction of delay.")
    breaker_fail_max: int = Field(default=5, ge=1)
    breaker_reset_timeout_s: float = Field(default=10.0, gt=0)
    http_timeout_s: float = Field(default=30.0, gt=0)

    # --- external APIs (local emulators by default; real endpoints work unchanged) -----
    gemini_base_url: str = "http://127.0.0.1:8701"
    gemini_api_key: str = "local-emulator-key"
    gemini_model: str = "gemini-2.5-flash"
    gemini_embedding_model: str = "gemini-embedding-001"
    embedding_dim: int = Field(default=384, ge=8)
    video_api_url: str = "http://127.0.0.1:8702"
    video_api_key: str = "local-emulator-key"
    video_poll_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait between two polls of a video job (the seed polls every "
        "10 s); within it, polls are timed by the job's progress.",
    )
    video_processing_concurrency: int = Field(default=32, ge=1)
    video_timeout_s: float = Field(default=600.0, gt=0)
    s3_endpoint_url: str | None = "http://127.0.0.1:8703"
    s3_bucket: str = "vividly-videos"
    s3_region: str = "us-east-1"
    s3_public_read: bool = Field(
        default=True, description="Upload objects public-read so the CDN URL serves them."
    )
    cdn_base_url: str | None = Field(
        default=None, description="Public URL prefix of the bucket; default: the S3 endpoint."
    )
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=8025, ge=1, le=65535)
    smtp_from: str = "Vividly <noreply@vividly.edu>"
    email_claim_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="How long an email claim shields a send in progress; a claim older "
        "than this belongs to a sender that died, and the email is sent again (same "
        "Message-ID).",
    )
    providers: str = Field(
        default="real",
        pattern="^(real|null)$",
        description="real: the external APIs (or their emulators); null: in-process "
        "stand-ins with the same interfaces (the framework benchmark).",
    )
    rag_cache_ttl_s: float = Field(default=3600.0, ge=0)
    rag_top_k: int = Field(default=5, ge=1, le=50)

    # --- the read side -----------------------------------------------------------------
    projector_batch_max: int = Field(
        default=10_000, ge=1, description="Most tracking events folded in one transaction."
    )
    projector_on_log_mismatch: str = Field(
        default="refuse",
        pattern="^(refuse|rebuild)$",
        description="When the read model's stored offsets do not belong to the log (another "
        "cluster, a recreated topic, offsets past the end or before the start): refuse to "
        "fold (exit; `vividly projector rebuild` mends it) or rebuild from the log.",
    )
    projector_group: str = Field(
        default="vividly-projector",
        description="The live projector's consumer group: the processes folding one read "
        "model share it; a second read model of the same log (another database) needs "
        "its own.",
    )
    api_host: str = Field(default="127.0.0.1", description="Where the monitoring API listens.")
    jwt_secret: str | None = Field(
        default=None,
        description="HS256 secret for API tokens; default: one generated into VIVIDLY_HOME.",
    )
    jwt_issuer: str = "vividly"
    token_ttl_s: int = Field(default=8 * 3600, ge=60, description="Lifetime of minted tokens.")
    sse_heartbeat_s: float = Field(default=15.0, gt=0, description="SSE keep-alive interval.")
    sse_max_clients: int = Field(
        default=1024,
        ge=1,
        description="Stream clients per API process; beyond it, 429 (bench.api measures "
        "1,000 on one process).",
    )
    sse_max_client_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes queued for one stream client; beyond it the client is cut off "
        "(told to resync with its last id).",
    )
    sse_send_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A stream client that takes longer to accept one write is closed; it "
        "resumes with the id of the last whole frame it read.",
    )
    api_db_pool_size: int = Field(default=10, ge=1)
    api_trace_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How long GET …/requests/{id}/trace waits for the trace backend.",
    )
    api_submit_visible_s: float = Field(
        default=3.0,
        ge=0,
        description="How long a submit waits for the read model to show the new request "
        "(its Location), after the log acknowledged it; the answer says whether it did.",
    )
    api_max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request body the API reads; a bigger one is 413 before parsing.",
    )
    max_manual_retries: int = Field(
        default=3, ge=0, description="Retries a person may ask for per request."
    )
    bulk_max_requests: int = Field(
        default=50_000,
        ge=1,
        description="Most requests one bulk retry or cancel may cover (a larger match is "
        "refused with the count: narrow the filter).",
    )
    stage_expected_s: dict[str, float] = Field(
        default_factory=lambda: dict(STAGE_EXPECTED_S),
        description="Seconds a request may go without an event in each stage before it "
        "shows as stalled (JSON object; stages left out keep their default).",
    )

    stalled_refresh_s: float = Field(
        default=5.0, gt=0, description="How often the API recounts stalled requests (gauge)."
    )

    def expected_s(self, stage: str | None) -> float:
        """How long a request may stay silent in ``stage`` before it is stalled."""
        if stage is None:
            return max(STAGE_EXPECTED_S.values())
        return float(self.stage_expected_s.get(stage, STAGE_EXPECTED_S.get(stage, 300.0)))

    # --- metrics -----------------------------------------------------------------------
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Serve /metrics here (0: not served)."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address /metrics binds to.")
    kafka_stats_interval_ms: int = Field(
        default=5000, ge=0, description="librdkafka statistics (consumer lag) interval; 0 off."
    )

    # --- logging -----------------------------------------------------------------------
    log_level: str = Field(default="INFO")

    def local_database_url(self) -> str:
        """The URL of the embedded Postgres started by ``vividly up`` (its password is
        kept in ``$VIVIDLY_HOME/pg-password``, beside the JWT secret)."""
        return local_pg_url(self.pg_port, ensure_secret_file(self.home / PG_PASSWORD_FILE))

    def effective_jwt_secret(self) -> str:
        """The configured secret, else one kept in ``$VIVIDLY_HOME/jwt-secret`` (made on
        first use, mode 0600), so the API and ``vividly token`` agree locally."""
        if self.jwt_secret:
            return self.jwt_secret
        return ensure_secret_file(self.home / "jwt-secret", 48)

    def effective_database_url(self) -> str:
        return self.database_url or self.local_database_url()

    def effective_cdn_base_url(self) -> str:
        if self.cdn_base_url:
            return self.cdn_base_url.rstrip("/")
        base = (self.s3_endpoint_url or f"https://{self.s3_bucket}.s3.amazonaws.com").rstrip("/")
        return f"{base}/{self.s3_bucket}" if self.s3_endpoint_url else base


# --------------------------------------------------------------- local secrets
PG_PASSWORD_FILE = "pg-password"


def ensure_secret_file(path: Path, nbytes: int = 32) -> str:
    """The secret kept in ``path`` (mode 0600), made on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


def local_pg_url(port: int, password: str) -> str:
    return f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{port}/postgres"


def topic_plan(settings: Settings, names: Iterable[str] = PIPELINE_TOPICS) -> dict[str, int]:
    """The topics to create, with their partition counts: what every process that creates
    topics (``vividly up``, the API, the projector, each service's loop) asks for."""
    return dict.fromkeys(names, settings.topic_partitions)
