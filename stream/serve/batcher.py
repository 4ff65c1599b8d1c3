"""Dynamic batching: concurrent predict requests share one compiled forward pass.

As Triton's dynamic batcher does: the first queued request opens a batch, which takes
whatever else is queued and waits at most ``delay_s`` for more, up to ``max_batch``
windows (it waits only when the previous batch merged requests or more are queued, so
a lone client never pays the delay); the batch then runs in one thread (never on the event loop) and every request
gets its own rows back. While a pass runs, new requests queue, so under load batches
form without any delay. With batching off every request is its own pass.

A model swap (hot reload) takes effect at the next batch: a batch never mixes versions
and each answer names the version that computed it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.compression import CompressionProfile
from stream.core.errors import ApiError
from stream.core.records import Telemetry
from stream.metrics.serve import ServeMetrics
from stream.pipeline.model import COMPRESSION_HORIZON, PredictorLike, build_decisions, check_prediction

#: Decision fields that identify a telemetry record; an API answer has no record, so none of them.
IDENTITY_FIELDS = ("link_id", "seq", "ts_ms", "decided_at_ms", "profile")
API_LINK = "api"


@dataclass(frozen=True)
class DecisionConfig:
    """How predictions become decisions: the worker's settings (schema version, compression hint)."""

    schema_version: int
    compression_profile: CompressionProfile | None = None
    compression_horizon: int = COMPRESSION_HORIZON


def decide(
    predictor: PredictorLike, x: np.ndarray, profiles: Sequence[str | None], config: DecisionConfig
) -> list[dict[str, Any]]:
    """The worker's decision for each window of ``x`` (N, WINDOW, 4), as decision-record dicts
    without the record identity fields (:data:`IDENTITY_FIELDS`). Runs the model: call it off the loop."""
    pred = predictor.predict(x, list(profiles))
    check_prediction(pred, x.shape[0], predictor.version)
    now = int(time.time() * 1000)
    # The decision code takes telemetry records; the last state of each window stands in.
    last = x[:, -1, :].tolist()  # (N, 4)
    records = [Telemetry(API_LINK, 0, now, lat, bw, loss, rel, p) for (lat, bw, loss, rel), p in zip(last, profiles)]
    out = []
    decisions = build_decisions(
        records, pred, predictor.version, now, config.schema_version,
        compression_profile=config.compression_profile, compression_horizon=config.compression_horizon,
    )  # fmt: skip
    for d in decisions:
        obj = d.to_dict()
        for k in IDENTITY_FIELDS:
            obj.pop(k, None)
        out.append(obj)
    return out


@dataclass
class _Job:
    x: np.ndarray  # (n, WINDOW, 4)
    profiles: list[str | None]
    future: asyncio.Future[tuple[str, list[dict[str, Any]]]] = field(repr=False)


class Batcher:
    """Queue of predict requests and the loop that runs them in (dynamic) batches."""

    def __init__(
        self,
        metrics: ServeMetrics,
        config: DecisionConfig,
        *,
        batching: bool = True,
        delay_s: float = 0.001,
        max_batch: int = 1024,
    ) -> None:
        self.metrics = metrics
        self.config = config
        self.batching = batching
        self.delay_s = delay_s
        self.max_batch = max_batch
        self.predictor: PredictorLike | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bwp-serve-predict")
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._last_jobs = 0  # requests in the previous batch

    def set_predictor(self, predictor: PredictorLike) -> None:
        """Serve ``predictor`` from the next batch on (the watcher calls this on the event loop)."""
        self.predictor = predictor
        self.metrics.set_model(predictor.version)

    def start(self) -> None:
        """Start the batch loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="bwp-serve-batcher")

    async def close(self) -> None:
        """Stop the loop; queued requests fail with ``not_ready``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(ApiError(503, "not_ready", "the server is shutting down"))
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def predict(self, x: np.ndarray, profiles: list[str | None] | None) -> tuple[str, list[dict[str, Any]]]:
        """``(model_version, predictions)`` for the windows of ``x``, one prediction per window."""
        if self.predictor is None:
            raise ApiError(503, "not_ready", "no model is loaded yet (see GET /v2/health/ready)")
        future: asyncio.Future[tuple[str, list[dict[str, Any]]]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(x, profiles or [None] * x.shape[0], future))
        return await future

    async def _collect(self) -> list[_Job]:
        """The next batch: the first queued job, then whatever fits that is queued or comes within the delay."""
        jobs = [await self._queue.get()]
        if not self.batching:
            return jobs
        n = jobs[0].x.shape[0]
        # Wait for company only when requests have been coming together: after a batch of one
        # with nothing queued, a lone client would pay the delay on every request for nothing.
        delay = self.delay_s if self._last_jobs > 1 or not self._queue.empty() else 0.0
        deadline = time.monotonic() + delay
        while n < self.max_batch:
            if self._queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            if n + job.x.shape[0] > self.max_batch:
                self._queue.put_nowait(job)  # too big for this pass: it opens the next one
                # (it goes to the back; with max_batch >= serve_max_windows it waits one pass at most)
                break
            jobs.append(job)
            n += job.x.shape[0]
        self._last_jobs = len(jobs)
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            predictor = self.predictor
            assert predictor is not None  # jobs are queued only once a model is loaded
            x = jobs[0].x if len(jobs) == 1 else np.concatenate([j.x for j in jobs])  # (sum n, WINDOW, 4)
            profiles = [p for j in jobs for p in j.profiles]
            self.metrics.batch_windows.observe(x.shape[0])
            self.metrics.batch_requests.observe(len(jobs))
            try:
                rows = await loop.run_in_executor(self.executor, decide, predictor, x, profiles, self.config)
            except asyncio.CancelledError:
                for j in jobs:
                    j.future.cancel()
                raise
            except Exception as exc:
                err = ApiError(503, "predict_failed", f"model {predictor.version} failed: {type(exc).__name__}: {exc}")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(err)
                continue
            start = 0
            for j in jobs:
                n = j.x.shape[0]
                if not j.future.done():  # a client that went away cancelled its future
                    j.future.set_result((predictor.version, rows[start : start + n]))
                start += n
