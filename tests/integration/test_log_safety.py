"""The read model and the log it was folded from, on a real broker and Postgres:

- offsets stored for one log are refused (or rebuilt from) when the log is another one;
- a rebuild keeps every event's seq, so SSE clients resuming across it miss nothing;
- poison events are quarantined with their reason and the fold goes on past them.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from services.projector.logid import LogMismatch
from services.projector.runner import Projector, rebuild
from tests.conftest import Broker
from tests.integration.kafka_util import make_topics
from tests.integration.test_projector import events_in, fold_until, publish_mix
from vividly.config import Settings
from vividly.events import ENVELOPE_TYPE, H_TYPE, Envelope
from vividly.runtime.db import migrate

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(broker: Broker, postgres: str, unique: str) -> tuple[Settings, str, str]:
    settings = broker.settings()
    topic = f"tracking-{unique}"
    make_topics(settings, topic, partitions=3)
    asyncio.run(migrate(postgres))
    return settings, topic, f"rm_{unique}"


def recreate(settings: Settings, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.delete_topics([topic], operation_timeout=30)[topic].result(30)
    for _ in range(100):
        try:
            make_topics(settings, topic, partitions=3)
            return
        except Exception:  # still being deleted
            time.sleep(0.2)
    raise AssertionError(f"could not recreate {topic}")


async def fold_all(settings: Settings, url: str, schema: str, topic: str, n: int) -> None:
    proj = Projector(settings, url, schema=schema, group_id=None, topic=topic)
    await proj.open()
    try:
        await proj.verify_log()
        await proj.assign_all()
        await fold_until(proj, n)
    finally:
        await proj.close()


async def count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def test_offsets_of_a_recreated_log_are_refused_then_rebuilt_from_the_new_log(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    settings, topic, schema = setup
    publish_mix(settings, topic, 4)  # 4 full requests + 1 failed
    asyncio.run(fold_all(settings, postgres, schema, topic, events_in(4)))
    assert asyncio.run(count(postgres, f"SELECT count(*) FROM {schema}.requests")) == 5

    recreate(settings, topic)  # the log vanished: another topic id, offsets past its end
    publish_mix(settings, topic, 1, first=100)

    async def refused() -> str:
        proj = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
        await proj.open()
        try:
            with pytest.raises(LogMismatch) as info:
                await proj.verify_log()
            return str(info.value)
        finally:
            await proj.close()

    reason = asyncio.run(refused())
    assert "was recreated" in reason
    assert "past the log's end" in reason
    # Nothing was folded onto the wrong positions: the read model is as it was.
    assert asyncio.run(count(postgres, f"SELECT count(*) FROM {schema}.requests")) == 5

    # The rebuild policy: the live projector folds the log it now reads from scratch.
    policy = settings.model_copy(update={"projector_on_log_mismatch": "rebuild"})

    async def rebuilt() -> int:
        proj = Projector(policy, postgres, schema=schema, group_id=None, topic=topic)
        await proj.open()
        try:
            await proj._verify_or_rebuild()
        finally:
            await proj.close()
        return await count(postgres, f"SELECT count(*) FROM {schema}.requests")

    assert asyncio.run(rebuilt()) == 2, "exactly the new log's requests (1 full + 1 failed)"
    ident = asyncio.run(count(postgres, f"SELECT count(*) FROM {schema}.projector_log"))
    assert ident == 1


def test_a_rebuild_keeps_every_events_seq_and_numbers_new_ones_above(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    settings, topic, schema = setup
    publish_mix(settings, topic, 3)

    async def go() -> None:
        await fold_all(settings, postgres, schema, topic, events_in(3))
        conn = await asyncpg.connect(postgres)
        try:
            # Live sequence numbers that a fresh fold would not hand out (as after an
            # earlier rebuild, or a fold that interleaved partitions differently).
            await conn.execute(f"UPDATE {schema}.events SET seq = seq * 7 + 1000")
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{schema}.events', 'seq'),"
                f" (SELECT max(seq) FROM {schema}.events))"
            )
            before = {
                r["event_id"]: r["seq"]
                for r in await conn.fetch(f"SELECT event_id, seq FROM {schema}.events")
            }
            await rebuild(settings, postgres, live=schema, topic=topic)
            after = {
                r["event_id"]: r["seq"]
                for r in await conn.fetch(f"SELECT event_id, seq FROM {schema}.events")
            }
            assert after == before, "a client's Last-Event-ID means the same event"
            publish_mix(settings, topic, 1, first=50)
            await fold_all(settings, postgres, schema, topic, events_in(1))
            new = await conn.fetch(
                f"SELECT seq FROM {schema}.events WHERE NOT (event_id = ANY($1::uuid[]))",
                list(before),
            )
            assert len(new) == events_in(1)
            assert min(r["seq"] for r in new) > max(before.values())
        finally:
            await conn.close()

    asyncio.run(go())


def test_poison_events_are_quarantined_with_their_reason_and_the_fold_goes_on(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    settings, topic, schema = setup
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    headers: Any = [(H_TYPE, ENVELOPE_TYPE.encode())]
    good = Envelope(event_id="018f0000-0000-7000-8000-000000000001", request_id="r-after")
    good.occurred_at.GetCurrentTime()
    good.request_created.request.topic = "Tides"
    good.request_created.request.organization_id = "org-q"
    nan = Envelope(event_id="018f0000-0000-7000-8000-000000000002", request_id="r-nan")
    nan.occurred_at.GetCurrentTime()
    nan.stage_completed.stage = "validation"
    nan.stage_completed.attempt = 1
    nan.stage_completed.duration_ms = math.nan
    nul = Envelope(event_id="018f0000-0000-7000-8000-000000000003", request_id="r-nul")
    nul.occurred_at.GetCurrentTime()
    nul.event_logged.event_type = "x"
    nul.event_logged.message = "a NUL \x00 Postgres text cannot hold"
    bad_id = Envelope(event_id="not-a-uuid", request_id="r-id")
    bad_id.occurred_at.GetCurrentTime()
    bad_id.request_started.SetInParent()
    poison = [
        b"\xff\xfe random bytes \x00\x01",
        good.SerializeToString()[:7],  # truncated protobuf
        nan.SerializeToString(),
        nul.SerializeToString(),
        bad_id.SerializeToString(),
    ]
    for value in poison:  # all on one partition, before the good event
        p.produce(topic, value, b"same-key", partition=0, headers=headers)
    p.produce(topic, good.SerializeToString(), b"r-after", partition=0, headers=headers)
    assert p.flush(30) == 0

    async def go() -> None:
        proj = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
        await proj.open()
        try:
            targets = await proj.assign_all()
            assert await proj.fold_until(targets)
        finally:
            await proj.close()
        conn = await asyncpg.connect(postgres)
        try:
            rows = await conn.fetch(
                f'SELECT "offset", event_id, reason FROM {schema}.quarantine ORDER BY "offset"'
            )
            assert [r["offset"] for r in rows] == [0, 1, 2, 3, 4]
            reasons = [r["reason"] for r in rows]
            assert reasons[0].startswith("undecodable")
            assert "duration_ms is nan" in reasons[2]
            assert reasons[3].startswith("rejected:")  # Postgres refused the NUL
            assert "is not a UUID" in reasons[4]
            assert (
                await conn.fetchval(
                    f"SELECT topic FROM {schema}.requests WHERE request_id = 'r-after'"
                )
                == "Tides"
            )
            assert (
                await conn.fetchval(
                    f"SELECT next_offset FROM {schema}.projector_offsets WHERE partition = 0"
                )
                == 6
            )
        finally:
            await conn.close()

    asyncio.run(go())


def test_a_fold_that_cannot_reach_its_targets_says_so_instead_of_swapping(
    setup: tuple[Settings, str, str], postgres: str
) -> None:
    from services.projector.runner import RebuildIncomplete, _short

    settings, topic, schema = setup
    publish_mix(settings, topic, 1)

    async def go() -> bool:
        proj = Projector(settings, postgres, schema=schema, group_id=None, topic=topic)
        await proj.open()
        try:
            ends = await proj.assign_all()
            beyond = {p: e + 5 for p, e in ends.items()}  # what a broker that lost a tail reports
            return await proj.fold_until(beyond, idle_s=1.0)
        finally:
            await proj.close()

    assert asyncio.run(go()) is False
    message = _short({0: 12}, {0: 7})
    assert "partition 0 at 7 of 12" in message
    assert issubclass(RebuildIncomplete, RuntimeError)


def test_publish_acked_refuses_what_the_broker_did_not_acknowledge() -> None:
    """What makes POST /api/v1/requests answer 503 instead of a 202 for nothing."""
    from services.projector.api.commands import PublishFailed, publish_acked
    from vividly.platform.stack import free_port
    from vividly.publish import KafkaPublisher

    dead = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", delivery_timeout_ms=1000)
    pub = KafkaPublisher(dead, "api-dead")

    async def go() -> None:
        with pytest.raises(PublishFailed, match=r"refused|acknowledge"):
            await publish_acked(pub, [("tracking.events", b"k", b"v", [])], timeout=10)

    try:
        asyncio.run(go())
    finally:
        pub.close(1)
