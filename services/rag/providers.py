"""RAG's external interfaces: embeddings (Gemini API) and the OER corpus (Postgres).

Each has the real implementation and a small in-process one behind the same protocol;
tests/contract runs the same assertions against both.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from vividly.config import Settings
from vividly.errors import ProviderError, classify
from vividly.localgen import embed as hashed_embedding
from vividly.runtime.clients import genai_client

CORPUS_FILE = Path(__file__).resolve().parent / "corpus" / "passages.jsonl"
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Chunk:
    id: str
    topic: str
    title: str
    source: str
    licence: str
    grade_band: str
    text: str
    score: float = 0.0

    def public(self) -> dict[str, Any]:
        return asdict(self)


def load_corpus(path: Path = CORPUS_FILE) -> list[dict[str, str]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def passage_text(p: dict[str, str]) -> str:
    """What is embedded and matched for a passage: the same for both retrievers."""
    return f"{p['topic']} {p['title']} {p['text']}"


GRADE_BOOST = 1.2  # a passage written for the request's grade band ranks a little higher


def _ranked(p: dict[str, str], score: float, grade: str, text_key: str = "text") -> Chunk:
    boost = GRADE_BOOST if grade_in_band(grade, p["grade_band"]) else 1.0
    return Chunk(
        p["id"],
        p["topic"],
        p["title"],
        p["source"],
        p["licence"],
        p["grade_band"],
        p[text_key],
        score * boost,
    )


def grade_in_band(grade: str, band: str) -> bool:
    g = 0 if grade == "K" else int(grade) if grade.isdigit() else -1
    lo, _, hi = band.partition("-")
    lo_n = 0 if lo == "K" else int(lo)
    hi_n = 0 if hi == "K" else int(hi or lo)
    return lo_n <= g <= hi_n


class Embedder(Protocol):
    dim: int

    async def embed(self, texts: list[str], headers: dict[str, str]) -> list[list[float]]: ...


class GeminiEmbedder:
    """Embeddings through the google-genai SDK (``batchEmbedContents``)."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.client = client or genai_client(settings)
        self.model = settings.gemini_embedding_model
        self.dim = settings.embedding_dim

    async def embed(self, texts: list[str], headers: dict[str, str]) -> list[list[float]]:
        from google.genai import types

        try:
            result = await self.client.aio.models.embed_content(
                model=self.model,
                contents=texts,
                config=types.EmbedContentConfig(
                    output_dimensionality=self.dim, http_options=types.HttpOptions(headers=headers)
                ),
            )
        except Exception as exc:
            raise classify(exc, "gemini embed") from exc
        vectors = [list(e.values or []) for e in (result.embeddings or [])]
        if len(vectors) != len(texts) or any(len(v) != self.dim for v in vectors):
            raise classify(
                ValueError(f"expected {len(texts)} vectors of {self.dim}"), "gemini embed"
            )
        return vectors


class HashEmbedder:
    """In-process embeddings, the same function the Gemini emulator serves."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.calls = 0

    async def embed(self, texts: list[str], headers: dict[str, str]) -> list[list[float]]:
        self.calls += 1
        return [hashed_embedding(t, self.dim) for t in texts]


class Retriever(Protocol):
    async def search(self, query: str, vector: list[float], grade: str, k: int) -> list[Chunk]: ...


def _vector_literal(v: list[float]) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


def _or_query(text: str) -> str:
    words = [w for w in _WORD.findall(text.lower()) if len(w) > 2][:24]
    return " | ".join(words) if words else "nothing"


class PgRetriever:
    """Hybrid search: pgvector HNSW nearest neighbours and Postgres full text, fused by
    reciprocal rank, with a boost for passages whose grade band covers the request."""

    SQL = """
    WITH q AS (SELECT $1::vector AS v, to_tsquery('english', $2) AS tsq),
    vec AS (
        SELECT c.id, row_number() OVER (ORDER BY c.embedding <=> q.v) AS r
        FROM vividly.oer_chunks c, q ORDER BY c.embedding <=> q.v LIMIT 40),
    fts AS (
        SELECT c.id, row_number() OVER (ORDER BY ts_rank_cd(c.tsv, q.tsq) DESC) AS r
        FROM vividly.oer_chunks c, q WHERE c.tsv @@ q.tsq
        ORDER BY ts_rank_cd(c.tsv, q.tsq) DESC LIMIT 40),
    fused AS (
        SELECT coalesce(vec.id, fts.id) AS id,
               coalesce(1.0 / (60 + vec.r), 0) + coalesce(1.0 / (60 + fts.r), 0) AS score
        FROM vec FULL OUTER JOIN fts ON vec.id = fts.id)
    SELECT c.id, c.topic, c.title, c.source, c.licence, c.grade_band, c.content, f.score
    FROM fused f JOIN vividly.oer_chunks c ON c.id = f.id
    ORDER BY f.score DESC LIMIT $3
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def search(self, query: str, vector: list[float], grade: str, k: int) -> list[Chunk]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self.SQL, _vector_literal(vector), _or_query(query), k * 3)
        chunks = [_ranked(dict(r), float(r["score"]), grade, "content") for r in rows]
        chunks.sort(key=lambda c: c.score, reverse=True)
        return chunks[:k]


class MemoryRetriever:
    """The same fusion over an in-memory corpus (unit tests, the framework benchmark)."""

    def __init__(self, passages: list[dict[str, str]], dim: int = 384) -> None:
        self.rows = [
            (
                p,
                hashed_embedding(passage_text(p), dim),
                set(_WORD.findall(passage_text(p).lower())),
            )
            for p in passages
        ]

    async def search(self, query: str, vector: list[float], grade: str, k: int) -> list[Chunk]:
        words = {w for w in _WORD.findall(query.lower()) if len(w) > 2}
        by_vec = sorted(range(len(self.rows)), key=lambda i: -_dot(self.rows[i][1], vector))
        by_text = sorted(
            (i for i in range(len(self.rows)) if words & self.rows[i][2]),
            key=lambda i: -len(words & self.rows[i][2]),
        )
        score: dict[int, float] = {}
        for rank, i in enumerate(by_vec[:40], 1):
            score[i] = score.get(i, 0) + 1 / (60 + rank)
        for rank, i in enumerate(by_text[:40], 1):
            score[i] = score.get(i, 0) + 1 / (60 + rank)
        out = [_ranked(self.rows[i][0], s, grade) for i, s in score.items()]
        out.sort(key=lambda c: c.score, reverse=True)
        return out[:k]


def _dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=False))


async def _embed_retrying(
    embedder: Embedder, texts: list[str], attempts: int = 6, backoff_s: float = 0.2
) -> list[list[float]]:
    """A load is not aborted by a transient provider error: retry it with backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return await embedder.embed(texts, {})
        except ProviderError as exc:
            if not exc.is_retryable or attempt == attempts:
                raise
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


async def load_into_postgres(
    pool: Any,
    embedder: Embedder,
    passages: list[dict[str, str]],
    batch: int = 16,
    progress: Any = None,
) -> int:
    """Upsert ``passages`` with their embeddings; returns how many were written."""
    written = 0
    for start in range(0, len(passages), batch):
        part = passages[start : start + batch]
        vectors = await _embed_retrying(embedder, [passage_text(p) for p in part])
        async with pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO vividly.oer_chunks"
                " (id, topic, title, source, licence, grade_band, content, embedding)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::vector)"
                " ON CONFLICT (id) DO UPDATE SET topic = EXCLUDED.topic,"
                " title = EXCLUDED.title, source = EXCLUDED.source,"
                " licence = EXCLUDED.licence, grade_band = EXCLUDED.grade_band,"
                " content = EXCLUDED.content, embedding = EXCLUDED.embedding,"
                " updated_at = now()",
                [
                    (
                        p["id"],
                        p["topic"],
                        p["title"],
                        p["source"],
                        p["licence"],
                        p["grade_band"],
                        p["text"],
                        _vector_literal(v),
                    )
                    for p, v in zip(part, vectors, strict=True)
                ],
            )
        written += len(part)
        if progress is not None:
            progress(len(part))
    return written
