"""The runtime: what runs a stage service. The one consumer loop, the stage runner, the
ledgers, the service wiring and the API's auth. It imports the SDK core only, never the
platform or ``services/`` (``pip install 'vividly[runtime]'``).

Its public surface is below; names load on first use (``vividly.runtime.auth`` alone does
not load the Kafka client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vividly.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ConsumerLoop": "vividly.runtime.bus",
    "Delivery": "vividly.runtime.bus",
    "Handler": "vividly.runtime.bus",
    "LoopStats": "vividly.runtime.bus",
    "ensure_topics": "vividly.runtime.bus",
    "Cancelled": "vividly.runtime.stage",
    "Stage": "vividly.runtime.stage",
    "StageContext": "vividly.runtime.stage",
    "StageRunner": "vividly.runtime.stage",
    "MemoryLedger": "vividly.runtime.stage",
    "Ledger": "vividly.runtime.stage",
    "Recorded": "vividly.runtime.stage",
    "UnpairedBreaker": "vividly.runtime.stage",
    "PgLedger": "vividly.runtime.ledger",
    "Built": "vividly.runtime.service",
    "Deps": "vividly.runtime.service",
    "run": "vividly.runtime.service",
    "configure_tracing": "vividly.runtime.telemetry",
    "shutdown_tracing": "vividly.runtime.telemetry",
}

__all__ = [
    "Built",
    "Cancelled",
    "ConsumerLoop",
    "Delivery",
    "Deps",
    "Handler",
    "Ledger",
    "LoopStats",
    "MemoryLedger",
    "PgLedger",
    "Recorded",
    "Stage",
    "StageContext",
    "StageRunner",
    "UnpairedBreaker",
    "configure_tracing",
    "ensure_topics",
    "run",
    "shutdown_tracing",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from vividly.runtime.bus import ConsumerLoop, Delivery, Handler, LoopStats, ensure_topics
    from vividly.runtime.ledger import PgLedger
    from vividly.runtime.service import Built, Deps, run
    from vividly.runtime.stage import (
        Cancelled,
        Ledger,
        MemoryLedger,
        Recorded,
        Stage,
        StageContext,
        StageRunner,
        UnpairedBreaker,
    )
    from vividly.runtime.telemetry import configure_tracing, shutdown_tracing
