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
import hashlib
import itertools
import math
import re
from typing import Any

from aiohttp import web

from emulators.knobs import Knobs, Recorder, install, serve

DEFAULT_DIM = 384
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "is",
        "are",
        "was",
        "were",
        "be",
        "by",
        "as",
        "at",
        "it",
        "its",
        "this",
        "that",
        "from",
        "into",
        "how",
        "why",
        "what",
        "which",
        "who",
        "explain",
        "describe",
        "students",
        "student",
        "grade",
    ]
)


def embed(text: str, dim: int = DEFAULT_DIM) -> list[float]:
    """Hashed bag of words (unigrams + bigrams), L2-normalised."""
    vec = [0.0] * dim
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP]
    grams = words + [f"{a}_{b}" for a, b in itertools.pairwise(words)]
    for g in grams:
        h = hashlib.blake2b(g.encode(), digest_size=8).digest()
        idx = int.from_bytes(h[:4], "little") % dim
        vec[idx] += 1.0 if h[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _prompt_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            if "text" in part:
                parts.append(part["text"])
    return "\n".join(parts)


def _field(prompt: str, name: str, default: str = "") -> str:
    m = re.search(rf"^{name}:\s*(.+)$", prompt, re.M | re.I)
    return m.group(1).strip() if m else default


def write_script(prompt: str) -> str:
    """A narration script of about the requested length, built from the prompt."""
    topic = _field(prompt, "Topic", "today's topic")
    objective = _field(prompt, "Learning objective", f"understand {topic}")
    grade = _field(prompt, "Grade level", "")
    try:
        target = int(_field(prompt, "Target length", "300").split()[0])
    except ValueError:
        target = 300
    context = prompt.split("Context:", 1)[1] if "Context:" in prompt else ""
    # Drop the "[title — source]" line above each passage; keep the passage text.
    context = "\n".join(line for line in context.splitlines() if not line.startswith("["))
    sentences = [
        s.strip()
        for s in re.split(r"(?<=[.!?])\s+", context)
        if len(s.split()) >= 4 and not s.strip().startswith("[")
    ]
    if not sentences:
        sentences = [f"{topic} is an important idea worth understanding step by step."]
    intro = (
        f"Welcome! Today we explore {topic}"
        + (f" for grade {grade}" if grade else "")
        + f". By the end, you will be able to {objective.rstrip('.')}."
    )
    outro = f"To sum up: {topic} connects everything we saw today. Great work!"
    body: list[str] = []
    words = len(intro.split()) + len(outro.split())
    i = 0
    while words < target:
        s = sentences[i % len(sentences)]
        if i >= len(sentences):
            s = f"Remember: {s[0].lower()}{s[1:]}"
        body.append(s)
        words += len(s.split())
        i += 1
    return "\n\n".join([intro, " ".join(body), outro])


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
