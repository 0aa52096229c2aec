"""A stage-like service for the loop's process-level tests (SIGKILL, SIGTERM).

Consumes WorkItems from --input, "works" for --delay seconds each, publishes the item to
--output with its stage moved on, and appends a line to --journal when it starts and
when it finishes a message, so the test can tell what was in flight when it was killed.

    python -m tests.integration.loop_worker --bootstrap H:P --group G --input I \
        --output O --journal FILE [--delay 0.2] [--max-in-flight 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys

from vividly.config import Settings
from vividly.errors import PermanentError
from vividly.events import WorkItem
from vividly.logs import configure_logging
from vividly.publish import KafkaPublisher, Outgoing
from vividly.runtime.bus import ConsumerLoop, Delivery


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loop_worker")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--dlq", default="requests.dlq")
    p.add_argument("--journal", required=True)
    p.add_argument("--delay", type=float, default=0.2)
    p.add_argument("--max-in-flight", type=int, default=16)
    p.add_argument("--partitions", type=int, default=3)
    args = p.parse_args(argv)
    configure_logging("loop-worker", "INFO")
    settings = Settings(
        kafka_bootstrap=args.bootstrap,
        commit_interval_s=0.1,
        drain_timeout_s=30.0,
        topic_partitions=args.partitions,
    )
    publisher = KafkaPublisher(settings, "loop-worker")
    journal = open(args.journal, "a", buffering=1)  # noqa: SIM115 - lives as long as main

    async def handle(delivery: Delivery, item: WorkItem) -> list[Outgoing]:
        journal.write(f"start {item.request_id} {os.getpid()}\n")
        if item.request_id.startswith("poison"):
            raise PermanentError(f"cannot work on {item.request_id}")
        await asyncio.sleep(args.delay * random.uniform(0.5, 1.5))
        out = WorkItem()
        out.CopyFrom(item)
        out.stage = "rag_retrieval"
        journal.write(f"done {item.request_id} {os.getpid()}\n")
        return [Outgoing.of(args.output, item.request_id, out, item.correlation_id)]

    loop = ConsumerLoop(
        settings=settings,
        group_id=args.group,
        topics=[args.input],
        publisher=publisher,
        handlers={WorkItem: handle},
        name="loop-worker",
        dlq_topic=args.dlq,
        max_in_flight=args.max_in_flight,
        topic_partitions={
            args.input: args.partitions,
            args.output: args.partitions,
            args.dlq: args.partitions,
        },
    )
    asyncio.run(loop.run())
    report = publisher.close(10)
    journal.write(f"exit {os.getpid()} handled={loop.stats.handled} ok={report.ok}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
