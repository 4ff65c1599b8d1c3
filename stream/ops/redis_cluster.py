"""A local Redis Cluster on loopback, for ``bwp bench redis --cluster N`` and the tests.

N ``valkey-server`` / ``redis-server`` processes (the embedded stack's binary) with
``--cluster-enabled yes``. Slots 0..16383 are split in N ranges with ``CLUSTER
ADDSLOTSRANGE``, the nodes are joined with ``CLUSTER MEET``, and :meth:`start` returns
once every node reports ``cluster_state:ok`` and knows all the others. No replicas: it
exercises routing (slots, redirections, per-node script caches), not failover. Not for
production: a deployment runs its own cluster.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from stream.core.errors import StackError
from stream.ops.stack import HOST, free_ports, redis_binary

SLOTS = 16384


class LocalRedisCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (also on a failed start).

    ``cluster=False``: one plain server, the same binary and flags otherwise (a baseline).
    """

    def __init__(self, workdir: Path, nodes: int = 3, cluster: bool = True) -> None:
        if nodes < 1 or (not cluster and nodes != 1):
            raise ValueError(f"expected 1 plain node or at least 1 cluster node, got {nodes} (cluster={cluster})")
        self.cluster = cluster
        self.workdir = workdir
        ports = free_ports(2 * nodes)  # distinct: a bus port equal to another node's port fails its start
        self.ports, self.bus_ports = ports[:nodes], ports[nodes:]  # explicit bus ports: the default is port + 10000
        self.procs: list[subprocess.Popen] = []
        self._clients: dict[int, redis.Redis] = {}

    @property
    def url(self) -> str:
        """Any one node; the cluster client discovers the others."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    def client(self, port: int) -> redis.Redis:
        """The plain client of one node (one per node, closed by :meth:`stop`)."""
        if port not in self._clients:
            self._clients[port] = redis.Redis(host=HOST, port=port, socket_timeout=5)
        return self._clients[port]

    def start(self, timeout_s: float = 30.0) -> LocalRedisCluster:
        """Start the nodes, assign the slots, join them; :class:`StackError` with the logs
        when the cluster is not ready within ``timeout_s``."""
        binary = redis_binary()
        try:
            for port, bus in zip(self.ports, self.bus_ports):
                d = self.workdir / f"node-{port}"
                d.mkdir(parents=True, exist_ok=True)
                log = open(d / "server.log", "ab")  # noqa: SIM115 - the server writes to it while it runs; closed on stop
                cmd = [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(d)]
                if self.cluster:
                    cmd += ["--cluster-enabled", "yes", "--cluster-port", str(bus),
                            "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", "2000"]  # fmt: skip
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
                log.close()
            deadline = time.monotonic() + timeout_s
            for port in self.ports:
                self._until(deadline, lambda p=port: self.client(p).ping(), f"node {port} answers PING")
            if not self.cluster:
                return self
            n = len(self.ports)
            bounds = [SLOTS * i // n for i in range(n + 1)]
            for i, port in enumerate(self.ports):
                self.client(port).execute_command("CLUSTER ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            first = self.client(self.ports[0])
            for port, bus in zip(self.ports[1:], self.bus_ports[1:]):
                first.execute_command("CLUSTER MEET", HOST, port, bus)
            for port in self.ports:
                self._until(deadline, lambda p=port: self._ready(p), f"node {port} reports cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self, port: int) -> bool:
        info = self.client(port).cluster("INFO")  # parsed: {"cluster_state": "ok", ...}
        return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == len(self.ports)

    def _until(self, deadline: float, check, what: str) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except redis.RedisError as exc:
                last = exc
            time.sleep(0.1)
        logs = "\n".join(
            (self.workdir / f"node-{p}" / "server.log").read_text(errors="replace")[-800:] for p in self.ports
        )
        raise StackError(f"Redis Cluster not ready: expected {what}; last error {last}\n{logs}")

    def keys_per_node(self) -> dict[int, int]:
        """DBSIZE of every node (how the keys spread)."""
        return {p: int(self.client(p).dbsize()) for p in self.ports}

    def flushall(self) -> None:
        """Empty every node."""
        for p in self.ports:
            self.client(p).flushall()

    def stop(self) -> None:
        """Terminate every node (kill after 10 s); idempotent."""
        for c in self._clients.values():
            c.close()
        self._clients.clear()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()
