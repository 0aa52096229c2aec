"""Each external interface's real client (against its local server) and its in-process
stand-in pass the same assertions, so the stand-ins used by unit tests and the framework
benchmark cannot drift from what the real clients do."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from emulators.gemini import make_app as gemini_app
from emulators.knobs import Knobs
from emulators.video import make_app as video_app
from services.notify.providers import Mailer, MemoryMailer, SmtpMailer
from services.rag.providers import Embedder, GeminiEmbedder, HashEmbedder
from services.script.providers import GeminiScriptWriter, LocalScriptWriter, ScriptWriter
from services.video.providers import (
    HttpVideoAPI,
    LocalVideoAPI,
    MemoryStorage,
    S3Storage,
    Storage,
    VideoAPI,
)
from tests.contract.servers import serving
from vividly.config import Settings
from vividly.errors import ProviderError
from vividly.platform.stack import ROOT, _spawn, free_port, stop_pid, wait_for_port

HEADERS = {
    "X-Correlation-ID": "c0ffee00-0000-4000-8000-000000000001",
    "traceparent": "00-c0ffee00000040008000000000000001-0123456789abcdef-01",
}


@pytest.fixture(scope="module")
def gemini() -> Iterator[str]:
    with serving(gemini_app()) as url:
        yield url


@pytest.fixture(params=["local", "gemini-sdk"])
def embedder(request: pytest.FixtureRequest) -> Embedder:
    if request.param == "local":
        return HashEmbedder(384)
    url = request.getfixturevalue("gemini")
    return GeminiEmbedder(Settings(gemini_base_url=url, embedding_dim=384))


def test_embedder_contract(embedder: Embedder) -> None:
    texts = [
        "photosynthesis chlorophyll light energy",
        "chlorophyll absorbs light energy",
        "the american revolution and independence",
    ]
    vecs = asyncio.run(embedder.embed(texts, HEADERS))
    assert len(vecs) == 3
    assert all(len(v) == 384 for v in vecs)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vecs)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    assert asyncio.run(embedder.embed(texts[:1], HEADERS))[0] == pytest.approx(vecs[0])


@pytest.fixture(params=["local", "gemini-sdk"])
def writer(request: pytest.FixtureRequest) -> ScriptWriter:
    if request.param == "local":
        return LocalScriptWriter()
    url = request.getfixturevalue("gemini")
    return GeminiScriptWriter(Settings(gemini_base_url=url))


def test_script_writer_contract(writer: ScriptWriter) -> None:
    prompt = (
        "Topic: Volcanoes\nLearning objective: Explain eruptions\nGrade level: 6\n"
        "Target length: 300 words\nContext:\n[Magma — x]\nMagma rises through cracks "
        "in the crust. Runny lava flows gently while thick lava explodes.\n"
    )
    text = asyncio.run(writer.write(prompt, HEADERS))
    assert "Volcanoes" in text
    assert 270 <= len(text.split()) <= 420
    assert "Magma rises through cracks in the crust." in text


def test_the_sdk_sends_our_headers_to_gemini(gemini: str) -> None:
    import json
    import urllib.request

    asyncio.run(
        GeminiScriptWriter(Settings(gemini_base_url=gemini)).write(
            "Topic: Tides\nTarget length: 50 words\n", HEADERS
        )
    )
    with urllib.request.urlopen(f"{gemini}/_emulator/requests?path=/v1", timeout=5) as r:
        last = json.loads(r.read())["requests"][-1]
    assert last["headers"]["x-correlation-id"] == HEADERS["X-Correlation-ID"]
    assert last["headers"]["traceparent"] == HEADERS["traceparent"]


@pytest.fixture(params=["local", "http"])
def video_api(request: pytest.FixtureRequest) -> Iterator[VideoAPI]:
    if request.param == "local":
        yield LocalVideoAPI(0.3)
        return
    with serving(video_app(Knobs(job_seconds=0.3))) as url:
        api = HttpVideoAPI(Settings(video_api_url=url))
        yield api


def test_video_api_contract(video_api: VideoAPI) -> None:
    async def run() -> tuple[str, str, dict[str, Any], bytes]:
        try:
            a = await video_api.submit(
                "Welcome! Today we explore tides.", 1, "Tides", "r1:1", HEADERS
            )
            b = await video_api.submit(
                "Welcome! Today we explore tides.", 1, "Tides", "r1:1", HEADERS
            )
            deadline = time.monotonic() + 30
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                status = await video_api.status(a, HEADERS)
                if status["status"] == "completed":
                    break
                assert status["status"] in ("queued", "processing")
                assert 0 <= int(status["progress"]) < 100
                await asyncio.sleep(0.05)
            data = await video_api.download(status["video_url"], HEADERS)
            return a, b, status, data
        finally:
            if isinstance(video_api, HttpVideoAPI):
                await video_api.close()

    a, b, status, data = asyncio.run(run())
    assert a == b, "the same idempotency key is the same job"
    assert status["status"] == "completed"
    assert status["progress"] == 100
    assert len(data) > 8
    assert data[4:8] == b"ftyp"


def test_video_api_cancel_contract(video_api: VideoAPI) -> None:
    """A cancelled job reports "cancelled" (never completes), on both implementations."""

    async def run() -> dict[str, Any]:
        try:
            job = await video_api.submit("A job nobody wants.", 1, "Unwanted", "r9:1", HEADERS)
            await video_api.cancel(job, HEADERS)
            return await video_api.status(job, HEADERS)
        finally:
            if isinstance(video_api, HttpVideoAPI):
                await video_api.close()

    assert asyncio.run(run())["status"] == "cancelled"


def test_video_emulator_serves_each_jobs_rendered_file(tmp_path: Path) -> None:
    """Downloads are the rendered MP4's bytes (held in memory), 409 until the job is done."""
    import urllib.error
    import urllib.request

    def get(url: str) -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    async def submit(url: str, *scripts: str) -> list[str]:
        api = HttpVideoAPI(Settings(video_api_url=url))
        try:
            return [await api.submit(s, 1, "Title", f"{s}:1", HEADERS) for s in scripts]
        finally:
            await api.close()

    with serving(video_app(Knobs(job_seconds=0.5), work_dir=tmp_path)) as url:
        tides, moon = asyncio.run(submit(url, "Tides rise twice a day.", "The Moon has phases."))
        early = get(f"{url}/v1/videos/{tides}/content")
        assert early[0] == 409
        assert b"job is" in early[2]
        videos = {}
        for job in (tides, moon):
            deadline = time.monotonic() + 30
            while (status := get(f"{url}/v1/videos/{job}"))[0] == 200 and (
                b'"completed"' not in status[2]
            ):
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            code, ctype, body = get(f"{url}/v1/videos/{job}/content")
            assert (code, ctype) == (200, "video/mp4")
            assert get(f"{url}/v1/videos/{job}/content")[2] == body, "the same bytes again"
            videos[job] = body
    rendered = {p.read_bytes() for p in tmp_path.glob("*.mp4")}
    assert set(videos.values()) == rendered
    assert len(rendered) == 2


def _start_s3_emulator(port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    """``python -m emulators.s3`` on ``port``, answering; the caller stops it."""
    log = tmp_path / "s3.log"
    proc = _spawn([sys.executable, "-m", "emulators.s3", "--port", str(port)], log, cwd=ROOT)
    wait_for_port(port, proc, "emulators.s3", log, 30)
    return proc


@pytest.fixture(params=["memory", "moto-server", "emulators.s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """The in-process store; moto's full server; and the S3-only moto the stack runs."""
    if request.param == "memory":
        yield MemoryStorage("memory://cdn/vividly-videos")
        return
    port = free_port()
    if request.param == "moto-server":
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        stop = server.stop
    else:
        proc = _start_s3_emulator(port, tmp_path)

        def stop() -> None:
            stop_pid(proc.pid)

    try:
        s3 = S3Storage(Settings(s3_endpoint_url=f"http://127.0.0.1:{port}"))
        s3.ensure_bucket()
        yield s3
    finally:
        stop()


def test_s3_emulator_worker_does_not_outlive_a_killed_server(tmp_path: Path) -> None:
    import os
    import signal

    import psutil

    port = free_port()
    proc = _start_s3_emulator(port, tmp_path)
    workers: list[psutil.Process] = []
    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "Granian serves from a worker process"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        _gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"orphaned worker(s) {[w.pid for w in alive]} hold port {port}"
    finally:
        stop_pid(proc.pid)
        for w in workers:
            if w.is_running():
                stop_pid(w.pid)


def test_storage_contract(storage: Storage) -> None:
    url = asyncio.run(storage.upload("r1.mp4", b"\x00\x00\x00\x18ftypmp42", "video/mp4", HEADERS))
    assert url.endswith("/vividly-videos/r1.mp4")
    if url.startswith("http"):
        import urllib.request

        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.read() == b"\x00\x00\x00\x18ftypmp42"


def test_s3_calls_carry_correlation_headers() -> None:
    """boto3 pointed at a server that records what it receives."""
    seen: list[dict[str, str]] = []

    async def put(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        await request.read()
        return web.Response(status=200, headers={"ETag": '"x"'})

    app = web.Application()
    app.router.add_put("/{tail:.*}", put)
    with serving(app) as url:
        s3 = S3Storage(Settings(s3_endpoint_url=url))
        asyncio.run(s3.upload("r9.jpg", b"\xff\xd8", "image/jpeg", HEADERS))
    assert seen[0]["X-Correlation-ID"] == HEADERS["X-Correlation-ID"]
    assert seen[0]["traceparent"] == HEADERS["traceparent"]


@pytest.fixture(params=["memory", "smtp"])
def mailer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Mailer, Any]]:
    if request.param == "memory":
        m = MemoryMailer()
        yield m, lambda: len(m.sent)
        return
    from aiosmtpd.controller import Controller

    from emulators.smtp_sink import StoreOnDisk

    port = free_port()
    controller = Controller(StoreOnDisk(tmp_path), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield (
            SmtpMailer(Settings(smtp_host="127.0.0.1", smtp_port=port)),
            lambda: len(list(tmp_path.glob("*.eml"))),
        )
    finally:
        controller.stop()


def test_mailer_contract(mailer: tuple[Mailer, Any]) -> None:
    m, count = mailer
    asyncio.run(m.send(_msg()))
    assert count() == 1


def _msg(to: str = "s@school.edu") -> MIMEText:
    msg = MIMEText("hello", "plain", "utf-8")
    msg["From"], msg["To"], msg["Subject"] = "a@vividly.edu", to, "Hi"
    return msg


class RefuseSome:
    """Stores messages; refuses recipients at blocked.example with 550."""

    def __init__(self, directory: Path) -> None:
        from emulators.smtp_sink import StoreOnDisk

        self.store = StoreOnDisk(directory)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.endswith("@blocked.example"):
            return "550 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return await self.store.handle_DATA(server, session, envelope)


def test_smtp_mailer_keeps_its_connection_and_survives_a_refused_recipient(
    tmp_path: Path,
) -> None:
    from aiosmtpd.controller import Controller

    port = free_port()
    controller = Controller(RefuseSome(tmp_path), hostname="127.0.0.1", port=port)
    controller.start()
    mailer = SmtpMailer(Settings(smtp_host="127.0.0.1", smtp_port=port))
    try:

        async def run() -> None:
            for _ in range(3):
                await mailer.send(_msg())
            with pytest.raises(ProviderError) as info:
                await mailer.send(_msg("x@blocked.example"))
            assert getattr(info.value, "is_retryable", None) is False
            await mailer.send(_msg())
            await mailer.close()

        asyncio.run(run())
    finally:
        controller.stop()
    assert len(list(tmp_path.glob("*.eml"))) == 4
    assert mailer.connections_opened == 1


def test_smtp_mailer_reconnects_when_the_server_dropped_its_kept_connection(
    tmp_path: Path,
) -> None:
    from aiosmtpd.controller import Controller

    from emulators.smtp_sink import StoreOnDisk

    port = free_port()
    mailer = SmtpMailer(Settings(smtp_host="127.0.0.1", smtp_port=port))

    def sink() -> Controller:
        c = Controller(StoreOnDisk(tmp_path), hostname="127.0.0.1", port=port)
        c.start()
        return c

    controller = sink()
    asyncio.run(mailer.send(_msg()))
    controller.stop()  # the kept connection dies with the server
    controller = sink()
    try:
        asyncio.run(mailer.send(_msg()))
    finally:
        controller.stop()
    assert len(list(tmp_path.glob("*.eml"))) == 2
    assert mailer.connections_opened == 2


def test_smtp_refusal_is_a_provider_error() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(ProviderError) as info:
        asyncio.run(SmtpMailer(Settings(smtp_port=port, http_timeout_s=2)).send(MIMEText("x")))
    assert getattr(info.value, "is_retryable", None) is True


def test_the_emulators_control_endpoint_takes_only_json_and_logs_no_credential(
    gemini: str,
) -> None:
    import hashlib
    import json
    import urllib.error
    import urllib.request

    form = urllib.request.Request(
        f"{gemini}/_emulator/config",
        method="POST",
        data=b"error_rate=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(form, timeout=5)
    assert refused.value.code == 415
    with urllib.request.urlopen(f"{gemini}/_emulator/config", timeout=5) as r:
        assert json.loads(r.read())["error_rate"] == 0.0  # unchanged
    not_object = urllib.request.Request(
        f"{gemini}/_emulator/config",
        method="POST",
        data=b"[1]",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(not_object, timeout=5)
    assert bad.value.code == 422
    key = "gemini-key-that-must-not-be-logged-0123"
    asyncio.run(
        GeminiScriptWriter(Settings(gemini_base_url=gemini, gemini_api_key=key)).write(
            "Topic: Tides\nTarget length: 50 words\n", HEADERS
        )
    )
    with urllib.request.urlopen(f"{gemini}/_emulator/requests?path=/v1", timeout=5) as r:
        text = r.read().decode()
    assert key not in text
    last = json.loads(text)["requests"][-1]
    sent = last["headers"]["x-goog-api-key"]
    assert sent == f"[redacted sha256:{hashlib.sha256(key.encode()).hexdigest()[:12]}]"
