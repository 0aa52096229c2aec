"""moto's S3, served on its own: ``python -m emulators.s3 --port 8703``.

``python -m moto.server`` serves every AWS service moto knows on werkzeug's development
server and, for each request, works out which service is meant (listing moto's modules
on disk every time). The stack's only AWS client is boto3's S3 client, so this serves
moto's S3 application alone, on Granian (a compiled HTTP server). Same S3 behaviour;
measured with boto3 putting 26 kB objects, CPU per PutObject:

    python -m moto.server                      2.3 ms server   1.3 ms boto3
    moto's S3 app on werkzeug                  1.6 ms          1.3 ms
    moto's S3 app on Granian (this)            0.8 ms          0.8 ms

(the client gains too: werkzeug answers in pieces that boto3 reads with extra waits).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
from typing import Any

PR_SET_PDEATHSIG = 1


def make_app() -> Any:
    """The WSGI application: moto's S3 backend (Granian calls this in its worker)."""
    from moto.moto_server.werkzeug_app import create_backend_app

    _die_with_parent()
    return create_backend_app("s3")


def _die_with_parent() -> None:
    """Granian serves from a worker process: if the server process is killed outright
    (SIGKILL, so it cannot stop its worker), the worker gets SIGTERM rather than being
    left holding the port (Linux; elsewhere nothing happens)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m emulators.s3", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8703)
    # moto's S3 is Python under one lock, but a request also waits on Granian's hand-off
    # to the Python thread: with one thread those waits are not overlapped. Four threads
    # cost about the same CPU a PutObject and get more through: 2,000 pairs of puts
    # from 6 boto3 threads, 298-311 pairs/s with 1 thread, 350-358 with 4; part 3 of
    # bench.pipeline, run alternately: 43.7 and 38.9 s with 1, 38.2 and 35.6 s with 4.
    p.add_argument("--threads", type=int, default=4, help="Threads running requests.")
    args = p.parse_args(argv)

    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "emulators.s3:make_app",
        address=args.host,
        port=args.port,
        interface=Interfaces.WSGI,
        workers=1,
        blocking_threads=args.threads,
        factory=True,
        log_access=False,
        # One JSON object a line, like every other process of the stack.
        log_dictconfig={
            "formatters": {"json": {"()": "vividly.logs.JsonFormatter", "service": "s3-emulator"}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
            "loggers": {"_granian": {"handlers": ["console"], "propagate": False}},
        },
    ).serve()


if __name__ == "__main__":
    main()
