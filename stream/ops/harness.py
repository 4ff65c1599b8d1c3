"""Harness shared by the benches, the demo and the tests: a worker in a subprocess, private
stacks, timed publishing, and a quick model when none is registered.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ml.serving.registry import current_version
from simulator.pacing import PublishStats, paced_chunks
from stream.core.errors import ModelError
from stream.core.settings import Settings
from stream.ops.stack import free_ports


class WorkerSubprocess:
    """``python -m stream.ops.runner`` in its own process (and process group), configured through
    ``BWP_*`` env vars from ``settings``. Used by ``bwp demo``, ``bwp bench pipeline`` and the tests."""

    #: The command after ``python``: a subclass runs another bwp process the same way.
    command: tuple[str, ...] = ("-m", "stream.ops.runner")

    def __init__(self, settings: Settings, log_path: Path, extra_args: Sequence[str] = ()) -> None:
        self.settings = settings
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The environment: ours, with every setting as its BWP_* variable."""
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
        for name in type(self.settings).model_fields:
            v = getattr(self.settings, name)
            key = f"BWP_{name.upper()}"
            if v is None:
                env.pop(key, None)
            else:
                env[key] = v.get_secret_value() if isinstance(v, SecretStr) else str(v)
        return env

    def start(self) -> WorkerSubprocess:
        """Start the worker; its output goes to ``log_path``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.command, *self.extra_args],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        """True while the worker process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the worker's process group: no shutdown code runs (what a crash does)."""
        if self.proc is not None and self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM to the process group (graceful: Faust commits what was acknowledged),
        SIGKILL after ``timeout_s``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the worker's log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class ServeSubprocess(WorkerSubprocess):
    """``bwp serve`` in its own process, configured like :class:`WorkerSubprocess` (``bwp bench serve``, tests)."""

    command = ("-m", "stream.cli", "serve")


def wait_until(pred: Any, timeout_s: float, step: float = 0.1) -> bool:
    """Poll ``pred()`` every ``step`` s until it is true or ``timeout_s`` passed; its last value."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def remove_or_keep(tmp: Path, ok: bool) -> None:
    """Remove a bench's private stack directory after a good run; after a failure keep it
    (stack and worker logs) and say where."""
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"[bench] the run failed; logs kept in {tmp}", file=sys.stderr, flush=True)


def private_stack_settings(settings: Settings, state_dir: Path, **extra: Any) -> Settings:
    """``settings`` for a private embedded stack in ``state_dir`` on free local ports (plus ``extra``)."""
    kafka_port, redis_port = free_ports(2)
    return settings.model_copy(update={
        "state_dir": state_dir, "kafka_bootstrap": f"127.0.0.1:{kafka_port}",
        "redis_url": f"redis://127.0.0.1:{redis_port}/0", "embedded": "always", **extra,
    })  # fmt: skip


class ProduceClock:
    """Wall-clock produce time (ms) of every paced chunk, to look up by (seq, link_id)."""

    def __init__(self, link_ids: list[str], first_seq: int, chunk: int) -> None:
        self.index = {lid: i for i, lid in enumerate(link_ids)}
        self.first_seq = first_seq
        self.chunk = chunk
        self.times: dict[tuple[int, int], int] = {}

    def record(self, seq: int, chunk_idx: int, ms: int) -> None:
        """Remember when chunk ``chunk_idx`` of step ``seq`` was produced (ms since the epoch)."""
        self.times[(seq, chunk_idx)] = ms

    def produced_ms(self, seq: int, link_id: str) -> int | None:
        """When the record of ``link_id`` at ``seq`` was produced (ms), or None."""
        i = self.index.get(link_id)
        return None if i is None else self.times.get((seq, i // self.chunk))


def publish_timed(
    sim: Any,
    pub: Any,
    rate: float | None,
    steps: int | None,
    clock: ProduceClock,
    stop_event: threading.Event | None = None,
    on_step: Any = None,
) -> tuple[int, float]:
    """Publish ``steps`` steps (None = until ``stop_event``) paced at ``rate`` states/s in
    ~10 ms chunks, recording each chunk's produce time. Returns (states, seconds)."""
    stats = PublishStats()
    # the clock's chunk size, so that its (step, chunk) index maps records as they were sent
    for chunk in paced_chunks(sim, steps, rate, stats, stop_event, on_step=on_step, chunk=clock.chunk):
        clock.record(chunk.step, chunk.index, time.time_ns() // 1_000_000)
        pub.publish_payloads(chunk.payloads)
    return stats.records, stats.seconds


def ensure_model(model_dir: Path, quiet: bool = False) -> str:
    """The current registered version in ``model_dir``; trains a quick one first if there is none."""
    version = current_version(model_dir)
    if version:
        return version
    print(
        f"no model is registered in {model_dir}: training a quick model first "
        f"(bwp train --quick --out {model_dir}, about a minute)...",
        file=sys.stderr,
        flush=True,
    )
    cmd = [sys.executable, "-m", "stream.cli", "train", "--quick", "--out", str(model_dir)]
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None).returncode
    version = current_version(model_dir)
    if rc != 0 or not version:
        raise ModelError(
            f"quick training failed (exit code {rc}); run `bwp train --quick --out {model_dir}` to see why"
        )
    return version
