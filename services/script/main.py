"""script: consumes requests.retrieved, writes the script with Gemini, produces
requests.scripted."""

from __future__ import annotations

from services.script.handlers import ScriptGeneration
from services.script.providers import GeminiScriptWriter, LocalScriptWriter, ScriptWriter
from vividly.breakers import gemini_breaker
from vividly.config import RETRIEVED, SCRIPTED
from vividly.runtime.ledger import PgLedger
from vividly.runtime.service import Built, Deps, run
from vividly.runtime.stage import Stage, StageRunner


async def build(deps: Deps) -> Built:
    writer: ScriptWriter = (
        LocalScriptWriter()
        if deps.settings.providers == "null"
        else GeminiScriptWriter(deps.settings)
    )
    # The composition root pairs the breaker with the stage: the handler calls through it,
    # the Stage pauses input while it is open.
    work = ScriptGeneration(writer, breaker=gemini_breaker)
    runner = StageRunner(
        tracker=deps.tracker,
        stages=[Stage("script_generation", work, breakers=(work.breaker,))],
        settings=deps.settings,
        input_topic=RETRIEVED,
        next_topic=SCRIPTED,
        ledger=PgLedger(deps.pool),
    )
    return Built(handler=runner, gates=[runner.accepting])


def main() -> None:
    run("script", input_topic=RETRIEVED, produces=[SCRIPTED], build=build)


if __name__ == "__main__":
    main()
