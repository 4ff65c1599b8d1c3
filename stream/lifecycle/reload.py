"""Model hot reload: follow the registry's ``current`` pointer without stopping the worker.

Every ``poll_s`` (1 s) the worker reads ``<model_dir>/current`` (one small file read).
When it names a version other than the one being served, that version is loaded in a
dedicated thread (``bwp-reload``; neither the predict thread nor the event loop):
``ml.serving.predictor.load_predictor`` verifies the checksums and shapes and compiles/warms up the
forward passes, then one smoke prediction on a plausible window must give finite values
and valid actions. Only then is it handed to ``PipelineCore.set_predictor`` (on the event
loop), which takes effect at the next micro-batch: a batch never mixes versions and no
state is skipped or decided twice by a swap.

A version that fails (``ModelError`` - bad checksum, wrong shapes, missing file - or any
other exception) is refused: the old model keeps serving, the reason is logged and
``bwp_model_reloads_total{result="failed"}`` counts it. The same version is retried only
when the pointer moves away and back, or after ``retry_after_s`` (10 min). A worker
started with ``--model-version`` is pinned and runs no watcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prometheus_client import Counter

from ml.serving.predictor import load_predictor
from stream.core.records import FEATURES, N_ACTIONS, WINDOW
from stream.metrics.worker import WorkerMetrics
from stream.pipeline.heap import HeapGuard

log = logging.getLogger("bwp.reload")

POLL_S = 1.0
#: Seconds between a model swap and the full collection that frees the old model.
REFREEZE_DELAY_S = 2.0
RETRY_AFTER_S = 600.0


class ReloadMetrics(Protocol):
    """The one metric a :class:`ModelWatcher` counts into (the worker's and the API's containers have it)."""

    @property
    def model_reloads(self) -> Counter:
        """Reloads by ``result`` (ok | failed)."""
        ...


def read_pointer(model_dir: Path) -> str | None:
    """The version ``<model_dir>/current`` names, or None (no file, empty, unreadable)."""
    try:
        name = (model_dir / "current").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return name or None


def smoke_check(predictor: Any) -> None:
    """One prediction on a plausible window; raises ValueError unless outputs are finite and valid."""
    row = {"latency_ms": 20.0, "bandwidth_mbps": 100.0, "packet_loss": 0.001, "reliability": 0.99}
    x = np.tile(np.array([row[f] for f in FEATURES], dtype=np.float64), (1, WINDOW, 1))  # (1, WINDOW, 4)
    pred = predictor.predict(x)
    for name in ("bandwidth_mbps", "reference_bandwidth_mbps"):
        v = np.asarray(getattr(pred, name), dtype=np.float64)
        if v.shape != (1,) or not np.all(np.isfinite(v)):
            raise ValueError(f"smoke prediction: {name} is {v!r}, expected one finite value")
    act = np.asarray(pred.action)
    if act.shape != (1,) or not (0 <= int(act[0]) < N_ACTIONS):
        raise ValueError(f"smoke prediction: action is {act!r}, expected one value in 0..{N_ACTIONS - 1}")


def _default_loader(model_dir: Path, version: str) -> Any:

    return load_predictor(model_dir, version)


class ModelWatcher:
    """Polls the registry pointer and swaps verified versions into a ``PipelineCore``.

    ``apply(predictor)`` is called on the event loop with each verified new version
    (``core.set_predictor``). ``loader(model_dir, version)`` loads and verifies (default
    ``ml.serving.predictor.load_predictor``). With ``pinned`` it loads that version once (retried
    after a refusal like any other) and never follows the pointer.
    """

    def __init__(
        self,
        model_dir: Path | str,
        serving: str,
        apply: Callable[[Any], None],
        metrics: ReloadMetrics,
        loader: Callable[[Path, str], Any] | None = None,
        retry_after_s: float = RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        pinned: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.pinned = pinned  # serve this version only, whatever ``current`` names
        self.serving = serving
        self.apply = apply
        self.metrics = metrics
        self.loader = loader or _default_loader
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bwp-reload")
        self.failed: tuple[str, float] | None = None  # (version, when) of the last refused version
        self.loading: str | None = None
        self.attempts = 0
        # both series exist from the start, so dashboards and alerts see 0, not "no data"
        metrics.model_reloads.labels("ok")
        metrics.model_reloads.labels("failed")

    def wanted(self) -> str | None:
        """The version to load now, or None (nothing new, a load in flight, or a refused one backing off)."""
        target = self.pinned or read_pointer(self.model_dir)
        if self.failed is not None and target != self.failed[0]:
            self.failed = None  # the pointer moved: a later return to that version is a new attempt
        if target is None or target == self.serving or self.loading is not None:
            return None
        if self.failed is not None and self.clock() - self.failed[1] < self.retry_after_s:
            return None
        return target

    def _load(self, version: str) -> Any:
        p = self.loader(self.model_dir, version)
        if getattr(p, "version", None) != version:
            raise ValueError(f"loaded model reports version {getattr(p, 'version', None)!r}, expected {version!r}")
        smoke_check(p)
        return p

    async def tick(self) -> str | None:
        """One poll: load a new version off the loop and swap it in. Returns the version now
        served when it changed, else None. Never raises (failures are logged and counted)."""
        version = self.wanted()
        if version is None:
            return None
        self.loading = version
        self.attempts += 1
        started = time.monotonic()
        try:
            predictor = await asyncio.get_running_loop().run_in_executor(self.executor, self._load, version)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed = (version, self.clock())
            self.metrics.model_reloads.labels("failed").inc()
            log.error(
                "model reload: refused version %s, still serving %s: %s: %s (retried when the pointer changes "
                "again or after %.0f s)", version, self.serving, type(exc).__name__, exc, self.retry_after_s,
            )  # fmt: skip
            return None
        finally:
            self.loading = None
        if self.pinned is None and read_pointer(self.model_dir) != version:
            # promoted and superseded (or rolled back) while loading: the next poll follows the pointer
            log.warning("model reload: %s was loaded but is no longer current; not swapped", version)
            return None
        old, self.serving = self.serving, version
        self.failed = None
        self.apply(predictor)  # takes effect at the next micro-batch
        self.metrics.model_reloads.labels("ok").inc()
        log.warning("model reload: now serving %s (was %s; loaded and verified in %.1f s)", version, old,
                    time.monotonic() - started)  # fmt: skip
        return version

    def close(self) -> None:
        """Stop the loader thread (a load in progress is abandoned)."""
        self.executor.shutdown(wait=False, cancel_futures=True)


def attach_reloader(
    app: Any,
    core: Any,
    settings: Any,
    metrics: WorkerMetrics,
    poll_s: float = POLL_S,
    heap: HeapGuard | None = None,
    on_swap: Sequence[Callable[[Any], None]] = (),
) -> ModelWatcher:
    """Run a :class:`ModelWatcher` on ``settings.model_dir`` as a task of the Faust ``app``, swapping into ``core``.

    A plain task rather than ``app.timer``: a load takes seconds, and a timer would log
    "overlapping" warnings; here the next poll simply starts ``poll_s`` after the load.
    With ``heap`` (a :class:`stream.pipeline.heap.HeapGuard`), each swap is followed,
    :data:`REFREEZE_DELAY_S` later, by ``heap.refreeze()``, so a frozen old model is collected.
    Each ``on_swap(predictor)`` runs on the event loop just before a verified model is swapped
    in (e.g. ``LiveScorer.register``: the live scorer learns the new model's metadata before
    its first decision); one that raises is logged and never stops the swap.
    """

    def apply(predictor: Any) -> None:
        for f in on_swap:
            try:
                f(predictor)
            except Exception:
                log.exception("model reload: an on_swap callback failed for %s (the swap goes on)", predictor.version)
        core.set_predictor(predictor)

    watcher = ModelWatcher(settings.model_dir, core.predictor.version, apply, metrics)

    @app.task
    async def _poll_model() -> None:
        try:
            while not app.should_stop:
                await asyncio.sleep(poll_s)
                if await watcher.tick() and heap is not None:
                    # Chunks in flight hold the old model for a few more milliseconds.
                    await asyncio.sleep(REFREEZE_DELAY_S)
                    heap.refreeze()
        finally:
            watcher.close()

    return watcher
