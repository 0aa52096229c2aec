"""The ``vividly`` command: the local stack (up/down/status) and database migrations.

``vividly up`` starts the embedded default (Apache Kafka, its log on disk under
``VIVIDLY_HOME``, + Postgres with pgvector), creates the topics, applies migrations,
starts and supervises the pipeline, and stays in the foreground until Ctrl-C;
``--detach`` runs it in the background. State (data, logs, ``stack.json``) lives under
``VIVIDLY_HOME`` (default ``.vividly``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vividly.config import STAGES, Settings, topic_plan
from vividly.platform.common import UsageError, stack_settings, trace_like_the_stack
from vividly.platform.stack import StackState

console = Console(stderr=False)
err = Console(stderr=True)

READY_TIMEOUT_S = 180.0


def stack_topics(settings: Settings) -> dict[str, int]:
    return topic_plan(settings)


# --------------------------------------------------------------------------- up / down
def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    home = settings.home.resolve()
    state = StackState(home)
    if state.held_elsewhere():
        current = state.read() or {}
        err.print(
            f"[yellow]The local stack is already running[/] (supervisor pid "
            f"{current.get('supervisor_pid', '?')}, home {home}).\n"
            "See it with `vividly status`; stop it with `vividly down`."
        )
        return 1
    if args.detach:
        return _up_detached(home, settings, args.infra_only, args.no_tracing)
    if not state.acquire():
        err.print("[yellow]Another `vividly up` is starting right now.[/]")
        return 1
    return _up_foreground(state, settings, infra_only=args.infra_only, tracing=not args.no_tracing)


def _up_detached(
    home: Path, settings: Settings, infra_only: bool = False, no_tracing: bool = False
) -> int:
    home.mkdir(parents=True, exist_ok=True)
    log = home / "up.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vividly.platform.cli",
                "up",
                *(["--infra-only"] if infra_only else []),
                *(["--no-tracing"] if no_tracing else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "VIVIDLY_HOME": str(home)},
        )
    state = StackState(home)
    deadline = time.monotonic() + READY_TIMEOUT_S
    with console.status("starting the local stack…"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err.print(
                    f"[red]The stack failed to start[/] (exit {proc.returncode}); "
                    f"last lines of {log}:"
                )
                err.print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
                return 1
            data = state.read()
            if data and data.get("status") == "ready" and data.get("supervisor_pid") == proc.pid:
                _print_status(data, settings)
                console.print("Stop it with [bold]vividly down[/].")
                return 0
            time.sleep(0.2)
    err.print(f"[red]The stack did not become ready within {READY_TIMEOUT_S:.0f}s[/]; see {log}")
    return 1


def _distinct_ports(settings: Settings, infra_only: bool, tracing: bool) -> None:
    """Every component of the stack on a port of its own: a component started on a port
    another one already listens on would look started and never serve."""
    from vividly.platform.stack import StackError

    names = ["kafka", "kafka_controller", "pg"]
    if not infra_only:
        names += ["gemini", "video", "s3", "smtp", "api"]
        if tracing:
            names += [f"jaeger_{n}" for n in ("otlp", "otlp_grpc", "query", "query_grpc", "health")]
    seen: dict[int, str] = {}
    for name in names:
        port = int(getattr(settings, f"{name}_port"))
        var = f"VIVIDLY_{name.upper()}_PORT"
        if port in seen:
            raise StackError(f"{seen[port]} and {var} are both {port}: give each its own port")
        seen[port] = var


def _tracing_plan(env: dict[str, str] | Any) -> str:
    """What ``vividly up`` does about traces, given the caller's environment: "jaeger"
    (start the local Jaeger and export to it), "yours" (the caller's own OTEL_* exporter
    settings reach the services unchanged) or "off" (the caller turned tracing off)."""
    from vividly.runtime.telemetry import requested

    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "off"
    if (env.get("OTEL_TRACES_EXPORTER") or "").strip().lower() == "none":
        return "off"
    return "yours" if requested(env) else "jaeger"


def _up_foreground(
    state: StackState, settings: Settings, infra_only: bool = False, tracing: bool = True
) -> int:
    from vividly.metrics import serve_metrics
    from vividly.platform.pipeline import Pipeline, PipelinePorts, load_corpus
    from vividly.platform.stack import ApacheKafkaBroker, EmbeddedPostgres, StackError, free_port
    from vividly.platform.supervisor import Supervisor, Watched
    from vividly.runtime.bus import ensure_topics
    from vividly.runtime.db import migrate

    home = state.home
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    _supervisor_logging(home)
    components: list[Any] = []
    info: dict[str, Any] = {
        "supervisor_pid": os.getpid(),
        "home": str(home),
        "status": "starting",
        "started_at": time.time(),
        "processes": {},
    }
    state.write(info)
    pipeline: Pipeline | None = None
    code = 0

    def record(name: str, managed: Any, restarts: int = 0) -> None:
        info["processes"][name] = {
            "pid": managed.pid,
            "url": managed.url,
            "log": str(managed.log),
            "restarts": restarts,
        }
        state.write(info)

    def restarted(w: Watched) -> None:
        record(w.name, w.managed, w.restarts)
        err.print(
            f"[yellow]{w.name} exited[/] (code {w.last_exit}); started again "
            f"(pid {w.managed.pid}, restart {w.restarts}); see {w.managed.log}"
        )

    supervisor = Supervisor(on_change=restarted)
    try:
        _distinct_ports(settings, infra_only, tracing)
        pg = EmbeddedPostgres(home / "pgdata", settings.pg_port)
        broker = ApacheKafkaBroker(
            home / "kafka",
            port=settings.kafka_port,
            controller_port=settings.kafka_controller_port,
            heap=settings.kafka_heap,
        )
        with console.status("starting Postgres…"):
            components.append(pg)
            record("postgres", pg.start())
        with console.status("starting the Kafka broker (Apache Kafka, log in VIVIDLY_HOME)…"):
            components.append(broker)
            record("kafka", broker.start())
        info["kafka_log_dir"] = str(broker.workdir / "data")
        info["kafka_cluster_id"] = broker.cluster_id
        topic_settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        with console.status("creating topics…"):
            ensure_topics(topic_settings, stack_topics(settings))
        with console.status("applying migrations…"):
            applied = asyncio.run(migrate(pg.url))
        info["migrations_applied"] = applied
        info["topics"] = sorted(stack_topics(settings))
        assert pg.managed is not None
        assert broker.managed is not None
        supervisor.watch("postgres", pg.managed, pg.start)
        supervisor.watch("kafka", broker.managed, broker.start)
        tracing_env: dict[str, str] = {"OTEL_SDK_DISABLED": "true"}
        if not tracing:
            info["traces"] = "off (--no-tracing)"
        elif not infra_only:
            tracing_env = _start_tracing(home, settings, components, record, supervisor, info)
        if not infra_only:
            pipeline = Pipeline(
                broker.bootstrap,
                pg.url,
                home,
                PipelinePorts(
                    settings.gemini_port,
                    settings.video_port,
                    settings.s3_port,
                    settings.smtp_port,
                    settings.api_port,
                ),
                extra_env=tracing_env,
            )
            for port, what in (
                (settings.gemini_port, "VIVIDLY_GEMINI_PORT"),
                (settings.video_port, "VIVIDLY_VIDEO_PORT"),
                (settings.s3_port, "VIVIDLY_S3_PORT"),
                (settings.smtp_port, "VIVIDLY_SMTP_PORT"),
                (settings.api_port, "VIVIDLY_API_PORT"),
            ):
                from vividly.platform.stack import port_in_use

                if port_in_use(port):
                    raise StackError(f"port {port} is taken; set {what} to another port")
            with console.status("starting the emulators, S3 (moto) and the SMTP sink…"):
                pipeline.start_emulators()
            for name, managed in pipeline.procs.items():
                record(name, managed)
            _load_corpus_with_progress(load_corpus, pg.url, pipeline.gemini_url)
            with console.status("starting the stage services…"):
                pipeline.start_services()
            with console.status("starting the projector and the monitoring API…"):
                pipeline.start_service("projector")
                pipeline.start_service("api")
            for name, managed in pipeline.procs.items():
                record(name, managed)
                supervisor.watch(name, managed, lambda n=name: pipeline.restart(n))  # type: ignore[misc]
            info["dashboard"] = f"{pipeline.api_url}/monitoring/dashboard"
            info["api"] = pipeline.api_url
            info["mail_dir"] = str(pipeline.mail_dir)
            info["videos"] = f"{pipeline.s3_url}/{settings.s3_bucket}/"
            info["env"] = {k: v for k, v in pipeline.env().items() if k.startswith("VIVIDLY_")}
        metrics_port = free_port()
        serve_metrics("127.0.0.1", metrics_port)
        info["supervisor_metrics"] = f"http://127.0.0.1:{metrics_port}/metrics"
        info["status"] = "ready"
        state.write(info)
        _print_status(info, settings)
        console.print("Press [bold]Ctrl-C[/] to stop everything.")
        while not stop.wait(0.5):
            supervisor.check()
    except StackError as exc:
        err.print(f"[red]Cannot start the local stack:[/] {exc}")
        code = 1
    finally:
        with console.status("stopping…"):
            if pipeline is not None:
                pipeline.stop()
            for c in reversed(components):
                c.stop()
        state.release()
        console.print("Local stack stopped.")
    return code


def _start_tracing(
    home: Path,
    settings: Settings,
    components: list[Any],
    record: Any,
    supervisor: Any,
    info: dict[str, Any],
) -> dict[str, str]:
    """Start the local Jaeger when the caller's environment leaves traces to the stack;
    returns what the services' environment gets for it."""
    from vividly.platform.jaeger import Jaeger, JaegerPorts

    plan = _tracing_plan(os.environ)
    if plan == "off":
        info["traces"] = "off (OTEL_SDK_DISABLED or OTEL_TRACES_EXPORTER=none)"
        return {}
    if plan == "yours":
        info["traces"] = "exported with your OTEL_* settings"
        return {}
    if not Jaeger.available():
        err.print(
            "[yellow]No Jaeger binary[/] (`make jaeger` builds it into .cache/jaeger): "
            "the stack runs without traces."
        )
        info["traces"] = "off (no Jaeger binary)"
        return {}
    jaeger = Jaeger(
        home / "logs",
        JaegerPorts(
            settings.jaeger_otlp_port,
            settings.jaeger_otlp_grpc_port,
            settings.jaeger_query_port,
            settings.jaeger_query_grpc_port,
            settings.jaeger_health_port,
        ),
    )
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with console.status("starting Jaeger (traces, kept in memory)…"):
        components.append(jaeger)
        record("jaeger", jaeger.start())
    assert jaeger.managed is not None
    supervisor.watch("jaeger", jaeger.managed, jaeger.start)
    info["traces"] = jaeger.query_url
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "OTEL_TRACES_SAMPLER": os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
    }
    info["otel"] = otel  # `vividly submit` and `demo` export their roots there too
    return {**otel, "VIVIDLY_JAEGER_QUERY_URL": jaeger.query_url}


def _supervisor_logging(home: Path) -> None:
    """The supervisor's own log: JSON lines in ``<home>/logs/supervisor.log``."""
    import logging

    from vividly.logs import JsonFormatter

    path = home / "logs" / "supervisor.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter("supervisor"))
    sup = logging.getLogger("vividly.platform.supervisor")
    sup.handlers[:] = [handler]
    sup.setLevel(logging.INFO)
    sup.propagate = False


def _load_corpus_with_progress(load: Any, database_url: str, gemini_url: str) -> int:
    from rich.progress import Progress

    from services.rag.providers import load_corpus as read_passages

    total = len(read_passages())
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("embedding and loading the OER corpus", total=total)
        n: int = asyncio.run(
            load(database_url, gemini_url, progress=lambda k: progress.advance(task, k))
        )
    console.print(f"OER corpus: {n} passages loaded")
    return n


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.platform.stack import pid_alive, stop_pid

    state = StackState(settings.home.resolve())
    data = state.read()
    if not state.held_elsewhere() and not data:
        console.print("The local stack is not running.")
        return 0
    data = data or {}
    sup = data.get("supervisor_pid")
    with console.status("stopping the local stack…"):
        if isinstance(sup, int) and pid_alive(sup):
            stop_pid(sup, timeout=60.0)
        # Whatever the supervisor left behind (it was SIGKILLed, say): stop by PID.
        for proc in data.get("processes", {}).values():
            pid = proc.get("pid")
            if isinstance(pid, int) and pid_alive(pid):
                stop_pid(pid, timeout=30.0)
    with contextlib.suppress(FileNotFoundError):
        state.file.unlink()
    console.print("Local stack stopped.")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.platform.stack import pid_alive

    state = StackState(settings.home.resolve())
    data = state.read()
    running = state.held_elsewhere() and data is not None
    if not running or data is None:
        if args.json:
            print(json.dumps({"running": False, "home": str(state.home)}))
        else:
            console.print("The local stack is not running. Start it with `vividly up`.")
        return 3
    for proc in data.get("processes", {}).values():
        proc["alive"] = pid_alive(int(proc["pid"]))
    data["running"] = True
    if args.json:
        print(json.dumps(data))
    else:
        _print_status(data, settings)
    return 0


def _print_status(data: dict[str, Any], settings: Settings) -> None:
    table = Table(title=f"Vividly local stack ({data.get('status', '?')})")
    table.add_column("component")
    table.add_column("pid", justify="right")
    table.add_column("restarts", justify="right")
    table.add_column("address", overflow="fold")
    table.add_column("log", overflow="fold")
    for name, proc in data.get("processes", {}).items():
        alive = proc.get("alive", True)
        table.add_row(
            name if alive else f"{name} [red](down, restarting)[/]",
            str(proc["pid"]),
            str(proc.get("restarts", 0)),
            proc["url"],
            proc.get("log", ""),
        )
    console.print(table)
    if data.get("kafka_log_dir"):
        console.print(
            f"the log (tracking.events, kept forever) is on disk in {data['kafka_log_dir']}"
        )
    kafka = data.get("processes", {}).get("kafka", {}).get("url")
    pg = data.get("processes", {}).get("postgres", {}).get("url")
    if kafka and pg:
        console.print(f"export VIVIDLY_KAFKA_BOOTSTRAP={kafka} VIVIDLY_DATABASE_URL={pg}")
    if data.get("dashboard"):
        console.print(
            f"dashboard: {data['dashboard']}  (sign in with the output of "
            "[bold]vividly token --role admin[/])"
        )
    if data.get("traces", "").startswith("http"):
        console.print(
            f"traces: Jaeger's query API at {data['traces']} (each request's span tree is "
            "on its dashboard page, and at GET /api/v1/monitoring/requests/ID/trace)"
        )
    elif data.get("traces"):
        console.print(f"traces: {data['traces']}")
    if data.get("mail_dir"):
        console.print(f"emails land in {data['mail_dir']}; videos in {data['videos']}")
        console.print(
            "try: [bold]vividly submit --topic Photosynthesis --objective "
            "'Explain the light reactions'[/]  or  [bold]vividly demo --count 20[/]"
        )


# --------------------------------------------------------------------------- pipeline
def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.publish import KafkaPublisher
    from vividly.runtime import telemetry
    from vividly.submit import submit_request
    from vividly.tracker import RequestTracker, TrackerError

    settings = stack_settings(settings)
    publisher = KafkaPublisher(settings, "vividly-cli")
    tracker = RequestTracker(publisher, producer="cli")
    trace_like_the_stack(settings)
    try:
        rid, cid = submit_request(
            tracker,
            publisher,
            student_id=args.student,
            topic=args.topic,
            learning_objective=args.objective,
            grade_level=args.grade,
            duration_minutes=args.duration,
            organization_id=args.org,
            idempotency_key=args.idempotency_key,
            student_email=args.email or "",
            metadata={"source": "cli"},
        )
    except TrackerError as exc:
        err.print(f"[red]{exc}[/]")
        return 2
    report = publisher.close(30)
    telemetry.shutdown()
    if not report.ok:
        err.print(
            f"[red]The request was not delivered to {settings.kafka_bootstrap}[/] "
            f"({report.failed} failed, {report.pending} pending). Is the stack up?"
        )
        return 1
    if args.json:
        print(json.dumps({"request_id": rid, "correlation_id": cid}))
    else:
        console.print(f"request_id     {rid}\ncorrelation_id {cid}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.platform.demo import run_demo
    from vividly.runtime import telemetry

    settings = stack_settings(settings)
    trace_like_the_stack(settings)
    try:
        return run_demo(settings, args.count, args.timeout, console)
    finally:
        telemetry.shutdown()


def cmd_corpus_load(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.platform.pipeline import load_corpus

    settings = stack_settings(settings)
    try:
        _load_corpus_with_progress(
            load_corpus, settings.effective_database_url(), settings.gemini_base_url
        )
    except Exception as exc:  # unreachable database or Gemini API: say which
        err.print(f"[red]Cannot load the corpus:[/] {type(exc).__name__}: {exc}")
        return 1
    return 0


# --------------------------------------------------------------------------- db
def cmd_db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.runtime.db import migrate

    url = args.database_url or settings.effective_database_url()
    try:
        applied = asyncio.run(migrate(url))
    except OSError as exc:
        from vividly.platform.stack import redact_url

        err.print(f"[red]Cannot reach Postgres at {redact_url(url)}:[/] {exc}")
        return 1
    console.print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


# --------------------------------------------------------------------------- read side
def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.runtime.auth import mint

    settings = stack_settings(settings)
    sub = args.sub or {"admin": "admin", "service": "service"}.get(args.role, "")
    if args.role == "student" and not args.sub:
        err.print("[red]a student token needs --sub STUDENT_ID[/]")
        return 2
    if args.role == "teacher" and not args.sub:
        sub = f"teacher@{args.org}"
    try:
        token = mint(
            settings.effective_jwt_secret(),
            role=args.role,
            sub=sub,
            org=args.org,
            email=args.email,
            ttl_s=args.ttl or settings.token_ttl_s,
            issuer=settings.jwt_issuer,
        )
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        return 2
    print(token)
    return 0


def _progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def cmd_projector_run(args: argparse.Namespace, settings: Settings) -> int:
    from services.projector import main as projector_main

    settings = stack_settings(settings)
    configure_cli_logging(settings)
    asyncio.run(projector_main.serve(settings))
    return 0


def cmd_projector_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from services.projector.runner import rebuild
    from vividly.runtime.db import migrate

    settings = stack_settings(settings)
    url = settings.effective_database_url()
    with _progress() as bar:
        task = bar.add_task("folding tracking.events into a fresh read model", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        async def go() -> dict[str, Any]:
            await migrate(url)
            return await rebuild(settings, url, progress=progress)

        try:
            info = asyncio.run(go())
        except OSError as exc:
            err.print(f"[red]Cannot reach Postgres or Kafka:[/] {exc}")
            return 1
    console.print(
        f"rebuilt [bold]{info['schema']}[/] from the log: {info['events']} events folded "
        f"({info['duplicates']} duplicates dropped) and swapped in"
    )
    return 0


def _time_arg(text: str | None, flag: str) -> Any:
    from vividly.platform.export import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from exc


def cmd_events_export(args: argparse.Namespace, settings: Settings) -> int:
    from vividly.platform.export import ExportFilter, export, read_events

    settings = stack_settings(settings)
    flt = ExportFilter(
        since=_time_arg(args.since, "--since"),
        until=_time_arg(args.until, "--until"),
        request_id=args.request,
        stage=args.stage,
    )
    if args.format == "parquet" and not args.output:
        raise UsageError("--format parquet needs --output FILE")
    output = Path(args.output) if args.output else None
    with _progress() as bar:
        task = bar.add_task("reading tracking.events", total=None)
        rows = read_events(
            settings,
            flt,
            on_total=lambda n: bar.update(task, total=n),
            on_progress=lambda n: bar.advance(task, n),
        )
        try:
            written = export(rows, args.format, output)
        except RuntimeError as exc:
            err.print(f"[red]{exc}[/]")
            return 1
    err.print(f"exported {written} events" + (f" to {output}" if output else ""))
    return 0


def cmd_events_replay(args: argparse.Namespace, settings: Settings) -> int:
    from services.projector.runner import replay
    from vividly.runtime.db import migrate

    settings = stack_settings(settings)
    since = _time_arg(args.since, "--since")
    until = _time_arg(args.until, "--until")
    url = settings.effective_database_url()
    with _progress() as bar:
        task = bar.add_task(f"replaying into schema {args.schema}", total=None)

        async def go() -> dict[str, Any]:
            await migrate(url)
            return await replay(
                settings,
                url,
                args.schema,
                since=since,
                until=until,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )

        try:
            info = asyncio.run(go())
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    console.print(
        f"replayed {info['events']} events into schema [bold]{info['schema']}[/] "
        f"(query it like vividly_read: SELECT * FROM {info['schema']}.requests)"
    )
    return 0


def configure_cli_logging(settings: Settings) -> None:
    from vividly.logs import configure_logging

    configure_logging("projector", settings.log_level)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vividly", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the embedded local stack")
    up.add_argument("--detach", "-d", action="store_true", help="run in the background")
    up.add_argument(
        "--infra-only",
        action="store_true",
        help="only the broker and Postgres (no emulators, no services)",
    )
    up.add_argument(
        "--no-tracing",
        action="store_true",
        help="do not start Jaeger nor export traces (as OTEL_SDK_DISABLED=true does)",
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the local stack")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="what runs, PIDs, addresses")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    submit = sub.add_parser("submit", help="submit one request to the pipeline")
    submit.add_argument("--topic", required=True)
    submit.add_argument("--objective", required=True, help="the learning objective")
    submit.add_argument("--grade", default="10", help="K or 1-12 (default 10)")
    submit.add_argument("--duration", type=int, default=5, help="minutes, 1-15 (default 5)")
    submit.add_argument("--student", default="stu-cli")
    submit.add_argument("--org", default="org-local")
    submit.add_argument("--email", help="the student's email address")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--json", action="store_true", help="print the ids as JSON")
    submit.set_defaults(func=cmd_submit)

    demo = sub.add_parser("demo", help="submit N varied requests and watch them live")
    demo.add_argument("--count", type=int, default=20)
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    demo.set_defaults(func=cmd_demo)

    corpus = sub.add_parser("corpus", help="the OER corpus")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True, metavar="TASK")
    load = corpus_sub.add_parser("load", help="embed and upsert the corpus (idempotent)")
    load.set_defaults(func=cmd_corpus_load)

    db = sub.add_parser("db", help="database tasks")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="TASK")
    mig = db_sub.add_parser("migrate", help="apply pending migrations (idempotent)")
    mig.add_argument("--database-url", help="defaults to VIVIDLY_DATABASE_URL / DATABASE_URL")
    mig.set_defaults(func=cmd_db_migrate)

    token = sub.add_parser("token", help="mint an API token for local use")
    token.add_argument("--role", required=True, choices=("admin", "teacher", "student", "service"))
    token.add_argument("--org", help="organization (required for teachers)")
    token.add_argument("--sub", help="subject: user id (the student id for students)")
    token.add_argument(
        "--email", help="where this student's emails go (the API never takes it from a body)"
    )
    token.add_argument("--ttl", type=int, help="lifetime in seconds (default 8 h)")
    token.set_defaults(func=cmd_token)

    proj = sub.add_parser("projector", help="the read-model projector")
    proj_sub = proj.add_subparsers(dest="projector_command", required=True, metavar="TASK")
    prun = proj_sub.add_parser("run", help="fold tracking.events into the read model (foreground)")
    prun.set_defaults(func=cmd_projector_run)
    prb = proj_sub.add_parser(
        "rebuild", help="rebuild the read model from the start of the log and swap it in"
    )
    prb.set_defaults(func=cmd_projector_rebuild)

    events = sub.add_parser("events", help="tracking events for analysts")
    ev_sub = events.add_subparsers(dest="events_command", required=True, metavar="TASK")
    exp = ev_sub.add_parser("export", help="stream decoded events from the log to a file")
    exp.add_argument("--since", help="ISO 8601 time or an age (15m, 2h, 7d)")
    exp.add_argument("--until", help="ISO 8601 time or an age")
    exp.add_argument("--request", help="only this request id")
    exp.add_argument("--stage", choices=STAGES, help="only events about this stage")
    exp.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    exp.add_argument("--output", "-o", help="file to write (default: stdout; parquet needs one)")
    exp.set_defaults(func=cmd_events_export)
    rep = ev_sub.add_parser("replay", help="re-read a time range into a separate schema")
    rep.add_argument("--schema", required=True, help="target schema (dropped and recreated)")
    rep.add_argument("--since", help="ISO 8601 time or an age (15m, 2h, 7d)")
    rep.add_argument("--until", help="ISO 8601 time or an age")
    rep.set_defaults(func=cmd_events_replay)

    from vividly.platform.requests import add_parser as add_requests

    add_requests(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic ValidationError: a bad VIVIDLY_* value
        err.print(f"[red]Bad configuration:[/] {exc}")
        return 2
    try:
        code: int = args.func(args, settings)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        err.print(f"[red]vividly: error:[/] {exc}")
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
