"""The video API key is sent to the video API's own origin and nowhere else: not to a CDN
a finished job points at, not across a redirect, not to a non-http URL."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiohttp import web

from services.video.providers import HttpVideoAPI
from tests.contract.servers import serving
from vividly.config import Settings
from vividly.errors import ProviderError

KEY = "video-key-0123456789abcdef0123456789"


def recording_app(seen: list[dict[str, Any]], redirect_to: str | None = None) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append({"path": request.path, "headers": dict(request.headers)})
        if request.path == "/hop" and redirect_to:
            raise web.HTTPFound(redirect_to)
        return web.Response(body=b"mp4-bytes")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


def fetch(api_url: str, url: str) -> bytes:
    async def go() -> bytes:
        api = HttpVideoAPI(Settings(video_api_url=api_url, video_api_key=KEY))
        try:
            return await api.download(
                url, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
            )
        finally:
            await api.close()

    return asyncio.run(go())


def test_the_key_goes_to_the_video_api_and_not_to_a_cdn_or_across_a_redirect() -> None:
    cdn_seen: list[dict[str, Any]] = []
    api_seen: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        cdn = stack.enter_context(serving(recording_app(cdn_seen)))
        api = stack.enter_context(serving(recording_app(api_seen, redirect_to=f"{cdn}/signed.mp4")))
        assert fetch(api, f"{api}/v1/videos/j1/content") == b"mp4-bytes"
        assert fetch(api, f"{cdn}/videos/j1.mp4") == b"mp4-bytes"
        assert fetch(api, f"{api}/hop") == b"mp4-bytes"  # API → redirect → CDN
    assert [h["headers"].get("Authorization") for h in api_seen] == [f"Bearer {KEY}"] * 2
    assert [h["path"] for h in cdn_seen] == ["/videos/j1.mp4", "/signed.mp4"]
    for hit in cdn_seen:
        assert "Authorization" not in hit["headers"]
        assert KEY not in str(hit["headers"])
        assert hit["headers"]["traceparent"].startswith("00-")  # correlation still travels
    # Same host, another port is another origin.
    with serving(recording_app(cdn_seen)) as other:
        port_api = other.rsplit(":", 1)[0] + ":1"
        fetch(port_api, f"{other}/x.mp4")
    assert "Authorization" not in cdn_seen[-1]["headers"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "local://job", "ftp://host/x"])
def test_a_non_http_video_url_is_refused_permanently(url: str) -> None:
    with pytest.raises(ProviderError) as info:
        fetch("http://127.0.0.1:1", url)
    assert not info.value.is_retryable
