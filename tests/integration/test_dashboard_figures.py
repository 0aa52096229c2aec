"""The dashboard's last-hour stage figures, summed by Postgres (views._stage_totals),
equal the sum of the kept minute rows bucket by bucket, for an admin (every school) and
a teacher (one organization), and leave out the minutes before the hour."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.projector.api import views
from services.projector.fold import N_BUCKETS
from tests.conftest import fresh_database
from vividly.config import STAGES
from vividly.runtime.auth import Principal
from vividly.runtime.db import migrate

S = views.S


def python_sum(rows: list[Any]) -> dict[str, dict[str, Any]]:
    """What the dashboard computed in Python before: each stage's rows added up."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        st = out.setdefault(
            r["stage"],
            {"started": 0, "completed": 0, "failed": 0, "retried": 0, "max": 0.0},
        )
        for k in ("started", "completed", "failed", "retried"):
            st[k] += r[k]
        st["max"] = max(st["max"], r["duration_max_ms"])
        acc = st.setdefault("buckets", [0] * N_BUCKETS)
        for i, n in enumerate(r["duration_buckets"]):
            acc[i] += n
    return out


def as_dict(rows: list[Any]) -> dict[str, dict[str, Any]]:
    return {
        r["stage"]: {
            **{k: r[k] for k in ("started", "completed", "failed", "retried")},
            "max": r["duration_max_ms"],
            "buckets": list(r["duration_buckets"]),
        }
        for r in rows
    }


@pytest.mark.integration
def test_stage_totals_equal_the_kept_rows_added_up(postgres: str) -> None:
    url = fresh_database(postgres, "dash")
    asyncio.run(migrate(url))
    rng = random.Random(5)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    since = now - timedelta(hours=1)

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            for minutes_ago in range(0, 75, 3):  # some before the hour: left out
                at = now - timedelta(minutes=minutes_ago)
                for stage in rng.sample(STAGES, 4):
                    per_org = []
                    for org in ("org-a", "org-b"):
                        row = (
                            rng.randint(0, 50),
                            rng.randint(0, 40),
                            rng.randint(0, 5),
                            rng.randint(0, 5),
                            rng.uniform(0, 9000),
                            [rng.randint(0, 30) for _ in range(N_BUCKETS)],
                        )
                        per_org.append(row)
                        await conn.execute(
                            f"INSERT INTO {S}.org_stage_metrics_minute (organization_id,"
                            " bucket, stage, started, completed, failed, retried,"
                            " duration_max_ms, duration_buckets)"
                            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                            org,
                            at,
                            stage,
                            *row,
                        )
                    total = [sum(x) for x in zip(*(r[:4] for r in per_org), strict=True)]
                    hist = [sum(x) for x in zip(*(r[5] for r in per_org), strict=True)]
                    await conn.execute(
                        f"INSERT INTO {S}.stage_metrics_minute (bucket, stage, started,"
                        " completed, failed, retried, duration_max_ms, duration_buckets)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        at,
                        stage,
                        *total,
                        max(r[4] for r in per_org),
                        hist,
                    )
            for who in (
                Principal("admin-1", "admin"),
                Principal("t-a", "teacher", "org-a"),
                Principal("t-b", "teacher", "org-b"),
            ):
                kept = await views._stage_figures(conn, who, "minute", since)
                assert kept, "the hour has rows"
                totals = await views._stage_totals(conn, who, since)
                assert as_dict(totals) == python_sum(kept), who
            # An organization with no rows: no stage at all (the dashboard shows zeros).
            assert await views._stage_totals(conn, Principal("t", "teacher", "org-z"), since) == []
        finally:
            await conn.close()

    asyncio.run(run())
