"""Gemini API emulator: the endpoints the google-genai SDK calls, with real outputs.

- ``POST /v1/models/{model}:generateContent`` (or ``/v1beta/``) writes a narration script from the
  prompt: it reads the ``Target length: N words`` line and the context passages the
  script stage sends, and composes a script of about N words from them.
- ``POST /v1beta/models/{model}:batchEmbedContents`` (and ``:embedContent``) returns
  deterministic hashed bag-of-words embeddings: texts sharing words get close vectors,
  so retrieval over them behaves like retrieval.

    python -m emulators.gemini --port 8701
"""

from __future__ import annotations

import argparse
from typing import Any

from aiohttp import web

from emulators.knobs import Knobs, Recorder, install, serve
from vividly.localgen import DEFAULT_DIM, embed, write_script


def _prompt_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            if "text" in part:
                parts.append(part["text"])
    return "\n".join(parts)


def make_app(knobs: Knobs | None = None) -> web.Application:
    knobs = knobs or Knobs()
    recorder = Recorder()
    app = web.Application(client_max_size=8 * 1024 * 1024)
    install(app, knobs, recorder)

    async def model_action(request: web.Request) -> web.Response:
        model, _, action = request.match_info["model_action"].partition(":")
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(
                {"error": {"code": 400, "message": "body is not JSON"}}, status=400
            )
        if action == "generateContent":
            prompt = _prompt_text(body)
            if not prompt.strip():
                return web.json_response(
                    {"error": {"code": 400, "message": "contents must contain text"}}, status=400
                )
            text = write_script(prompt)
            return web.json_response(
                {
                    "candidates": [
                        {
                            "content": {"parts": [{"text": text}], "role": "model"},
                            "finishReason": "STOP",
                            "index": 0,
                        }
                    ],
                    "usageMetadata": {
                        "promptTokenCount": len(prompt.split()),
                        "candidatesTokenCount": len(text.split()),
                        "totalTokenCount": len(prompt.split()) + len(text.split()),
                    },
                    "modelVersion": model,
                }
            )
        if action == "batchEmbedContents":
            out = []
            for req in body.get("requests", []):
                text = " ".join(p.get("text", "") for p in req.get("content", {}).get("parts", []))
                dim = int(req.get("outputDimensionality") or DEFAULT_DIM)
                out.append({"values": embed(text, dim)})
            return web.json_response({"embeddings": out})
        if action == "embedContent":
            text = " ".join(p.get("text", "") for p in body.get("content", {}).get("parts", []))
            dim = int(body.get("outputDimensionality") or DEFAULT_DIM)
            return web.json_response({"embedding": {"values": embed(text, dim)}})
        return web.json_response(
            {"error": {"code": 404, "message": f"no action {action}"}}, status=404
        )

    app.router.add_post("/{version:v1|v1beta}/models/{model_action}", model_action)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m emulators.gemini")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8701)
    args = p.parse_args(argv)
    serve(make_app(), args.host, args.port)


if __name__ == "__main__":
    main()
