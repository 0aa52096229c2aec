"""``vividly requests list|retry|cancel``: the dashboard's filters and bulk actions from a
terminal, through the monitoring API (so they are scoped and recorded like any call).

A retry or cancel always shows its dry run first (the count, what is skipped and why, a
sample); ``--dry-run`` stops there, ``--yes`` acts without asking. Acting sends one
Idempotency-Key, the dry run's too (``--idempotency-key`` to repeat a call that was cut
short: the API answers the first run's result and finishes what it claimed).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table

from vividly.config import STAGES, Settings
from vividly.platform.common import UsageError, stack_settings
from vividly.platform.export import parse_time
from vividly.platform.stack import StackState
from vividly.readside import ApiStatusReader

console = Console()
err = Console(stderr=True)

STATUSES = (
    "active",
    "stalled",
    "queued",
    "running",
    "waiting",
    "completed",
    "failed",
    "cancelled",
)


def add_parser(sub: Any) -> None:
    """Register ``requests`` and its three tasks on the CLI's subparsers."""
    req = sub.add_parser("requests", help="find requests; retry or cancel them in bulk")
    req_sub = req.add_subparsers(dest="requests_command", required=True, metavar="TASK")
    for name, helptext in (
        ("list", "list requests matching a filter, newest first"),
        ("retry", "retry every failed request the filter matches (dry run first)"),
        ("cancel", "cancel every unfinished request the filter matches (dry run first)"),
    ):
        p = req_sub.add_parser(name, help=helptext)
        p.add_argument("--status", choices=STATUSES)
        p.add_argument("--stage", choices=STAGES, help="the current stage")
        p.add_argument("--failed-at", choices=STAGES, help="failed in this stage")
        p.add_argument("--org", help="organization id")
        p.add_argument("--student", help="student id")
        p.add_argument("--search", help="words in the topic or objective")
        p.add_argument("--error", help="words in the error message")
        p.add_argument("--since", help="created since: an age (30m, 2h, 7d) or ISO 8601")
        p.add_argument("--until", help="created before: an age or ISO 8601")
        p.add_argument(
            "--slower-than", type=float, metavar="MS", help="a stage attempt took longer"
        )
        p.add_argument("--api", help="the monitoring API (default: the local stack's)")
        p.add_argument("--token", help="bearer token (default: $VIVIDLY_TOKEN, or a local one)")
        p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
        if name == "list":
            p.add_argument("--limit", type=int, default=20, help="rows (1-200, default 20)")
        else:
            p.add_argument("--dry-run", action="store_true", help="count and show; do nothing")
            p.add_argument("--yes", "-y", action="store_true", help="act without asking")
            p.add_argument("--reason", default="", help="why (kept with the action)")
            p.add_argument("--idempotency-key", help="repeat an earlier call safely")
        p.set_defaults(func=cmd_requests)


def _filter(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, key in (
        ("status", "status"),
        ("stage", "stage"),
        ("failed_at", "failed_at"),
        ("org", "organization_id"),
        ("student", "student_id"),
        ("search", "q"),
        ("error", "error"),
    ):
        value = getattr(args, flag)
        if value:
            out[key] = value
    for flag in ("since", "until"):
        value = getattr(args, flag)
        if value:
            try:
                out[flag] = parse_time(value).isoformat()
            except ValueError as exc:
                raise UsageError(f"--{flag}: {exc}") from exc
    if args.slower_than is not None:
        if args.slower_than < 0:
            raise UsageError("--slower-than: a duration in ms, 0 or more")
        out["slower_than_ms"] = args.slower_than
    return out


def _client(args: argparse.Namespace, settings: Settings) -> ApiStatusReader:
    settings = stack_settings(settings)
    url = args.api or (StackState(settings.home.resolve()).read() or {}).get("api")
    url = url or f"http://{settings.api_host}:{settings.api_port}"
    token = args.token or os.environ.get("VIVIDLY_TOKEN")
    if not token:
        from vividly.runtime.auth import mint

        # The local stack's own secret: an admin token naming who runs the CLI.
        token = mint(
            settings.effective_jwt_secret(),
            role="admin",
            sub=f"cli-{getpass.getuser()}",
            ttl_s=600,
            issuer=settings.jwt_issuer,
        )
    return ApiStatusReader(url, token, timeout=120.0)


def _call(api: ApiStatusReader, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    try:
        return api.call(method, path, **kw)
    except OSError as exc:
        raise SystemExit(
            _fail(f"cannot reach the monitoring API at {api.base_url}: {exc}")
        ) from None


def _fail(message: str) -> int:
    err.print(f"[red]vividly requests:[/] {message}")
    return 1


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("request_id", "status", "stage", "organization", "topic", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            str(r.get("request_id", "")),
            str(r.get("status", "")),
            str(r.get("current_stage") or r.get("error_stage") or ""),
            str(r.get("organization_id") or ""),
            str(r.get("topic") or ""),
            str(r.get("error_message") or ""),
        )
    return table


def cmd_requests(args: argparse.Namespace, settings: Settings) -> int:
    flt = _filter(args)
    api = _client(args, settings)
    if args.requests_command == "list":
        return _list(api, flt, args)
    return _bulk(api, args.requests_command, flt, args)


def _list(api: ApiStatusReader, flt: dict[str, Any], args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    if not 1 <= args.limit <= 200:
        raise UsageError("--limit: 1 to 200")
    status, body = _call(
        api, "GET", "/api/v1/monitoring/requests?" + urlencode({**flt, "limit": args.limit})
    )
    if status != 200:
        return _fail(f"the API answered {status}: {body}")
    if args.json:
        print(json.dumps(body))
        return 0
    console.print(_table(body["items"], f"{len(body['items'])} request(s), newest first"))
    for item in body["items"]:
        if item.get("stalled"):
            s = item["stalled"]
            console.print(
                f"[yellow]stalled[/] {item['request_id']} at {s['stage']}: "
                f"{s['for_s']:.0f} s silent (expected {s['expected_s']:.0f} s)"
            )
    return 0


def _bulk(api: ApiStatusReader, action: str, flt: dict[str, Any], args: argparse.Namespace) -> int:
    path = f"/api/v1/requests/bulk/{action}"
    key = args.idempotency_key or str(uuid.uuid4())
    with console.status(f"counting what a bulk {action} would cover…"):
        status, dry = _call(
            api,
            "POST",
            path,
            body={"filter": flt, "dry_run": True},
            headers={"Idempotency-Key": key},
        )
    if status != 200:
        return _fail(f"the dry run was refused ({status}): {dry}")
    if args.json and args.dry_run:
        print(json.dumps(dry))
        return 0
    skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in dry["skipped"].items())
    out = err if args.json else console  # --json: stdout is the answer alone
    out.print(
        f"[bold]{action}[/]: {dry['matched']} request(s) match; "
        f"[bold]{dry['eligible']}[/] would be {action}{'ied' if action == 'retry' else 'led'}"
        + (f" (skipped: {skipped})" if skipped else "")
    )
    if dry["sample"]:
        out.print(_table(dry["sample"], f"a sample of {len(dry['sample'])}"))
    if args.dry_run or dry["eligible"] == 0:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("not a terminal: pass --yes to act without a prompt")
        from rich.prompt import Confirm

        if not Confirm.ask(f"{action.capitalize()} {dry['eligible']} request(s)?", default=False):
            console.print("nothing done")
            return 1
    with console.status(f"{action} of {dry['eligible']} request(s)…"):
        status, done = _call(
            api,
            "POST",
            path,
            body={"filter": flt, "dry_run": False, "reason": args.reason},
            headers={"Idempotency-Key": key},
        )
    if status not in (200, 202):
        return _fail(
            f"the {action} was refused ({status}): {done}; repeat it with "
            f"--idempotency-key {key} to finish what it started"
        )
    if args.json:
        print(json.dumps(done))
        return 0
    note = " (a repeat: the first run's result)" if done.get("repeated") else ""
    console.print(
        f"[green]{action}[/]: {done['applied']} request(s) as bulk {done['bulk_id']}{note}; "
        f"idempotency key {key}"
    )
    return 0
