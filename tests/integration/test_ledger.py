"""The Postgres ledgers: group-committed stage completions, submissions, email claims."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from vividly.runtime.db import migrate
from vividly.runtime.ledger import IngestLedger, NotificationLedger, PgLedger, create_pool
from vividly.runtime.stage import Recorded

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db(postgres: str) -> str:
    name = f"ledger_{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        conn = await asyncpg.connect(postgres)
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()

    asyncio.run(setup())
    url = postgres.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(migrate(url))
    return url


def test_concurrent_outcomes_each_attempt_keeps_the_first_with_its_messages(db: str) -> None:
    async def run() -> list[Recorded]:
        pool = await create_pool(db)
        try:
            ledger = PgLedger(pool)
            calls = []
            for i in range(300):
                key = f"r{i % 100}"  # every key three times, all at once
                rec = Recorded(
                    "completed",
                    f'{{"n": {i}}}'.encode(),
                    events=(("tracking.events", key.encode(), f"ev{i}".encode(), [("h", b"1")]),),
                )
                calls.append(ledger.record(key, "rag_retrieval", 1, rec))
            return list(await asyncio.gather(*calls))
        finally:
            await pool.close()

    results = asyncio.run(run())
    for k in range(100):
        mine = [results[i] for i in range(300) if i % 100 == k]
        assert len({(r.output, r.events[0][2]) for r in mine}) == 1, "losers get the winner's"
        assert mine[0].events[0][:2] == ("tracking.events", f"r{k}".encode())
        assert mine[0].events[0][3] == [("h", b"1")]

    async def again() -> tuple[Recorded | None, Recorded | None, Recorded]:
        pool = await create_pool(db)
        try:
            ledger = PgLedger(pool)
            failed = Recorded("failed", outgoing=(("requests.dlq", b"r7", b"item", []),))
            return (
                await ledger.lookup("r7", "rag_retrieval", 1),
                await ledger.lookup("r7", "rag_retrieval", 2),
                await ledger.record("r7", "rag_retrieval", 2, failed),
            )
        finally:
            await pool.close()

    # A later redelivery finds the stored outcome before doing any work.
    found, missing, failed = asyncio.run(again())
    assert found is not None
    assert found.outcome == "completed"
    assert found.output in {f'{{"n": {i}}}'.encode() for i in (7, 107, 207)}
    assert missing is None
    assert failed.outcome == "failed"
    assert failed.outgoing == (("requests.dlq", b"r7", b"item", []),)


def test_first_submission_wins_and_email_claims_are_exclusive(db: str) -> None:
    async def run() -> None:
        pool = await create_pool(db)
        try:
            ingest = IngestLedger(pool)
            assert await ingest.first_source("req-1", "t:0:5") == "t:0:5"
            assert await ingest.first_source("req-1", "t:1:9") == "t:0:5"
            mail = NotificationLedger(pool, lease_s=0.5)
            assert await mail.claim("req-1", "content_ready", "<m>", "s@x") == "send"
            assert await mail.claim("req-1", "content_ready", "<m>", "s@x") == "busy"
            await mail.release("req-1", "content_ready")  # a failed send
            assert await mail.claim("req-1", "content_ready", "<m>", "s@x") == "send"
            await mail.mark_sent("req-1", "content_ready")
            assert await mail.claim("req-1", "content_ready", "<m>", "s@x") == "sent"
            # A sender that died between claim and send: its claim lapses, then is taken.
            assert await mail.claim("req-2", "content_ready", "<m2>", "s@x") == "send"
            assert await mail.claim("req-2", "content_ready", "<m2>", "s@x") == "busy"
            await asyncio.sleep(0.6)
            assert await mail.claim("req-2", "content_ready", "<m2>", "s@x") == "send"
            assert await mail.claim("req-2", "content_ready", "<m2>", "s@x") == "busy"
        finally:
            await pool.close()

    asyncio.run(run())


def test_concurrent_email_claims_have_one_winner_per_outcome(db: str) -> None:
    async def run() -> tuple[list[str], list[str]]:
        pool = await create_pool(db)
        try:
            mail = NotificationLedger(pool)
            first = await asyncio.gather(
                *(mail.claim(f"m{i % 100}", "content_ready", "<m>", "s@x") for i in range(300))
            )
            await asyncio.gather(*(mail.mark_sent(f"m{i}", "content_ready") for i in range(100)))
            again = await asyncio.gather(
                *(mail.claim(f"m{i}", "content_ready", "<m>", "s@x") for i in range(100)),
                *(mail.claim(f"m{i}", "error", "<e>", "s@x") for i in range(100)),
            )
            return list(first), list(again)
        finally:
            await pool.close()

    first, again = asyncio.run(run())
    for k in range(100):
        assert sorted(first[i] for i in range(300) if i % 100 == k) == ["busy", "busy", "send"]
    assert set(again[:100]) == {"sent"}, "a sent email is never claimed again"
    assert set(again[100:]) == {"send"}, "another outcome of the same request is its own email"


def test_a_group_committed_statement_is_in_no_request_trace_and_a_request_own_query_is(
    db: str,
) -> None:
    """A batched ledger statement serves every request in its batch: it must not show up
    as a call of whichever request led the batch (nor cost a span), while a query one
    request makes for itself (the ingest ledger's) stays a client span under its stage,
    also after that request waited on a batch."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON
    from opentelemetry.trace import SpanKind

    from tests.unit.test_tracing import _install
    from vividly import tracing
    from vividly.runtime import telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=telemetry.NoOrphanClients(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _install(provider)
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)

    async def one(ledger: PgLedger, mail: NotificationLedger, ingest: IngestLedger, i: int) -> None:
        rid = f"traced-{uuid.uuid4().hex[:8]}-{i}"
        with tracing.stage_span(rid, "rag_retrieval", 1):
            assert await ledger.lookup(rid, "rag_retrieval", 1) is None
            assert await ledger.cancelled(rid) is False
            await ledger.record(rid, "rag_retrieval", 1, Recorded("completed", b"{}"))
            assert await mail.claim(rid, "content_ready", f"<{rid}>", "s@x") == "send"
            await mail.mark_sent(rid, "content_ready")
            assert await ingest.first_source(rid, f"src-{i}") == f"src-{i}"

    async def run() -> None:
        pool = await create_pool(db)
        try:
            ledger, mail, ingest = PgLedger(pool), NotificationLedger(pool), IngestLedger(pool)
            await asyncio.gather(*(one(ledger, mail, ingest, i) for i in range(20)))
        finally:
            await pool.close()

    try:
        asyncio.run(run())
    finally:
        instrumentor.uninstrument()
        _install(None)
        provider.shutdown()
    spans = exporter.get_finished_spans()
    stages = {s.context.span_id: s for s in spans if s.name == "stage rag_retrieval"}
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(stages) == 20
    # Only the ingest ledger's own query, once per request, each under its own stage.
    assert [s.name for s in clients] == ["WITH"] * 20, sorted({s.name for s in clients})
    parents = [s.parent.span_id for s in clients if s.parent is not None]
    assert sorted(parents) == sorted(stages)
