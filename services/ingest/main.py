"""ingest: consumes requests.submitted, validates, produces requests.validated."""

from __future__ import annotations

from services.ingest.handlers import SubmissionGate, validation_work
from vividly.config import SUBMITTED, VALIDATED
from vividly.runtime.ledger import IngestLedger, PgLedger
from vividly.runtime.service import Built, Deps, run
from vividly.runtime.stage import Stage, StageRunner


async def build(deps: Deps) -> Built:
    runner = StageRunner(
        tracker=deps.tracker,
        stages=[Stage("validation", validation_work, max_attempts=1)],
        settings=deps.settings,
        input_topic=SUBMITTED,
        next_topic=VALIDATED,
        ledger=PgLedger(deps.pool),
    )
    gate = SubmissionGate(runner, deps.tracker, IngestLedger(deps.pool).first_source)
    return Built(handler=gate)


def main() -> None:
    run("ingest", input_topic=SUBMITTED, produces=[VALIDATED], build=build)


if __name__ == "__main__":
    main()
