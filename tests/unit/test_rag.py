"""RAG retrieval with in-process fakes: top-k on topic, TTL cache, single flight."""

from __future__ import annotations

import asyncio

import orjson

from services.rag.handlers import Retrieval, TTLCache
from services.rag.providers import HashEmbedder, MemoryRetriever, grade_in_band, load_corpus
from vividly.events import WorkItem
from vividly.stage import StageContext
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
        Retrieval(embedder, MemoryRetriever(load_corpus()), TTLCache(60), 5),
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
