"""Deterministic stand-ins for the generative APIs: a hashed bag-of-words embedding and a
template script built from the prompt. The Gemini emulator answers with them, and the
rag and script stages' local providers (``VIVIDLY_PROVIDERS=null``) call them directly, so
both give the same results. Standard library only.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re

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
