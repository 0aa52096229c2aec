"""Cancel, and bulk retry and cancel: written as events on Kafka (never as updates of the
read model), behind the command-side tables that make them safe to repeat.

- A cancel writes the request's fence (``vividly.cancellations``) first, which every
  stage service checks before and during its work, then RequestCancelled. Its event id is
  derived from the request, so a repeat after a crash publishes the very same event (the
  projector keeps one).
- A bulk action is named by its caller and Idempotency-Key (``bulk_id``). It claims
  its requests (retry log rows, fences) under that id, publishes one BulkActionRequested
  and one event per request (ids derived from the bulk and the request), then stores its
  result. A repeat with the same key finishes what a cut-short one claimed and answers
  what the first one answered.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.projector.api import views
from services.projector.api.commands import publish_acked, retry_attrs
from services.projector.api.views import RequestFilter
from services.projector.fold import ACTIVE
from services.projector.store import LIVE_SCHEMA, quote_ident
from vividly import tracing
from vividly.config import STAGE_INPUT_TOPICS
from vividly.events import WorkItem
from vividly.publish import KafkaPublisher, Outgoing
from vividly.runtime.auth import Principal
from vividly.tracker import Captured, RequestTracker

S = quote_ident(LIVE_SCHEMA)
_NS = uuid.UUID("0b5d7f0e-4a51-4f7e-9d43-2f0d8b3c6a21")
SAMPLE = 10


class ActionRefused(Exception):
    """409: not possible in the request's (or the filter's) current state."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra


def derived_id(*parts: str) -> str:
    """A UUID that is the same for the same parts: a repeated action's event ids."""
    return str(uuid.uuid5(_NS, "\x1f".join(parts)))


# ---------------------------------------------------------------------- one cancel
async def cancel_one(
    conn: Any,
    tracker: RequestTracker,
    publisher: KafkaPublisher,
    request: dict[str, Any],
    requested_by: str,
    reason: str,
) -> str | None:
    """Cancel a request the caller sees; returns the event's log position. A finished
    request is refused (409 ``finished``)."""
    rid = request["request_id"]
    if request["status"] not in ACTIVE:
        raise ActionRefused("finished", f"request {rid} is {request['status']}: nothing to cancel")
    await conn.execute(
        "INSERT INTO vividly.cancellations (request_id, requested_by, reason)"
        " VALUES ($1, $2, $3) ON CONFLICT (request_id) DO NOTHING",
        rid,
        requested_by,
        reason,
    )
    fence = await conn.fetchrow(
        "SELECT requested_by, reason, bulk_id FROM vividly.cancellations WHERE request_id = $1",
        rid,
    )
    tracker.bind(rid, request.get("correlation_id") or "")
    with tracker.capturing() as events:
        # The fence's own who and why: a second cancel before the first is folded repeats
        # the first one's event, not a new one.
        tracker.cancel_request(
            rid,
            fence["requested_by"],
            fence["reason"],
            bulk_id=fence["bulk_id"] or "",
            event_id=derived_id("cancel", rid),
        )
    return await publish_acked(publisher, events)


# ---------------------------------------------------------------------- bulk
@dataclass
class Plan:
    """What a bulk action covers: every match, the ones it will act on, and why the
    others are left."""

    matched: int
    eligible: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)


async def plan(
    conn: Any,
    who: Principal,
    action: str,
    flt: RequestFilter,
    *,
    max_retries: int,
    expected: dict[str, float],
    default_expected: float,
    limit: int,
) -> Plan:
    """The requests ``flt`` matches in ``who``'s scope, and which of them ``action`` can
    act on: a retry needs a failed request with its failed stage's input kept and retries
    left; a cancel needs a request not finished. More than ``limit`` matches is refused."""
    params: list[Any] = []
    where = views.filter_sql(flt, who, params, expected, default_expected)
    cond = " AND ".join(where)
    matched = int(await conn.fetchval(f"SELECT count(*) FROM {S}.requests r WHERE {cond}", *params))
    if matched > limit:
        raise ActionRefused(
            "too_many",
            f"the filter matches {matched} requests; one bulk action covers at most {limit}",
            matched=matched,
        )
    skipped: dict[str, int] = {}
    if action == "retry":
        rows = await conn.fetch(
            f"SELECT r.request_id, r.correlation_id, r.status, r.error_stage, r.retry_count,"
            f" r.topic, r.organization_id, r.student_id, r.created_at, r.error_message,"
            f" s.attempt, s.input_item"
            f" FROM {S}.requests r LEFT JOIN LATERAL (SELECT attempt, input_item"
            f"   FROM {S}.request_stages WHERE request_id = r.request_id"
            f"   AND stage = r.error_stage AND input_item IS NOT NULL"
            f"   ORDER BY attempt DESC LIMIT 1) s ON true"
            f" WHERE {cond}"
            f" ORDER BY r.created_at DESC, r.request_id DESC",
            *params,
        )
        eligible = []
        for r in rows:
            why = None
            if r["status"] != "failed":
                why = "not_failed"
            elif r["retry_count"] >= max_retries:
                why = "retry_budget_spent"
            elif r["input_item"] is None:
                why = "no_work_item"
            if why:
                skipped[why] = skipped.get(why, 0) + 1
            else:
                eligible.append(dict(r))
    else:
        rows = await conn.fetch(
            f"SELECT request_id, correlation_id, status, current_stage, topic,"
            f" organization_id, student_id, created_at FROM {S}.requests r WHERE {cond}"
            f" ORDER BY created_at DESC, request_id DESC",
            *params,
        )
        eligible = []
        for r in rows:
            if r["status"] in ACTIVE:
                eligible.append(dict(r))
            else:
                skipped["finished"] = skipped.get("finished", 0) + 1
    sample = [
        {
            k: views.iso(v)
            for k, v in r.items()
            if k not in ("input_item", "correlation_id", "retry_count", "attempt")
        }
        for r in eligible[:SAMPLE]
    ]
    return Plan(matched, eligible, skipped, sample)


async def run_bulk(
    conn: Any,
    tracker: RequestTracker,
    publisher: KafkaPublisher,
    who: Principal,
    action: str,
    flt: RequestFilter,
    the_plan: Plan,
    idempotency_key: str,
    reason: str,
    given: dict[str, Any],
) -> dict[str, Any]:
    """Carry out a planned bulk action (see the module's docstring for why it is safe to
    repeat); returns its result. ``given`` is the filter as the caller wrote it (a
    relative "since" stays "2h"), ``flt`` as resolved now."""
    by = who.requested_by
    bulk_id = derived_id("bulk", by, idempotency_key)
    filter_json = {**given, "resolved": flt.as_json()}
    eligible = the_plan.eligible
    if action == "retry":
        await conn.execute(
            "INSERT INTO vividly.retry_log (request_id, stage, attempt, requested_by, bulk_id)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[])"
            " ON CONFLICT DO NOTHING",
            [r["request_id"] for r in eligible],
            [r["error_stage"] for r in eligible],
            [int(r["attempt"]) + 1 for r in eligible],
            [by] * len(eligible),
            [bulk_id] * len(eligible),
        )
        mine = await conn.fetch(
            "SELECT request_id, stage, attempt FROM vividly.retry_log WHERE bulk_id = $1", bulk_id
        )
        claimed = {r["request_id"]: r for r in mine}
        chosen = [r for r in eligible if r["request_id"] in claimed]
        # Claimed by this bulk in a run cut short, and no longer matching (already folded
        # as queued): finish them too.
        source = await _kept_inputs(
            conn, bulk_id, [rid for rid in claimed if rid not in _ids(chosen)]
        )
        chosen.extend(source)
    else:
        await conn.execute(
            "INSERT INTO vividly.cancellations (request_id, requested_by, reason, bulk_id)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
            " ON CONFLICT (request_id) DO NOTHING",
            [r["request_id"] for r in eligible],
            [by] * len(eligible),
            [reason] * len(eligible),
            [bulk_id] * len(eligible),
        )
        mine = await conn.fetch(
            "SELECT c.request_id, r.correlation_id FROM vividly.cancellations c"
            f" LEFT JOIN {S}.requests r USING (request_id) WHERE c.bulk_id = $1",
            bulk_id,
        )
        chosen = [dict(r) for r in mine]
    already = len(eligible) - len(_ids(chosen) & _ids(eligible))
    skipped = dict(the_plan.skipped)
    if already:
        skipped["already_" + ("requested" if action == "retry" else "cancelled")] = already
    items: list[Captured] = []
    with tracker.capturing() as events:
        tracker.bulk_action_requested(
            bulk_id,
            action,
            by,
            filter_json,
            len(chosen),
            idempotency_key=idempotency_key,
            organization_id=who.org or "",
            reason=reason,
            event_id=derived_id("bulk-event", bulk_id),
        )
        for r in chosen:
            rid = r["request_id"]
            tracker.bind(rid, r.get("correlation_id") or "")
            if action == "retry":
                item = WorkItem()
                item.ParseFromString(bytes(r["input_item"]))
                item.stage = r["error_stage"]
                item.attempt = int(r["attempt"]) + 1
                item.ClearField("failure")
                attrs = retry_attrs(rid, item.stage, item.attempt, by)
                with tracing.request_root(
                    f"retry {item.stage}",
                    item.correlation_id,
                    {**attrs, "vividly.bulk_id": bulk_id},
                ) as root:
                    tracker.request_retried(
                        rid,
                        item.stage,
                        by,
                        item.attempt,
                        bulk_id=bulk_id,
                        event_id=derived_id("retry", rid, item.stage, str(item.attempt)),
                    )
                out = Outgoing.work_item(STAGE_INPUT_TOPICS[item.stage], item)
                headers = tracing.with_traceparent(out.headers, root)
                items.append((out.topic, out.key, out.value, headers))
            else:
                tracker.cancel_request(
                    rid, by, reason, bulk_id=bulk_id, event_id=derived_id("cancel", rid)
                )
    # The events first, then the work items: the pipeline never runs a retry the log
    # does not have. A failure here is a 503; the claims stay, and repeating the call
    # with the same key publishes the same messages (same ids) and finishes.
    position = await publish_acked(publisher, events, timeout=60.0)
    if items:
        await publish_acked(publisher, items, timeout=60.0)
    result = {
        "bulk_id": bulk_id,
        "action": action,
        "dry_run": False,
        "requested_by": by,
        "filter": filter_json,
        "matched": the_plan.matched,
        "applied": len(chosen),
        "skipped": skipped,
        "sample": the_plan.sample,
        "reason": reason,
        "position": position,
    }
    await conn.execute(
        "INSERT INTO vividly.bulk_actions (bulk_id, action, requested_by, organization_id,"
        " idempotency_key, filter, matched, applied, skipped, result)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10::jsonb)"
        " ON CONFLICT (bulk_id) DO NOTHING",
        bulk_id,
        action,
        by,
        who.org or "",
        idempotency_key,
        orjson.dumps(given).decode(),
        the_plan.matched,
        len(chosen),
        sum(skipped.values()),
        orjson.dumps(result).decode(),
    )
    return result


async def earlier(
    conn: Any, who: Principal, idempotency_key: str, action: str, given: dict[str, Any]
) -> dict[str, Any] | None:
    """The result of this caller's bulk action with this key, if it ran to the end; a
    different action or filter under the same key is refused."""
    row = await conn.fetchrow(
        "SELECT action, filter::text AS filter, result::text AS result FROM vividly.bulk_actions"
        " WHERE requested_by = $1 AND idempotency_key = $2",
        who.requested_by,
        idempotency_key,
    )
    if row is None:
        return None
    if row["action"] != action or orjson.loads(row["filter"]) != given:
        raise ActionRefused(
            "idempotency_key_reused",
            "this Idempotency-Key was used for another bulk action; use a new key",
        )
    result: dict[str, Any] = orjson.loads(row["result"])
    result["repeated"] = True
    return result


def _ids(rows: list[dict[str, Any]]) -> set[str]:
    return {r["request_id"] for r in rows}


async def _kept_inputs(conn: Any, bulk_id: str, request_ids: list[str]) -> list[dict[str, Any]]:
    """For retry claims whose request no longer matches: the claim and the kept input."""
    if not request_ids:
        return []
    rows = await conn.fetch(
        f"SELECT l.request_id, r.correlation_id, l.stage AS error_stage, l.attempt - 1 AS attempt,"
        f" (SELECT input_item FROM {S}.request_stages s WHERE s.request_id = l.request_id"
        f"   AND s.stage = l.stage AND s.input_item IS NOT NULL ORDER BY attempt DESC LIMIT 1)"
        f"   AS input_item"
        f" FROM vividly.retry_log l JOIN {S}.requests r USING (request_id)"
        f" WHERE l.bulk_id = $1 AND l.request_id = ANY($2::text[])",
        bulk_id,
        request_ids,
    )
    return [dict(r) for r in rows if r["input_item"] is not None]
