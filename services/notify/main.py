"""notify: consumes requests.rendered; emails the student (content ready, or the error);
records the request as completed."""

from __future__ import annotations

from services.notify.handlers import Notifier, NotifyHandler, completer
from services.notify.providers import Mailer, NullMailer, SmtpMailer
from vividly.breakers import smtp_breaker
from vividly.config import RENDERED
from vividly.runtime.ledger import NotificationLedger, PgLedger
from vividly.runtime.service import Built, Deps, run
from vividly.runtime.stage import Stage, StageRunner


async def build(deps: Deps) -> Built:
    s = deps.settings
    mailer: Mailer
    if s.providers == "null":
        mailer = NullMailer()
    else:
        smtp = SmtpMailer(s)
        deps.closers.append(smtp.close)
        mailer = smtp
    notifier = Notifier(
        mailer,
        NotificationLedger(deps.pool, lease_s=s.email_claim_lease_s),
        s.smtp_from,
        breaker=smtp_breaker,
    )
    runner = StageRunner(
        tracker=deps.tracker,
        stages=[Stage("notification", notifier.content_ready, breakers=(notifier.breaker,))],
        settings=s,
        input_topic=RENDERED,
        next_topic=None,
        ledger=PgLedger(deps.pool),
        on_done=completer(deps.tracker),
    )
    handler = NotifyHandler(runner, notifier, deps.tracker, s.smtp_from)
    return Built(handler=handler, gates=[runner.accepting])


def main() -> None:
    run("notify", input_topic=RENDERED, produces=[], build=build)


if __name__ == "__main__":
    main()
