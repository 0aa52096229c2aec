"""Pipeline benchmark on the local stack: Apache Kafka (the broker production runs; the
jars `make setup` fetched), the embedded Postgres, and the five services as processes. Three parts:

1. framework: all five services with in-process null providers (same interfaces, no
   network, no rendering): end-to-end requests/s at saturation, and stage hand-off
   latency (StageCompleted of one stage → StageStarted of the next) at a steady load;
2. real path: emulators, moto's S3, the SMTP sink and real thumbnails at zero added
   latency: requests/s, and where the CPU goes (CPU seconds per process);
3. concurrency: 2,000 requests in flight while the video emulator takes 20 s a job:
   seconds until all completed, and each service's peak RSS; then, as its baseline in
   the same run, the external calls that follow a finished job (status poll, download,
   thumbnail, two S3 puts, one email) made alone for as many requests by
   ``bench.external``: the job time plus that is ``inflight_floor_s``, what part 3
   would take if the pipeline itself cost nothing.

    .venv/bin/python -m bench.pipeline [--requests 3000] [--real-requests 300]
                                       [--inflight 2000] [--job-seconds 20]
                                       [--parts 1,2,3]

Part 1 runs twice in the same run: tracing off, then on (every request sampled, every
service exporting OTLP to a real Jaeger built by ``make setup``); ``tracing_ratio`` is
on/off requests/s (target ≥ 0.9). ``--no-tracing`` skips the second run.

The last line printed is one JSON object with requests_per_s, handoff_p50_ms,
handoff_p99_ms (tracing off), tracing_off_requests_per_s, tracing_on_requests_per_s,
tracing_ratio, tracing_on_handoff_p50_ms/p99_ms, real_requests_per_s, inflight_2000_s,
max_rss_mb (and details).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from google.protobuf.message import DecodeError
from rich.console import Console
from rich.progress import Progress

from vividly.config import DLQ_TOPIC, STAGE_TOPICS, STAGES, TRACKING_TOPIC, Settings
from vividly.events import decode_envelope
from vividly.platform.pipeline import SERVICES, Pipeline, PipelinePorts, load_corpus_sync
from vividly.platform.stack import ApacheKafkaBroker, EmbeddedPostgres, free_port
from vividly.publish import KafkaPublisher
from vividly.runtime.bus import ensure_topics
from vividly.runtime.db import migrate
from vividly.submit import submit_request
from vividly.tracker import RequestTracker

console = Console(stderr=True)
TOPICS = [
    "Photosynthesis",
    "Volcanoes",
    "Fractions",
    "The water cycle",
    "Electric circuits",
    "Ancient Egypt",
    "DNA and genetics",
    "Newton's laws",
    "The solar system",
    "Chemical reactions",
    "Plate tectonics",
    "Cell structure",
]


WATCHED = {b"stage_started", b"stage_completed", b"request_completed", b"request_failed"}


class Watch:
    """Follows tracking.events from its current end; times per request and stage."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                # Batched fetches: the watcher reads every event of every request,
                # and a fetch per event would load the broker the pipeline shares.
                # Times are taken from the events themselves; only the completion
                # receipts can lag, by under 50 ms.
                "fetch.wait.max.ms": 50,
                "fetch.min.bytes": 256 * 1024,
            }
        )
        parts = (
            self.consumer.list_topics(TRACKING_TOPIC, timeout=10).topics[TRACKING_TOPIC].partitions
        )
        self.consumer.assign([TopicPartition(TRACKING_TOPIC, p, OFFSET_END) for p in parts])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.consumer.consume(10, 0.1)
            if all(tp.offset >= 0 for tp in self.consumer.position(self.consumer.assignment())):
                break
        self.started: dict[tuple[str, str], float] = {}
        self.completed: dict[tuple[str, str], float] = {}
        self.done: dict[str, float] = {}
        self.failed: set[str] = set()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self.consumer.consume(2000, 0.1):
                if msg.error() is not None:
                    continue
                kind_header = dict(msg.headers() or []).get("vividly-event")
                if kind_header not in WATCHED:
                    continue
                try:
                    env = decode_envelope(msg.value() or b"")
                except DecodeError:  # poison in the log: the projector quarantines it
                    continue
                kind = env.WhichOneof("event")
                t = env.occurred_at.ToNanoseconds() / 1e9
                with self.lock:
                    if kind == "stage_started":
                        self.started.setdefault((env.request_id, env.stage_started.stage), t)
                    elif kind == "stage_completed":
                        self.completed[(env.request_id, env.stage_completed.stage)] = t
                    elif kind == "request_completed":
                        self.done[env.request_id] = time.time()
                    elif kind == "request_failed":
                        self.failed.add(env.request_id)
                        self.done[env.request_id] = time.time()
        self.consumer.close()

    def wait(self, ids: set[str], timeout: float, label: str) -> float:
        t0 = time.monotonic()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(label, total=len(ids))
            while time.monotonic() - t0 < timeout:
                with self.lock:
                    n = sum(1 for r in ids if r in self.done)
                progress.update(task, completed=n)
                if n == len(ids):
                    break
                time.sleep(0.1)
        with self.lock:
            missing = [r for r in ids if r not in self.done]
        if missing:
            raise SystemExit(f"{label}: {len(missing)} of {len(ids)} unfinished after {timeout}s")
        return max(self.done[r] for r in ids)

    def handoffs_ms(self, ids: set[str]) -> list[float]:
        out = []
        with self.lock:
            for rid in ids:
                for a, b in itertools.pairwise(STAGES):
                    if (rid, a) in self.completed and (rid, b) in self.started:
                        out.append((self.started[(rid, b)] - self.completed[(rid, a)]) * 1000)
        return out

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


def submit_many(
    tracker: RequestTracker,
    publisher: KafkaPublisher,
    n: int,
    *,
    rate: float | None = None,
    varied: bool = True,
) -> tuple[set[str], float]:
    ids: set[str] = set()
    t0 = time.time()
    for i in range(n):
        if rate:
            target = t0 + i / rate
            delay = target - time.time()
            if delay > 0:
                time.sleep(delay)
        topic = TOPICS[i % len(TOPICS)]
        rid, _ = submit_request(
            tracker,
            publisher,
            student_id=f"bench-{i % 50}",
            topic=topic,
            learning_objective=f"Explain the key ideas of {topic}",
            grade_level=str(3 + (i % 10) if varied else 8),
            duration_minutes=(1 + i % 3) if varied else 1,
            organization_id="org-bench",
        )
        ids.add(rid)
        if i % 500 == 0:
            publisher.flush(0)
    if not publisher.flush(60).ok:
        raise SystemExit("submissions were not delivered")
    return ids, t0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            # Children too: Postgres backends, ffmpeg runs.
            out[name] = t.user + t.system + t.children_user + t.children_system
            if pid != os.getpid():  # our own children are the services: counted apart
                for child in psutil.Process(pid).children(recursive=True):
                    ct = child.cpu_times()
                    out[name] += ct.user + ct.system
            else:
                out[name] = t.user + t.system
        except psutil.NoSuchProcess:
            out[name] = 0.0
    return out


class RssSampler:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak: dict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                try:
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    continue
                self.peak[name] = max(self.peak[name], rss)
            time.sleep(0.25)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self.thread.join(2)
        return {k: round(v, 1) for k, v in self.peak.items()}


@dataclass
class Bench:
    """What the three parts share: the broker, Postgres, a submitter and the watcher."""

    args: argparse.Namespace
    home: Path
    broker: ApacheKafkaBroker
    pg: EmbeddedPostgres
    tracker: RequestTracker
    publisher: KafkaPublisher
    watch: Watch
    broker_env: dict[str, str]
    result: dict[str, Any]

    def pids(self, pipeline: Pipeline) -> dict[str, int]:
        """Every process of a run by name: the pipeline's, the broker and Postgres."""
        return {
            **{n: m.pid for n, m in pipeline.procs.items()},
            "kafka": self.broker.managed.pid if self.broker.managed else 0,
            "postgres": self.pg.managed.pid if self.pg.managed else 0,
        }


def framework(b: Bench, tracing: dict[str, str] | None = None) -> dict[str, Any]:
    """Part 1: null providers; saturation throughput and hand-off latency. With
    ``tracing`` (the OTEL_* environment), every service exports its spans."""
    args = b.args
    label = "tracing on" if tracing else "tracing off"
    console.print(f"[bold]1. framework throughput (null providers), {label}[/]")
    env = {
        "VIVIDLY_PROVIDERS": "null",
        "VIVIDLY_MAX_IN_FLIGHT": "256",
        "OTEL_SDK_DISABLED": "true",
        **b.broker_env,
    }
    if tracing:
        env.pop("OTEL_SDK_DISABLED")
        env.update(tracing)
    pipeline = Pipeline(
        b.broker.bootstrap,
        b.pg.url,
        b.home / ("null-traced" if tracing else "null"),
        PipelinePorts.free(),
        extra_env=env,
    )
    out: dict[str, Any] = {}
    try:
        pipeline.start_services()
        warm, _ = submit_many(b.tracker, b.publisher, 100)
        b.watch.wait(warm, 120, "warm-up")
        steady, _ = submit_many(b.tracker, b.publisher, args.steady_requests, rate=args.steady_rate)
        b.watch.wait(steady, 120, f"steady load ({args.steady_rate:.0f} req/s)")
        hand = b.watch.handoffs_ms(steady)
        pids = {**b.pids(pipeline), "bench (submit + watch)": os.getpid()}
        before = cpu_seconds(pids)
        ids, t0 = submit_many(b.tracker, b.publisher, args.requests)
        last = b.watch.wait(ids, 600, f"{args.requests} requests at saturation")
        out["requests_per_s"] = round(args.requests / (last - t0), 1)
        used = {n: v - before.get(n, 0) for n, v in cpu_seconds(pids).items()}
        out["cpu_ms_per_request"] = {
            n: round(1000 * v / args.requests, 2)
            for n, v in sorted(used.items(), key=lambda kv: -kv[1])
        }
        out["handoff_p50_ms"] = round(pct(hand, 0.5), 2)
        out["handoff_p99_ms"] = round(pct(hand, 0.99), 2)
        sat_hand = b.watch.handoffs_ms(ids)
        out["handoff_at_saturation_p50_ms"] = round(pct(sat_hand, 0.5), 1)
        out["sample"] = next(iter(steady))
        console.print(
            f"  {out['requests_per_s']} req/s end to end; hand-off p50 "
            f"{out['handoff_p50_ms']} ms, p99 {out['handoff_p99_ms']} ms "
            f"at {args.steady_rate:.0f} req/s"
        )
    finally:
        pipeline.stop()
    return out


def spans_of(query_url: str, request_id: str, timeout: float = 30) -> dict[str, int]:
    """The spans Jaeger holds for one request of the traced run (found by its
    ``vividly.request_id`` attribute), counted by service and name: proof that "tracing
    on" exported, and where a request's spans come from."""
    import urllib.parse
    import urllib.request

    q = urllib.parse.urlencode(
        {"service": "ingest", "tags": json.dumps({"vividly.request_id": request_id}), "limit": 5}
    )
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{query_url}/api/traces?{q}", timeout=10) as r:
            data = json.load(r).get("data") or []
        names: dict[str, int] = {}
        if data:
            tid = data[0]["traceID"]
            with urllib.request.urlopen(f"{query_url}/api/traces/{tid}", timeout=10) as r:
                got = json.load(r)["data"][0]
            services = {k: v["serviceName"] for k, v in got["processes"].items()}
            for span in got["spans"]:
                name = f"{services[span['processID']]}: {span['operationName']}"
                names[name] = names.get(name, 0) + 1
        if names != seen:
            seen, steady_since = names, time.monotonic()
        elif names and time.monotonic() - steady_since > 6:  # past every exporter's 5 s batch
            return names
        time.sleep(0.5)
    return seen


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s (the upper middle of an even count)."""
    return sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2]


def framework_with_and_without_tracing(b: Bench) -> None:
    """Part 1, tracing off (the baseline, and the figures the older keys report) and on
    (every request sampled, exported to a real Jaeger), alternated ``--tracing-rounds``
    times in the same run; each side's figures are those of its median run (these two
    cores are shared: one run of each would mostly measure the neighbours)."""
    from vividly.platform.jaeger import Jaeger, JaegerPorts

    result, rounds = b.result, max(1, b.args.tracing_rounds)
    if b.args.no_tracing:
        offs = [framework(b)]
        ons: list[dict[str, Any]] = []
    else:
        if not Jaeger.available():
            raise SystemExit("no Jaeger binary for the traced run: `make setup` builds it")
        jaeger = Jaeger(b.home, JaegerPorts.free())
        jaeger.start()
        assert jaeger.managed is not None
        backend = psutil.Process(jaeger.managed.pid)
        tracing_env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        }
        offs, ons, jaeger_cpu = [], [], 0.0
        try:
            for _ in range(rounds):
                offs.append(framework(b))
                cpu0 = sum(backend.cpu_times()[:2])
                ons.append(framework(b, tracing_env))
                jaeger_cpu += sum(backend.cpu_times()[:2]) - cpu0
            names = spans_of(jaeger.query_url, ons[-1]["sample"])
            result["tracing_spans_per_request"] = sum(names.values())
            result["tracing_spans_of_one_request"] = dict(sorted(names.items()))
        finally:
            jaeger.stop()
        # Jaeger shares these cores in this run (in production it has its own host).
        result["tracing_jaeger_cpu_s_per_run"] = round(jaeger_cpu / rounds, 1)
    off = _median_run(offs)
    result["requests_per_s"] = off["requests_per_s"]
    result["handoff_p50_ms"] = off["handoff_p50_ms"]
    result["handoff_p99_ms"] = off["handoff_p99_ms"]
    result["handoff_at_saturation_p50_ms"] = off["handoff_at_saturation_p50_ms"]
    result["framework_cpu_ms_per_request"] = off["cpu_ms_per_request"]
    result["steady_rate_per_s"] = b.args.steady_rate
    result["tracing_off_requests_per_s"] = off["requests_per_s"]
    if not ons:
        return
    on = _median_run(ons)
    result["tracing_rounds"] = rounds
    result["tracing_off_runs_requests_per_s"] = [r["requests_per_s"] for r in offs]
    result["tracing_on_runs_requests_per_s"] = [r["requests_per_s"] for r in ons]
    result["tracing_on_requests_per_s"] = on["requests_per_s"]
    result["tracing_ratio"] = round(on["requests_per_s"] / off["requests_per_s"], 3)
    result["tracing_off_handoff_p50_ms"] = off["handoff_p50_ms"]
    result["tracing_off_handoff_p99_ms"] = off["handoff_p99_ms"]
    result["tracing_on_handoff_p50_ms"] = on["handoff_p50_ms"]
    result["tracing_on_handoff_p99_ms"] = on["handoff_p99_ms"]
    result["tracing_on_cpu_ms_per_request"] = on["cpu_ms_per_request"]
    console.print(
        f"  tracing on/off (medians of {rounds}): {result['tracing_ratio']} of the "
        f"throughput; {result['tracing_spans_per_request']} spans for one request in Jaeger"
    )


def real_pipeline(b: Bench) -> Pipeline:
    pipeline = Pipeline(
        b.broker.bootstrap,
        b.pg.url,
        b.home / "real",
        PipelinePorts.free(),
        video_job_seconds=0.0,
        extra_env={"VIVIDLY_MAX_IN_FLIGHT": "256", **b.broker_env},
    )
    pipeline.start_emulators()
    load_corpus_sync(b.pg.url, pipeline.gemini_url)
    pipeline.start_services()
    warm, _ = submit_many(b.tracker, b.publisher, 30)
    b.watch.wait(warm, 180, "warm-up")
    return pipeline


def real_path(b: Bench, pipeline: Pipeline) -> None:
    """Part 2: emulators, moto's S3, SMTP, thumbnails: requests/s and where the CPU goes."""
    args, result = b.args, b.result
    console.print("[bold]2. real path (emulators, moto S3, SMTP, ffmpeg thumbnails)[/]")
    pids = b.pids(pipeline)
    before = cpu_seconds(pids)
    ids, t0 = submit_many(b.tracker, b.publisher, args.real_requests)
    last = b.watch.wait(ids, 600, f"{args.real_requests} requests on the real path")
    after = cpu_seconds(pids)
    elapsed = last - t0
    result["real_requests_per_s"] = round(args.real_requests / elapsed, 1)
    used = {n: after[n] - before.get(n, 0) for n in after}
    total = sum(used.values()) or 1.0
    result["real_cpu_profile"] = {
        n: f"{100 * v / total:.0f}%"
        for n, v in sorted(used.items(), key=lambda kv: -kv[1])
        if v > 0
    }
    result["real_cpu_s_per_request_ms"] = round(1000 * total / args.real_requests, 1)
    console.print(
        f"  {result['real_requests_per_s']} req/s; CPU by process: {result['real_cpu_profile']}"
    )


def inflight(b: Bench, pipeline: Pipeline) -> None:
    """Part 3: thousands of requests waiting on slow video jobs at once."""
    args, result, watch = b.args, b.result, b.watch
    console.print(
        f"[bold]3. {args.inflight} requests in flight, {args.job_seconds:.0f} s per video job[/]"
    )
    pipeline.set_knobs("video", job_seconds=args.job_seconds)
    sampler = RssSampler({n: m.pid for n, m in pipeline.procs.items() if n in SERVICES})
    pids = b.pids(pipeline)
    before = cpu_seconds(pids)
    ids, t0 = submit_many(b.tracker, b.publisher, args.inflight, varied=False)
    last = watch.wait(ids, 300, f"{args.inflight} requests, {args.job_seconds:.0f}s jobs")
    rss = sampler.stop()
    used = {n: v - before.get(n, 0) for n, v in cpu_seconds(pids).items()}
    result["inflight_2000_s"] = round(last - t0, 1)
    with watch.lock:
        reached = [
            watch.started[(r, "video_generation")]
            for r in ids
            if (r, "video_generation") in watch.started
        ]
        finished_gen = [
            watch.completed[(r, "video_generation")]
            for r in ids
            if (r, "video_generation") in watch.completed
        ]
    result["inflight_all_jobs_submitted_s"] = round(max(reached) - t0, 1)
    result["inflight_all_jobs_done_s"] = round(max(finished_gen) - t0, 1)
    result["inflight_cpu_s_by_process"] = {
        n: round(v, 1) for n, v in sorted(used.items(), key=lambda kv: -kv[1]) if v > 0.05
    }
    result["max_rss_mb"] = max(rss.values())
    result["rss_mb_by_service"] = rss
    result["failed"] = len(watch.failed)
    console.print(f"  all done in {result['inflight_2000_s']} s; peak RSS {rss}")
    external_baseline(b, pipeline)


def external_baseline(b: Bench, pipeline: Pipeline) -> None:
    """Part 3's baseline, measured in the same run on the same stand-ins: the external
    calls that follow a finished job (poll, download, thumbnail, two S3 puts, one
    email) for as many requests, made alone by ``bench.external`` with the services
    stopped. ``inflight_floor_s`` is the job time plus that: what part 3 would take if
    every job were submitted at once and the pipeline itself cost nothing."""
    args, result = b.args, b.result
    console.print("[bold]3b. baseline: the same external calls alone (no Kafka, no tracking)[/]")
    for name in SERVICES:
        pipeline.stop_service(name)
    pipeline.set_knobs("video", job_seconds=0.0)
    pids = {n: m.pid for n, m in pipeline.procs.items()}
    before = cpu_seconds(pids)
    with console.status(f"{args.inflight} requests' external calls"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.external",
                "--video-url",
                pipeline.video_url,
                "--s3-url",
                pipeline.s3_url,
                "--smtp-port",
                str(pipeline.ports.smtp),
                "--requests",
                str(args.inflight),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    if out.returncode != 0:
        raise SystemExit(f"bench.external failed ({out.returncode}):\n{out.stderr[-3000:]}")
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    used = {n: v - before.get(n, 0) for n, v in cpu_seconds(pids).items()}
    used["client (services' clients)"] = measured["cpu_s"]
    n = measured["requests"]
    floor = args.job_seconds + measured["seconds"]
    result["inflight_external_calls_s"] = measured["seconds"]
    result["inflight_floor_s"] = round(floor, 1)
    result["inflight_vs_floor"] = round(result["inflight_2000_s"] / floor, 2)
    result["external_cpu_ms_per_request"] = {
        k: round(1000 * v / n, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v > 0
    }
    console.print(
        f"  external calls alone: {measured['seconds']} s ({measured['requests_per_s']} req/s); "
        f"floor {floor:.1f} s; the pipeline took {result['inflight_vs_floor']}x that"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    os.environ["VIVIDLY_PG_FAST"] = "1"
    broker: ApacheKafkaBroker
    broker = ApacheKafkaBroker(home / "kafka", heap="512m")
    pg = EmbeddedPostgres(home / "pgdata", free_port())
    result: dict[str, Any] = {"broker": "apache"}
    pipeline: Pipeline | None = None
    watch: Watch | None = None
    try:
        broker.start()
        pg.start()
        asyncio.run(migrate(pg.url))
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        ensure_topics(settings, {t: 6 for t in (*STAGE_TOPICS, TRACKING_TOPIC, DLQ_TOPIC)})
        publisher = KafkaPublisher(settings, "bench-submitter")
        watch = Watch(broker.bootstrap)
        b = Bench(
            args,
            home,
            broker,
            pg,
            RequestTracker(publisher, producer="bench"),
            publisher,
            watch,
            dict(args.set),
            result,
        )
        if 1 in args.parts:
            framework_with_and_without_tracing(b)
        if 2 in args.parts or 3 in args.parts:
            pipeline = real_pipeline(b)
            if 2 in args.parts:
                real_path(b, pipeline)
            if 3 in args.parts:
                inflight(b, pipeline)
        publisher.close(10)
    finally:
        if watch is not None:
            watch.stop()
        if pipeline is not None:
            pipeline.stop()
        pg.stop()
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)
    return result


def setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("VIVIDLY_"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected VIVIDLY_NAME=VALUE")
    return name, value


def parts(text: str) -> set[int]:
    try:
        chosen = {int(p) for p in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1,3") from None
    if not chosen <= {1, 2, 3}:
        raise argparse.ArgumentTypeError(f"{text!r}: the parts are 1, 2 and 3")
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--steady-requests", type=int, default=1000)
    p.add_argument("--steady-rate", type=float, default=100.0)
    p.add_argument("--real-requests", type=int, default=300)
    p.add_argument("--inflight", type=int, default=2000)
    p.add_argument("--job-seconds", type=float, default=20.0)
    p.add_argument("--parts", type=parts, default={1, 2, 3}, help="e.g. 1 or 2,3")
    p.add_argument(
        "--tracing-rounds",
        type=int,
        default=3,
        help="part 1's off/on pairs, alternated (the medians are reported)",
    )
    p.add_argument(
        "--no-tracing",
        action="store_true",
        help="part 1 without its second, traced run (no Jaeger needed)",
    )
    p.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="VIVIDLY_X=V",
        help="a setting for every service (repeatable)",
    )
    args = p.parse_args(argv)
    result = run(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
