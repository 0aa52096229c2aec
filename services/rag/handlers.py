"""RAG retrieval: top-k OER passages for the request, with a TTL cache."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pybreaker import CircuitBreaker

from services.rag.providers import Chunk, Embedder, Retriever
from vividly.events import WorkItem
from vividly.runtime.stage import StageContext


class TTLCache:
    def __init__(self, ttl_s: float, max_items: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self.items: dict[str, tuple[float, list[Chunk]]] = {}

    def get(self, key: str) -> list[Chunk] | None:
        hit = self.items.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self.items[key]
            return None
        return hit[1]

    def set(self, key: str, value: list[Chunk]) -> None:
        if self.ttl_s <= 0:
            return
        if len(self.items) >= self.max_items:
            self.items.pop(next(iter(self.items)))
        self.items[key] = (time.monotonic() + self.ttl_s, value)


class Retrieval:
    def __init__(
        self,
        embedder: Embedder,
        retriever: Retriever,
        cache: TTLCache,
        breaker: CircuitBreaker,
        top_k: int = 5,
    ) -> None:
        self.embedder = embedder
        self.breaker = breaker  # the embedding API's: its Stage pauses input while open
        self.retriever = retriever
        self.cache = cache
        self.top_k = top_k
        # Single flight: concurrent requests for the same key share one retrieval.
        self.inflight: dict[str, asyncio.Future[list[Chunk]]] = {}

    async def __call__(self, item: WorkItem, ctx: StageContext) -> dict[str, Any]:
        spec = item.request
        grade = ctx.output_of("validation").get("grade_level", spec.grade_level)
        ctx.log("api_call", "Querying Vector Search for OER content")
        key = f"rag_results:{spec.topic.strip().lower()}:{grade}"
        chunks = self.cache.get(key)
        pending = self.inflight.get(key)
        if chunks is None and pending is not None:
            chunks = await asyncio.shield(pending)
            ctx.log(
                "cache_hit",
                "Retrieved results from cache (shared retrieval)",
                data={"key": key, "coalesced": True},
            )
        elif chunks is not None:
            ctx.log("cache_hit", "Retrieved results from cache", data={"key": key})
        else:
            fut: asyncio.Future[list[Chunk]] = asyncio.get_running_loop().create_future()
            self.inflight[key] = fut
            try:
                chunks = await self._retrieve(item, ctx, grade)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: waiters re-raise it themselves
                raise
            else:
                fut.set_result(chunks)
                self.cache.set(key, chunks)
            finally:
                self.inflight.pop(key, None)
            ctx.log(
                "rag_completed",
                f"Retrieved {len(chunks)} content chunks",
                data={"chunks": len(chunks)},
            )
        return self._output(chunks)

    async def _retrieve(self, item: WorkItem, ctx: StageContext, grade: str) -> list[Chunk]:
        spec = item.request
        query = f"{spec.topic}. {spec.learning_objective}"
        headers = ctx.headers()
        vectors = await ctx.guarded(self.breaker, lambda: self.embedder.embed([query], headers))
        return await self.retriever.search(query, vectors[0], grade, self.top_k)

    @staticmethod
    def _output(chunks: list[Chunk]) -> dict[str, Any]:
        return {
            "chunks_retrieved": len(chunks),
            "sources": [c.source for c in chunks],
            "chunks": [
                {
                    "id": c.id,
                    "title": c.title,
                    "source": c.source,
                    "licence": c.licence,
                    "text": c.text,
                }
                for c in chunks
            ],
        }
