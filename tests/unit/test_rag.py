"""RAG retrieval with in-process fakes: top-k on topic, TTL cache, single flight."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from services.rag.handlers import Retrieval, TTLCache
from services.rag.providers import (
    HashEmbedder,
    MemoryRetriever,
    grade_in_band,
    load_corpus,
    load_into_postgres,
)
from vividly.breakers import gemini_breaker
from vividly.errors import ProviderError
from vividly.events import WorkItem
from vividly.runtime.stage import StageContext
from vividly.testing import FakePublisher
from vividly.tracker import RequestTracker


def item(rid: str, topic: str, grade: str = "8") -> WorkItem:
    w = WorkItem(request_id=rid, correlation_id=f"c-{rid}", stage="rag_retrieval", attempt=1)
    w.request.topic = topic
    w.request.learning_objective = "Explain the main ideas"
    w.request.grade_level = grade
    w.outputs_json["validation"] = orjson.dumps({"grade_level": grade})
    return w


def logged(pub: FakePublisher, rid: str) -> list[str]:
    return [
        m.envelope().event_logged.event_type
        for m in pub.messages
        if m.key == rid.encode() and m.envelope().WhichOneof("event") == "event_logged"
    ]


def setup() -> tuple[Retrieval, HashEmbedder, FakePublisher, RequestTracker]:
    embedder = HashEmbedder()
    pub = FakePublisher()
    tracker = RequestTracker(pub)
    return (
        Retrieval(embedder, MemoryRetriever(load_corpus()), TTLCache(60), gemini_breaker, 5),
        embedder,
        pub,
        tracker,
    )


def test_the_corpus_is_big_enough_and_complete() -> None:
    corpus = load_corpus()
    assert len(corpus) >= 60
    assert len({p["topic"] for p in corpus}) >= 15
    for p in corpus:
        assert all(
            p[k] for k in ("id", "topic", "title", "source", "licence", "grade_band", "text")
        )
    assert len({p["id"] for p in corpus}) == len(corpus)


def test_top_passages_are_about_the_topic() -> None:
    work, _, _, tracker = setup()
    out = asyncio.run(
        work(
            item("r1", "Volcanoes"),
            StageContext(tracker, item("r1", "Volcanoes"), "rag_retrieval", 1),
        )
    )
    assert out["chunks_retrieved"] == 5
    assert out["chunks"][0]["id"].startswith("volcanoes")
    assert all(c["licence"] for c in out["chunks"])


def test_second_request_for_a_topic_is_a_cache_hit_and_concurrent_ones_share() -> None:
    work, embedder, pub, tracker = setup()

    async def run() -> None:
        a, b, c = item("a", "Fractions"), item("b", "Fractions"), item("c", "Fractions")
        await asyncio.gather(
            work(a, StageContext(tracker, a, "rag_retrieval", 1)),
            work(b, StageContext(tracker, b, "rag_retrieval", 1)),
        )
        await work(c, StageContext(tracker, c, "rag_retrieval", 1))

    asyncio.run(run())
    assert embedder.calls == 1
    assert "rag_completed" in logged(pub, "a")
    assert "cache_hit" in logged(pub, "b")
    assert "cache_hit" in logged(pub, "c")


def test_grade_bands() -> None:
    assert grade_in_band("K", "K-2")
    assert grade_in_band("8", "6-12")
    assert not grade_in_band("5", "6-12")


class _FlakyEmbedder(HashEmbedder):
    """Answers 503 on its first call, then embeds."""

    async def embed(self, texts: list[str], headers: dict[str, str]) -> list[list[float]]:
        self.calls += 1
        if self.calls == 1:
            raise ProviderError("gemini embed: HTTP 503", retryable=True, status=503)
        return [[0.0] * self.dim for _ in texts]


class _RowsPool:
    def __init__(self) -> None:
        self.rows: list[tuple[object, ...]] = []

    def acquire(self) -> _RowsPool:
        return self

    async def __aenter__(self) -> _RowsPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        self.rows.extend(rows)


def test_a_transient_embedding_error_does_not_abort_a_corpus_load() -> None:
    passages = load_corpus()[:20]
    pool = _RowsPool()
    written = asyncio.run(load_into_postgres(pool, _FlakyEmbedder(), passages, batch=16))
    assert written == 20
    assert [r[0] for r in pool.rows] == [p["id"] for p in passages]


def test_a_permanent_embedding_error_aborts_the_load() -> None:
    class Refusing(HashEmbedder):
        async def embed(self, texts: list[str], headers: dict[str, str]) -> list[list[float]]:
            raise ProviderError("gemini embed: HTTP 400", retryable=False, status=400)

    pool = _RowsPool()
    with pytest.raises(ProviderError):
        asyncio.run(load_into_postgres(pool, Refusing(), load_corpus()[:3]))
    assert pool.rows == []
