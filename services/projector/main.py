"""projector: consumes tracking.events and folds it into the read model (``vividly_read``).

Wiring only: settings, logging, migrations, then the :class:`Projector` loop until SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys

from services.projector.logid import LogMismatch
from services.projector.runner import Projector
from vividly.config import Settings, topic_plan
from vividly.logs import configure_logging
from vividly.metrics import serve_metrics
from vividly.runtime.db import migrate


async def serve(settings: Settings) -> None:
    from vividly.runtime.bus import ensure_topics

    url = settings.effective_database_url()
    await migrate(url)
    await asyncio.to_thread(ensure_topics, settings, topic_plan(settings))
    serve_metrics(settings.metrics_host, settings.metrics_port)
    await Projector(
        settings, url, group_id=settings.projector_group, batch_max=settings.projector_batch_max
    ).run()


def main() -> None:
    settings = Settings(producer_name="projector")
    configure_logging("projector", settings.log_level)
    try:
        asyncio.run(serve(settings))
    except LogMismatch as exc:
        # Logged in full already; refusing is the point: nothing is folded onto the
        # wrong positions. `vividly projector rebuild` (or
        # VIVIDLY_PROJECTOR_ON_LOG_MISMATCH=rebuild) mends it.
        print(f"projector refused to fold: {exc}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
