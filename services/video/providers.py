"""The video stage's external interfaces: the video job API (HTTP), object storage (S3
through boto3) and thumbnails (ffmpeg). Each has the real implementation and a small
in-process one behind the same protocol."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from yarl import URL

from vividly.config import Settings
from vividly.errors import ProviderError, classify
from vividly.media import FfmpegError, ffmpeg

# Headers for the S3 call being made in this context (boto3 runs in a worker thread;
# asyncio.to_thread copies the context, so the hook sees the caller's headers).
_s3_headers: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "s3_headers", default=None
)


class VideoAPI(Protocol):
    async def submit(
        self,
        script: str,
        duration_minutes: int,
        title: str,
        idempotency_key: str,
        headers: dict[str, str],
    ) -> str: ...

    async def status(self, job_id: str, headers: dict[str, str]) -> dict[str, Any]: ...

    async def cancel(self, job_id: str, headers: dict[str, str]) -> None:
        """Stop the job (its request was cancelled); a job already done stays done."""
        ...

    async def download(self, url: str, headers: dict[str, str]) -> bytes: ...


MAX_REDIRECTS = 5


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


class HttpVideoAPI:
    """The "Nano Banana" job API over HTTP (aiohttp, one pooled session)."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession | None = None) -> None:
        self.base = settings.video_api_url.rstrip("/")
        self.key = settings.video_api_key
        self.timeout = aiohttp.ClientTimeout(total=settings.http_timeout_s)
        self._session = session

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=200, limit_per_host=200)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, headers: dict[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **headers}

    async def _json(
        self, method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            async with self.session.request(
                method, url, json=body, headers=self._headers(headers)
            ) as resp:
                if resp.status >= 400:
                    text = (await resp.text())[:500]
                    raise ProviderError(
                        f"video API {method} {url}: HTTP {resp.status}",
                        retryable=resp.status == 429 or resp.status >= 500,
                        status=resp.status,
                        details={"response_body": text},
                    )
                data: dict[str, Any] = await resp.json()
                return data
        except ProviderError:
            raise
        except Exception as exc:
            raise classify(exc, f"video API {method} {url}") from exc

    async def submit(
        self,
        script: str,
        duration_minutes: int,
        title: str,
        idempotency_key: str,
        headers: dict[str, str],
    ) -> str:
        data = await self._json(
            "POST",
            f"{self.base}/v1/videos",
            {**headers, "Idempotency-Key": idempotency_key},
            {
                "script": script,
                "duration_minutes": duration_minutes,
                "style": "educational",
                "title": title,
            },
        )
        return str(data["job_id"])

    async def status(self, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
        return await self._json("GET", f"{self.base}/v1/videos/{quote(job_id, safe='')}", headers)

    async def cancel(self, job_id: str, headers: dict[str, str]) -> None:
        await self._json(
            "POST", f"{self.base}/v1/videos/{quote(job_id, safe='')}/cancel", headers, {}
        )

    async def download(self, url: str, headers: dict[str, str]) -> bytes:
        """Fetch the finished video. The API key goes only to the video API's own origin
        (scheme, host, port): a video URL on a CDN, or a redirect to one, gets the
        correlation headers and nothing else. Redirects are followed here, hop by hop,
        so that rule holds for every hop."""
        api_origin = _origin(URL(self.base))
        target = URL(url)
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                if target.scheme not in ("http", "https") or not target.host:
                    raise ProviderError(
                        f"video download: not an http(s) URL: {str(target)[:200]}",
                        retryable=False,
                    )
                sent = self._headers(headers) if _origin(target) == api_origin else dict(headers)
                async with self.session.get(target, headers=sent, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        target = target.join(URL(resp.headers["Location"]))
                        continue
                    if resp.status >= 400:
                        raise ProviderError(
                            f"video download: HTTP {resp.status}",
                            retryable=resp.status == 429 or resp.status >= 500,
                            status=resp.status,
                        )
                    return await resp.read()
            raise ProviderError(
                f"video download: more than {MAX_REDIRECTS} redirects", retryable=False
            )
        except ProviderError:
            raise
        except Exception as exc:
            raise classify(exc, "video download") from exc


class LocalVideoAPI:
    """In-process jobs that complete after ``job_seconds``; content is placeholder bytes."""

    def __init__(self, job_seconds: float = 0.0) -> None:
        self.job_seconds = job_seconds
        self.jobs: dict[str, float] = {}
        self.by_key: dict[str, str] = {}
        self.cancelled: set[str] = set()

    async def submit(
        self,
        script: str,
        duration_minutes: int,
        title: str,
        idempotency_key: str,
        headers: dict[str, str],
    ) -> str:
        if idempotency_key in self.by_key:
            return self.by_key[idempotency_key]
        job = uuid.uuid4().hex
        self.jobs[job] = time.monotonic()
        self.by_key[idempotency_key] = job
        return job

    async def cancel(self, job_id: str, headers: dict[str, str]) -> None:
        self.cancelled.add(job_id)

    async def status(self, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
        if job_id in self.cancelled:
            return {"status": "cancelled", "progress": 0, "video_url": None}
        elapsed = time.monotonic() - self.jobs[job_id]
        if elapsed >= self.job_seconds:
            return {"status": "completed", "progress": 100, "video_url": f"local://{job_id}"}
        return {
            "status": "processing",
            "progress": int(100 * elapsed / self.job_seconds),
            "video_url": None,
        }

    async def download(self, url: str, headers: dict[str, str]) -> bytes:
        return b"\x00\x00\x00\x18ftypmp42" + url.encode()


class Storage(Protocol):
    async def upload(
        self, key: str, data: bytes, content_type: str, headers: dict[str, str]
    ) -> str: ...


class S3Storage:
    """boto3 S3 client (moto's server locally); returns the object's CDN URL."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.cdn = settings.effective_cdn_base_url()
        self.extra: dict[str, str] = {"ACL": "public-read"} if settings.s3_public_read else {}
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id="local" if settings.s3_endpoint_url else None,
            aws_secret_access_key="local" if settings.s3_endpoint_url else None,
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=settings.http_timeout_s,
                read_timeout=settings.http_timeout_s,
                s3={"addressing_style": "path"},
            ),
        )
        self.client.meta.events.register("before-sign.s3.*", self._add_headers)

    @staticmethod
    def _add_headers(request: Any, **_: Any) -> None:
        for k, v in (_s3_headers.get() or {}).items():
            request.headers[k] = v

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception:
            self.client.create_bucket(Bucket=self.bucket)

    async def upload(
        self, key: str, data: bytes, content_type: str, headers: dict[str, str]
    ) -> str:
        def put() -> None:
            token = _s3_headers.set(headers)
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **self.extra
                )
            finally:
                _s3_headers.reset(token)

        try:
            await asyncio.to_thread(put)
        except Exception as exc:
            status = (
                getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
                if hasattr(exc, "response")
                else None
            )
            if isinstance(status, int):
                raise ProviderError(
                    f"S3 put {key}: HTTP {status}",
                    retryable=status == 429 or status >= 500,
                    status=status,
                ) from exc
            raise classify(exc, f"S3 put {key}") from exc
        return f"{self.cdn}/{key}"


class MemoryStorage:
    def __init__(self, base: str = "memory://cdn") -> None:
        self.base = base
        self.objects: dict[str, bytes] = {}

    async def upload(
        self, key: str, data: bytes, content_type: str, headers: dict[str, str]
    ) -> str:
        self.objects[key] = data
        return f"{self.base}/{key}"


class Thumbnailer(Protocol):
    async def thumbnail(self, video: bytes) -> bytes: ...


class FfmpegThumbnailer:
    """A JPEG of the frame one second in, 320 px wide, made by ffmpeg. The same video
    bytes give the same thumbnail, so recent results are kept by content hash."""

    def __init__(self, parallel: int = 2, cache_size: int = 256) -> None:
        self.sem = asyncio.Semaphore(parallel)
        self.cache: dict[str, bytes] = {}
        self.inflight: dict[str, asyncio.Future[bytes]] = {}
        self.cache_size = cache_size

    async def thumbnail(self, video: bytes) -> bytes:
        digest = hashlib.sha256(video).hexdigest()
        hit = self.cache.get(digest)
        if hit is not None:
            return hit
        # Single flight: many requests finishing with the same video wait for one ffmpeg.
        pending = self.inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.inflight[digest] = fut
        try:
            thumb = await self._make(video)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        finally:
            self.inflight.pop(digest, None)
        fut.set_result(thumb)
        if len(self.cache) >= self.cache_size:
            self.cache.pop(next(iter(self.cache)))
        self.cache[digest] = thumb
        return thumb

    async def _make(self, video: bytes) -> bytes:
        async with self.sem:
            with tempfile.TemporaryDirectory(prefix="thumb-") as tmp:
                src, out = Path(tmp) / "in.mp4", Path(tmp) / "out.jpg"
                src.write_bytes(video)
                try:
                    await ffmpeg(
                        "-ss",
                        "1",
                        "-i",
                        str(src),
                        "-frames:v",
                        "1",
                        "-vf",
                        "scale=320:-2",
                        str(out),
                    )
                except FfmpegError as exc:
                    raise ProviderError(f"thumbnail failed: {exc}", retryable=False) from exc
                if not out.exists():
                    raise ProviderError("thumbnail failed: no image written", retryable=False)
                return out.read_bytes()


class NullThumbnailer:
    async def thumbnail(self, video: bytes) -> bytes:
        return b"\xff\xd8\xff\xe0thumb\xff\xd9"
