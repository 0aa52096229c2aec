"""rag: consumes requests.validated, retrieves OER passages, produces requests.retrieved."""

from __future__ import annotations

from services.rag.handlers import Retrieval, TTLCache
from services.rag.providers import (
    Embedder,
    GeminiEmbedder,
    HashEmbedder,
    MemoryRetriever,
    PgRetriever,
    Retriever,
    load_corpus,
)
from vividly.breakers import gemini_breaker
from vividly.config import RETRIEVED, VALIDATED
from vividly.runtime.ledger import PgLedger
from vividly.runtime.service import Built, Deps, run
from vividly.runtime.stage import Stage, StageRunner


async def build(deps: Deps) -> Built:
    s = deps.settings
    if s.providers == "null":
        embedder: Embedder = HashEmbedder(s.embedding_dim)
        retriever: Retriever = MemoryRetriever(load_corpus(), s.embedding_dim)
    else:
        embedder, retriever = GeminiEmbedder(s), PgRetriever(deps.pool)
    work = Retrieval(
        embedder, retriever, TTLCache(s.rag_cache_ttl_s), breaker=gemini_breaker, top_k=s.rag_top_k
    )
    runner = StageRunner(
        tracker=deps.tracker,
        stages=[Stage("rag_retrieval", work, breakers=(work.breaker,))],
        settings=s,
        input_topic=VALIDATED,
        next_topic=RETRIEVED,
        ledger=PgLedger(deps.pool),
    )
    return Built(handler=runner, gates=[runner.accepting])


def main() -> None:
    run("rag", input_topic=VALIDATED, produces=[RETRIEVED], build=build)


if __name__ == "__main__":
    main()
