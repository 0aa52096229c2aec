"""What every stage service's ``main.py`` shares: build clients, run the loop, clean up.

A service supplies a ``build`` coroutine that receives the shared :class:`Deps` (settings,
tracker, publisher, Postgres pool) and returns its handler (usually a
:class:`~vividly.runtime.stage.StageRunner`) plus anything to close on the way out.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvloop

from vividly.breakers import configure_breakers, install_breaker_metrics, publish_breaker_events
from vividly.config import DLQ_TOPIC, RENDERED, Settings
from vividly.events import WorkItem
from vividly.logs import configure_logging
from vividly.metrics import serve_metrics
from vividly.publish import KafkaPublisher
from vividly.runtime import telemetry
from vividly.runtime.bus import ConsumerLoop, Handler
from vividly.runtime.ledger import create_pool
from vividly.tracker import RequestTracker

log = logging.getLogger("vividly.runtime.service")


@dataclass
class Deps:
    settings: Settings
    tracker: RequestTracker
    publisher: KafkaPublisher
    pool: Any
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass
class Built:
    handler: Handler
    gates: Sequence[Callable[[], bool]] = ()


Build = Callable[[Deps], Awaitable[Built]]


async def serve(
    name: str,
    settings: Settings,
    *,
    input_topic: str,
    produces: Sequence[str],
    build: Build,
    max_in_flight: int | None = None,
) -> None:
    """Run one stage service until SIGTERM/SIGINT, then drain, flush and close."""
    publisher = KafkaPublisher(settings, name)
    tracker = RequestTracker.from_settings(settings, publisher)
    configure_breakers(settings.breaker_fail_max, settings.breaker_reset_timeout_s)
    publish_breaker_events(tracker)
    install_breaker_metrics()
    serve_metrics(settings.metrics_host, settings.metrics_port)
    pool = await create_pool(settings.effective_database_url(), size=8)
    deps = Deps(settings, tracker, publisher, pool)
    try:
        built = await build(deps)
        loop = ConsumerLoop(
            settings=settings,
            group_id=name,
            topics=[input_topic],
            publisher=publisher,
            handlers={WorkItem: built.handler},
            produces=[*produces, input_topic, RENDERED, DLQ_TOPIC],
            gates=built.gates,
            name=name,
            max_in_flight=max_in_flight,
        )
        await loop.run()
    finally:
        for close in reversed(deps.closers):
            try:
                await close()
            except Exception:
                log.exception("closing a client failed")
        await pool.close()
        report = await asyncio.to_thread(publisher.close, 30.0)
        if not report.ok:
            log.error(
                "events not delivered at shutdown",
                extra={"failed": report.failed, "pending": report.pending},
            )
        await asyncio.to_thread(telemetry.shutdown)


def run(
    name: str,
    *,
    input_topic: str,
    produces: Sequence[str],
    build: Build,
    max_in_flight: int | None = None,
) -> None:
    """Entry point for ``python -m services.<name>.main``."""
    settings = Settings(producer_name=name)
    configure_logging(name, settings.log_level)
    telemetry.configure(name)  # spans exported only when OTEL_* asks (off: no cost)
    # Long-lived objects (modules, clients) out of the collector's way, and fewer
    # young-generation passes: a service allocates per message and keeps little.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # uvloop: the same asyncio API with a libuv loop; less CPU per message for the
    # consumer loop's thread hand-offs, aiohttp and asyncpg.
    uvloop.run(
        serve(
            name,
            settings,
            input_topic=input_topic,
            produces=produces,
            build=build,
            max_in_flight=max_in_flight,
        )
    )
