"""The projector folds real tracking events from a real broker into real Postgres tables:
exactly once across redelivery and restarts, with offsets in the same transaction, a
NOTIFY after commit, and a rebuild that equals the live read model."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer

from services.projector.runner import Projector, rebuild, replay
from services.projector.store import NOTIFY_CHANNEL, READ_MODEL_VERSION, ReadModelStore
from tests.conftest import Broker
from tests.integration.kafka_util import make_topics
from tests.integration.test_tracker_events import FULL_RUN, run_one_request
from vividly.config import Settings
from vividly.events import WorkItem
from vividly.publish import KafkaPublisher
from vividly.runtime.db import migrate
from vividly.tracker import RequestTracker

pytestmark = pytest.mark.integration

TABLES = {
    "requests": "request_id",
    "request_stages": "request_id, stage, attempt",
    "stage_metrics_minute": "bucket, stage",
    "stage_metrics_hour": "bucket, stage",
    "request_metrics_minute": "bucket",
    "request_metrics_hour": "bucket",
    "status_counts": "organization_id, status",
    "org_stage_metrics_minute": "organization_id, bucket, stage",
    "org_stage_metrics_hour": "organization_id, bucket, stage",
    "org_request_metrics_minute": "organization_id, bucket",
    "org_request_metrics_hour": "organization_id, bucket",
    "breakers": "name",
}


def publish_mix(settings: Settings, topic: str, n: int, first: int = 0) -> list[str]:
    """n full request runs (24 events each), one request failing validation, one breaker
    opening and closing."""
    pub = KafkaPublisher(settings, "itest")
    tracker = RequestTracker(pub, producer="itest", topic=topic)
    rids = [run_one_request(tracker, first + i) for i in range(n)]
    rid, _ = tracker.create_request("stu-x", "ab", "obj", "10", 5, organization_id="org-2")
    tracker.start_request(rid)
    tracker.start_stage(rid, "validation")
    tracker.fail_stage(
        rid,
        "validation",
        "topic: at least 3 characters",
        {"field": "topic"},
        is_retryable=False,
        work_item=WorkItem(request_id=rid, stage="validation", attempt=1),
    )
    tracker.fail_request(rid, "topic: at least 3 characters", "validation", {"field": "topic"})
    counters = {"fail_counter": 5, "total_calls": 9, "total_failures": 5}
    tracker.breaker_state_changed("nano_banana", "closed", "open", **counters)
    tracker.breaker_state_changed("nano_banana", "open", "half-open", **counters)
    assert tracker.flush(30).ok
    pub.close(10)
    return [*rids, rid]


def events_in(n: int) -> int:
    return n * len(FULL_RUN) + 5 + 2


async def fold_until(proj: Projector, folded: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while proj.stats.folded + proj.stats.duplicates < folded:
        assert time.monotonic() < deadline, f"folded {proj.stats.folded} of {folded}"
        await proj.step(0.2)


async def snapshot(conn: Any, schema: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for table, order in TABLES.items():
        rows = await conn.fetch(f"SELECT * FROM {schema}.{table} ORDER BY {order}")
        out[table] = [dict(r) for r in rows]
    rows = await conn.fetch(
        f"SELECT * FROM {schema}.events ORDER BY request_id NULLS FIRST, occurred_at, event_id"
    )
    out["events"] = [
        {k: v for k, v in dict(r).items() if k not in ("seq", "folded_at")} for r in rows
    ]
    return out


@pytest.fixture
def setup(broker: Broker, postgres: str, unique: str) -> tuple[Settings, str, str]:
    settings = broker.settings()
    topic = f"tracking-{unique}"
    make_topics(settings, topic, partitions=3)
    asyncio.run(migrate(postgres))
    return settings, topic, f"rm_{unique}"


def test_fold_builds_requests_stages_timeline_metrics_and_breakers(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    settings, topic, schema = setup
    rids = publish_mix(settings, topic, 10)

    async def go() -> None:
        proj = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
        await proj.open()
        try:
            await proj.assign_all()
            await fold_until(proj, events_in(10))
        finally:
            await proj.close()
        conn = await asyncpg.connect(postgres)
        try:
            done = await conn.fetch(
                f"SELECT * FROM {schema}.requests WHERE request_id = ANY($1)", rids[:10]
            )
            assert len(done) == 10
            for r in done:
                assert r["status"] == "completed"
                assert r["retry_count"] == 1
                assert r["organization_id"] == "org-1"
                assert r["video_url"] == "https://cdn/v.mp4"
                assert r["error_stage"] is None
                assert r["waiting_reason"] is None
                assert r["current_stage"] == "notification"
            stages = await conn.fetch(
                f"SELECT stage, attempt, status, duration_ms, input_item IS NOT NULL AS kept"
                f" FROM {schema}.request_stages WHERE request_id = $1 ORDER BY stage, attempt",
                rids[0],
            )
            got = {(s["stage"], s["attempt"]): s["status"] for s in stages}
            assert got == {
                ("notification", 1): "completed",
                ("rag_retrieval", 1): "completed",
                ("script_generation", 1): "failed",
                ("script_generation", 2): "completed",
                ("validation", 1): "completed",
                ("video_generation", 1): "failed",
                ("video_generation", 2): "completed",
                ("video_processing", 1): "completed",
            }
            assert [s["kept"] for s in stages if s["status"] == "failed"] == [False, True]
            failed = await conn.fetchrow(
                f"SELECT * FROM {schema}.requests WHERE request_id=$1", rids[-1]
            )
            assert failed["status"] == "failed"
            assert failed["error_stage"] == "validation"
            assert "topic" in failed["error_message"]
            counts = dict(
                await conn.fetch(
                    f"SELECT organization_id || ':' || status, n"
                    f" FROM {schema}.status_counts WHERE n <> 0"
                )
            )
            assert counts == {"org-1:completed": 10, "org-2:failed": 1}
            n_events = await conn.fetchval(f"SELECT count(*) FROM {schema}.events")
            assert n_events == events_in(10)
            timeline = await conn.fetch(
                f"SELECT event_type, organization_id FROM {schema}.events"
                " WHERE request_id=$1 ORDER BY seq",
                rids[0],
            )
            kinds = [t["event_type"] for t in timeline]
            assert (kinds[0], kinds[-1]) == ("request_created", "request_completed")
            assert len(kinds) == len(FULL_RUN)
            assert {t["organization_id"] for t in timeline} == {"org-1"}
            m = await conn.fetch(
                f"SELECT stage, sum(started) s, sum(completed) c, sum(failed) f, sum(retried) r"
                f" FROM {schema}.stage_metrics_hour GROUP BY stage"
            )
            by_stage = {r["stage"]: (r["s"], r["c"], r["f"], r["r"]) for r in m}
            assert by_stage["script_generation"] == (20, 10, 10, 10)
            assert by_stage["validation"] == (11, 10, 1, 0)
            b = await conn.fetchrow(f"SELECT * FROM {schema}.breakers WHERE name='nano_banana'")
            assert b["state"] == "half-open"
            assert b["opened_at"] is not None
        finally:
            await conn.close()

    asyncio.run(go())


def test_redelivered_events_fold_once(setup: tuple[Settings, str, str], postgres: str) -> None:
    """Lose the stored offsets (as if delivery restarted from the beginning): every
    event arrives again and none is folded twice."""
    settings, topic, schema = setup
    publish_mix(settings, topic, 5)

    async def go() -> None:
        for round_ in range(2):
            proj = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
            await proj.open()
            try:
                if round_ == 1:
                    await proj._conn.execute(f"DELETE FROM {schema}.projector_offsets")
                await proj.assign_all()
                await fold_until(proj, events_in(5))
                if round_ == 0:
                    assert (proj.stats.folded, proj.stats.duplicates) == (events_in(5), 0)
                    before = await snapshot(proj._conn, schema)
                else:
                    assert (proj.stats.folded, proj.stats.duplicates) == (0, events_in(5))
                    assert await snapshot(proj._conn, schema) == before
            finally:
                await proj.close()

    asyncio.run(go())


def test_group_member_restarts_from_offsets_stored_with_the_fold(
    setup: tuple[Settings, str, str], postgres: str, unique: str
) -> None:
    settings, topic, schema = setup
    publish_mix(settings, topic, 3)
    # A message that is not an Envelope is skipped and counted, not fatal.
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    p.produce(topic, b"\xff\x00 not protobuf", key=b"junk")
    p.flush(10)

    async def run_group(expect: int) -> Projector:
        proj = Projector(settings, postgres, schema=schema, group_id=f"proj-{unique}", topic=topic)
        await proj.open()
        try:
            await proj.subscribe()
            await fold_until(proj, expect, timeout=90)
        finally:
            await proj.close()
        return proj

    async def go() -> None:
        first = await run_group(events_in(3))
        assert first.stats.undecodable == 1
        publish_mix(settings, topic, 2, first=100)
        second = await run_group(events_in(2))
        assert second.stats.duplicates == 0
        assert second.stats.folded == events_in(2)
        assert second.stats.undecodable == 0
        conn = await asyncpg.connect(postgres)
        try:
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.events") == events_in(
                3
            ) + events_in(2)
            stored = await conn.fetch(
                f"SELECT partition, next_offset FROM {schema}.projector_offsets"
            )
            assert sum(r["next_offset"] for r in stored) == events_in(3) + events_in(2) + 1
        finally:
            await conn.close()

    asyncio.run(go())


def test_notification_arrives_after_the_rows_are_committed(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    settings, topic, schema = setup
    publish_mix(settings, topic, 2)

    async def go() -> None:
        listener = await asyncpg.connect(postgres)
        seen: list[tuple[str, int]] = []
        got = asyncio.Event()

        async def on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
            # Runs on another connection: what the payload names must be visible already.
            n = await listener_reader.fetchval(
                f"SELECT count(*) FROM {schema}.events WHERE seq <= $1", int(payload)
            )
            seen.append((payload, n))
            got.set()

        listener_reader = await asyncpg.connect(postgres)
        await listener.add_listener(NOTIFY_CHANNEL, on_notify)
        proj = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
        await proj.open()
        try:
            await proj.assign_all()
            await fold_until(proj, events_in(2))
            await asyncio.wait_for(got.wait(), 10)
        finally:
            await proj.close()
            await listener.close()
            await listener_reader.close()
        assert seen
        for payload, visible in seen:
            assert visible == int(payload) > 0

    asyncio.run(go())


def test_rebuild_while_live_equals_the_live_tables(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    settings, topic, schema = setup
    publish_mix(settings, topic, 8)

    async def go() -> None:
        live = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
        await live.open()
        await live.assign_all()
        await fold_until(live, events_in(8))
        # A quiet log: the rebuilt tables are the live ones, row for row.
        conn = await asyncpg.connect(postgres)
        try:
            quiet = await snapshot(conn, schema)
            await rebuild(settings, postgres, live=schema, topic=topic)
            assert await snapshot(conn, schema) == quiet
        finally:
            await conn.close()

        async def keep_folding() -> None:
            while not stop.is_set():
                await live.step(0.1)

        stop = asyncio.Event()
        task = asyncio.create_task(keep_folding())
        # More events arrive while the rebuild runs; both must end up folded.
        more = asyncio.create_task(asyncio.to_thread(publish_mix, settings, topic, 3, 500))
        conn = await asyncpg.connect(postgres)
        try:
            before_max = await conn.fetchval(f"SELECT max(seq) FROM {schema}.events")
            info = await rebuild(settings, postgres, live=schema, topic=topic)
            await more
            stop.set()
            await task
            await fold_until(live, events_in(8) + events_in(3))
            rebuilt = await snapshot(conn, schema)
            assert info["events"] >= events_in(8)
            assert len(rebuilt["events"]) == events_in(8) + events_in(3)
            # New rows continue the old sequence: no id handed out twice to a stream.
            newest = await conn.fetchval(f"SELECT max(seq) FROM {schema}.events")
            assert newest >= before_max
            # A from-scratch fold of the same log is the same read model.
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema}_check CASCADE")
            fresh = Projector(
                settings, postgres, schema=f"{schema}_check", group_id=None, topic=topic
            )
            await fresh.open()
            try:
                await fresh.assign_all()
                await fold_until(fresh, events_in(8) + events_in(3))
            finally:
                await fresh.close()
            assert await snapshot(conn, f"{schema}_check") == rebuilt
        finally:
            await live.close()
            await conn.close()

    asyncio.run(go())


def test_replay_reads_a_time_range_into_its_own_schema(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    settings, topic, schema = setup
    publish_mix(settings, topic, 2)
    time.sleep(1.2)
    from datetime import UTC, datetime

    since = datetime.now(UTC)
    time.sleep(0.2)
    later = publish_mix(settings, topic, 3, first=900)

    async def go() -> None:
        info = await replay(settings, postgres, f"{schema}_replay", since=since, topic=topic)
        assert info["events"] == events_in(3)
        conn = await asyncpg.connect(postgres)
        try:
            ids = {
                r[0] for r in await conn.fetch(f"SELECT request_id FROM {schema}_replay.requests")
            }
            assert ids == set(later)
        finally:
            await conn.close()

    asyncio.run(go())


def test_a_lost_database_connection_resumes_from_the_stored_offsets(
    setup: tuple[Settings, str, str], postgres: str, unique: str
) -> None:
    """The live projector's connection is killed: it reconnects, goes back to the offsets
    stored with its last commit, and the read model ends exactly as if nothing happened."""
    settings, topic, schema = setup
    publish_mix(settings, topic, 3)

    async def go() -> None:
        proj = Projector(settings, postgres, schema=schema, group_id=f"crash-{unique}", topic=topic)
        task = asyncio.create_task(proj.run())
        admin = await asyncpg.connect(postgres)

        async def rows() -> int:
            try:
                n: int = await admin.fetchval(f"SELECT count(*) FROM {schema}.events")
                return n
            except asyncpg.UndefinedTableError:
                return 0

        try:
            deadline = time.monotonic() + 60
            while await rows() < events_in(3):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            await admin.execute("SELECT pg_terminate_backend($1)", proj._conn.get_server_pid())
            await asyncio.to_thread(publish_mix, settings, topic, 2, 300)
            deadline = time.monotonic() + 60
            while await rows() < events_in(3) + events_in(2):
                assert time.monotonic() < deadline, f"{await rows()} rows"
                assert not task.done(), "the projector died instead of recovering"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            assert await rows() == events_in(3) + events_in(2)
            counts = await admin.fetchval(f"SELECT sum(n) FROM {schema}.status_counts")
            assert counts == 3 + 1 + 2 + 1  # each request counted once
            stored = await admin.fetchval(
                f"SELECT sum(next_offset) FROM {schema}.projector_offsets"
            )
            assert stored == events_in(3) + events_in(2)
        finally:
            proj.stop()
            await task
            await admin.close()

    asyncio.run(go())


async def per_org_sums(conn: Any, schema: str) -> dict[str, tuple[list[Any], list[Any]]]:
    """Each global metric table beside its per-organization rows added up."""
    stage_cols = "started, completed, failed, retried, duration_max_ms, duration_buckets"
    out = {}
    for grain in ("minute", "hour"):
        glob = await conn.fetch(
            f"SELECT bucket, stage, {stage_cols}, round(duration_sum_ms::numeric, 3) AS s"
            f" FROM {schema}.stage_metrics_{grain} ORDER BY bucket, stage"
        )
        summed = await conn.fetch(
            f"SELECT bucket, stage, sum(started)::bigint AS started,"
            f" sum(completed)::bigint AS completed, sum(failed)::bigint AS failed,"
            f" sum(retried)::bigint AS retried, max(duration_max_ms) AS duration_max_ms,"
            f" (SELECT array_agg(x ORDER BY i) FROM (SELECT i, sum(v)::bigint AS x FROM"
            f"   {schema}.org_stage_metrics_{grain} o2, unnest(o2.duration_buckets)"
            f"   WITH ORDINALITY AS u(v, i) WHERE o2.bucket = o.bucket AND o2.stage = o.stage"
            f"   GROUP BY i) h) AS duration_buckets,"
            f" round(sum(duration_sum_ms)::numeric, 3) AS s"
            f" FROM {schema}.org_stage_metrics_{grain} o GROUP BY bucket, stage"
            f" ORDER BY bucket, stage"
        )
        out[f"stage_{grain}"] = ([dict(r) for r in glob], [dict(r) for r in summed])
        glob = await conn.fetch(
            f"SELECT bucket, created, completed, failed FROM {schema}.request_metrics_{grain}"
            " ORDER BY bucket"
        )
        summed = await conn.fetch(
            f"SELECT bucket, sum(created)::bigint AS created, sum(completed)::bigint AS"
            f" completed, sum(failed)::bigint AS failed FROM {schema}.org_request_metrics_{grain}"
            " GROUP BY bucket ORDER BY bucket"
        )
        out[f"request_{grain}"] = ([dict(r) for r in glob], [dict(r) for r in summed])
    return out


def test_per_organization_aggregates_add_up_to_the_global_ones(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    settings, topic, schema = setup
    publish_mix(settings, topic, 6)  # org-1's runs and org-2's failed validation

    async def go() -> None:
        proj = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
        await proj.open()
        try:
            await proj.assign_all()
            await fold_until(proj, events_in(6))
        finally:
            await proj.close()
        conn = await asyncpg.connect(postgres)
        try:
            for name, (glob, summed) in (await per_org_sums(conn, schema)).items():
                assert glob, name
                assert glob == summed, name
            orgs = await conn.fetch(
                f"SELECT organization_id, sum(created)::int AS c, sum(failed)::int AS f"
                f" FROM {schema}.org_request_metrics_hour GROUP BY 1 ORDER BY 1"
            )
            # every org-1 run fails once and is retried to completion (FULL_RUN)
            assert [tuple(r) for r in orgs] == [("org-1", 6, 6), ("org-2", 1, 1)]
            val = await conn.fetch(
                f"SELECT organization_id, sum(failed)::int AS f FROM"
                f" {schema}.org_stage_metrics_minute WHERE stage = 'validation' GROUP BY 1"
                " ORDER BY 1"
            )
            assert [tuple(r) for r in val] == [("org-1", 0), ("org-2", 1)]
        finally:
            await conn.close()

    asyncio.run(go())


def test_a_read_model_of_an_older_projection_is_rebuilt_when_the_projector_starts(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    """What a deployment upgraded to per-organization aggregates sees: the tables of 0006
    exist but are empty, and nothing stamped the projection; the projector rebuilds
    from the log before folding on, and the result equals a fresh fold."""
    settings, topic, schema = setup
    publish_mix(settings, topic, 4)

    async def go() -> None:
        old = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
        await old.open()
        try:
            await old.assign_all()
            await fold_until(old, events_in(4))
        finally:
            await old.close()
        conn = await asyncpg.connect(postgres)
        try:
            folded = await snapshot(conn, schema)
            assert await conn.fetchval(f"SELECT version FROM {schema}.read_model_meta") == (
                READ_MODEL_VERSION
            )
            # The older projector's read model: no per-organization rows, no stamp.
            await conn.execute(f"DELETE FROM {schema}.read_model_meta")
            for grain in ("minute", "hour"):
                await conn.execute(f"TRUNCATE {schema}.org_stage_metrics_{grain}")
                await conn.execute(f"TRUNCATE {schema}.org_request_metrics_{grain}")
            assert await ReadModelStore(schema).outdated(conn)
            live = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
            task = asyncio.create_task(live.run())
            deadline = time.monotonic() + 60
            while await conn.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema
            ) == 0 or await ReadModelStore(schema).outdated(conn):
                assert time.monotonic() < deadline, "the projection was not upgraded"
                assert not task.done(), task
                await asyncio.sleep(0.1)
            live.stop()
            await task
            assert await snapshot(conn, schema) == folded
        finally:
            await conn.close()

    asyncio.run(go())
