"""Serving-side inference: window in Mbit/s -> forecast, allocation action, reference bandwidth.

This is the only ml module that serving code imports. It depends on the registry,
the feature transform and the policy observation only (never on training code).
Forward passes are compiled ``tf.function``s with ``training=False``, traced once
per batch bucket at load time, so steady-state calls never retrace. Buckets of
``XLA_MIN`` windows and more (the worker's batches under load) run XLA-compiled
(``jit_compile=True``): `bwp bench model` and the pipeline bench measured the LSTM
forward pass at about 21 us/window in chunks of 1024 against 35 us without XLA, with
outputs equal to float32 rounding (a test checks). ``BWP_TF_XLA=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.errors import ModelError
from stream.records import FEATURES, N_ACTIONS, WINDOW

log = logging.getLogger(__name__)

#: Batches are padded up to one of these sizes (at most 2x padding; the coarser set
#: 1/8/64/256/1024/4096 measured 17 ms vs 10 ms p50 at batch 100); larger ones go in 4096 chunks.
BUCKETS: tuple[int, ...] = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

#: Smallest bucket run XLA-compiled. XLA also wins on small batches, but every bucket
#: costs about a second of compilation at load; the small ones serve single links at
#: low rates, where the plain graph is fast enough.
XLA_MIN = 256
#: Largest chunk an XLA call gets (larger batches go in chunks): 1024 was the fastest
#: per window here (21 us vs 25 at 2048 and 28 at 4096).
XLA_CHUNK = 1024

_tf_configured = False


def xla_enabled() -> bool:
    """``BWP_TF_XLA`` (default 1): run the large buckets XLA-compiled."""
    return os.environ.get("BWP_TF_XLA", "1").strip().lower() not in ("0", "false", "no", "off")


def configure_tf(threads: int | None = None) -> None:
    """Quiet TensorFlow and cap its thread pools (call before the first TF op).

    ``threads`` defaults to ``BWP_TF_THREADS`` or the CPU count, capped at 2 (the
    target machines have 2 cores, shared with Kafka/Redis).
    """
    global _tf_configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if _tf_configured:
        return
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    n = threads or int(os.environ.get("BWP_TF_THREADS", "0")) or min(2, os.cpu_count() or 1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1 if n <= 2 else 2)
    except RuntimeError:
        pass  # TF already initialised in this process (e.g. by training): keep its pools
    _tf_configured = True


@dataclass
class Prediction:
    """One row per input window."""

    bandwidth_mbps: np.ndarray  # (N,) forecast of the next step, >= 0
    action: np.ndarray  # (N,) int64 in 0..9, allocation (action + 1) * 10 %
    reference_bandwidth_mbps: np.ndarray  # (N,) what 100 % allocation means


def _bucket(n: int) -> int:
    for b in BUCKETS:
        if n <= b:
            return b
    return BUCKETS[-1]


class Predictor:
    """A loaded, verified model version with compiled forward passes.

    Thread-safe for concurrent callers (a lock serialises calls; TF itself uses the
    configured intra-op threads).
    """

    def __init__(self, loaded: Any, xla: bool | None = None) -> None:
        import tensorflow as tf

        from ml.policy_features import OBS_DIM

        self.version: str = loaded.version
        self.metadata: dict[str, Any] = loaded.metadata
        self.preprocessor = loaded.preprocessor
        self._lstm = loaded.lstm
        self._qnet = loaded.qnet
        self._lock = threading.Lock()
        self._obs_dim = OBS_DIM
        lstm, qnet = self._lstm, self._qnet

        def forecast(x):
            return tf.reshape(lstm(x, training=False), [-1])

        def policy(obs):
            return tf.argmax(qnet(obs, training=False), axis=1, output_type=tf.int32)

        # One concrete function per bucket: shapes are static, so nothing retraces later.
        self._forecast_fn = tf.function(forecast, reduce_retracing=False)
        self._policy_fn = tf.function(policy, reduce_retracing=False)
        self.xla = xla_enabled() if xla is None else xla
        if self.xla:
            self._forecast_xla = tf.function(forecast, reduce_retracing=False, jit_compile=True)
            self._policy_xla = tf.function(policy, reduce_retracing=False, jit_compile=True)
            try:
                self._warm_up()
            except Exception as exc:  # noqa: BLE001 - a TF build without a working XLA CPU JIT
                log.warning("model %s: XLA compilation failed (%r); serving without XLA", self.version, exc)
                self.xla = False
        if not self.xla:
            self._warm_up()

    @property
    def max_chunk(self) -> int:
        return XLA_CHUNK if self.xla else BUCKETS[-1]

    def _fns(self, bucket: int) -> tuple[Any, Any]:
        """(forecast, policy) compiled functions serving ``bucket``."""
        if self.xla and bucket >= XLA_MIN:
            return self._forecast_xla, self._policy_xla
        return self._forecast_fn, self._policy_fn

    def buckets(self) -> list[int]:
        """The batch sizes served (each compiled once, at load)."""
        return [b for b in BUCKETS if b <= self.max_chunk]

    def _warm_up(self) -> None:
        for b in self.buckets():
            f, p = self._fns(b)
            f(np.zeros((b, WINDOW, len(FEATURES)), np.float32))
            p(np.zeros((b, self._obs_dim), np.float32))

    def _run(self, which: int, x: np.ndarray) -> np.ndarray:
        """Apply the compiled forecast (``which`` 0) or policy (1) on bucket-padded chunks
        of ``x``; returns (N, ...) numpy."""
        n = x.shape[0]
        step = self.max_chunk
        outs = []
        for start in range(0, n, step):
            chunk = x[start : start + step]
            m = chunk.shape[0]
            b = _bucket(m)
            if m < b:
                pad = np.zeros((b - m,) + chunk.shape[1:], dtype=np.float32)
                chunk = np.concatenate([chunk, pad])
            outs.append(self._fns(b)[which](chunk).numpy()[:m])
        return np.concatenate(outs)

    def forecast(self, windows: np.ndarray) -> np.ndarray:
        """LSTM forecast only: (N, 10, 4) Mbit/s -> (N,) Mbit/s."""
        w = self._check(windows)
        if w.shape[0] == 0:
            return np.zeros((0,))
        with self._lock:
            z = self._run(0, self.preprocessor.transform(w))  # (N,) standardised
        return self.preprocessor.inverse_target(z, w)

    def predict(self, windows: np.ndarray) -> Prediction:
        """Forecast, action and reference bandwidth for each window.

        ``windows`` is (N, 10, 4) in raw units (Mbit/s, ms, ratios), FEATURES order,
        oldest row first. N = 0 gives empty arrays.
        """
        from ml.policy_features import observation, reference_bandwidth

        w = self._check(windows)
        n = w.shape[0]
        if n == 0:
            return Prediction(np.zeros((0,)), np.zeros((0,), np.int64), np.zeros((0,)))
        with self._lock:
            x = self.preprocessor.transform(w)  # (N, 10, 4) float32
            z = self._run(0, x)  # (N,)
            bw = self.preprocessor.inverse_target(z, w)  # (N,) Mbit/s
            obs = observation(w, bw)  # (N, OBS_DIM)
            act = self._run(1, obs).astype(np.int64)  # (N,)
        return Prediction(bw, np.clip(act, 0, N_ACTIONS - 1), reference_bandwidth(w))

    @staticmethod
    def _check(windows: np.ndarray) -> np.ndarray:
        w = np.asarray(windows, dtype=np.float64)
        if w.ndim != 3 or w.shape[1:] != (WINDOW, len(FEATURES)):
            raise ValueError(f"windows must be (N, {WINDOW}, {len(FEATURES)}), got {w.shape}")
        return w

    def compiled_forward(self, x: np.ndarray, obs: np.ndarray) -> tuple[Any, Any]:
        """Raw compiled LSTM and Q-net passes on already-prepared inputs of a bucket size (bench),
        with the functions that serve that size."""
        f, p = self._fns(_bucket(x.shape[0]))
        return f(x), p(obs)


def load_predictor(model_dir: Path | str, version: str | None = None) -> Predictor:
    """Verify and load ``version`` (default: the current one) into a ready :class:`Predictor`.

    Raises :class:`ModelError` when there is no model or it fails verification.
    """
    configure_tf()
    from ml.registry import load_version

    started = time.monotonic()
    loaded = load_version(model_dir, version)
    try:
        p = Predictor(loaded)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model {loaded.version}: cannot compile the forward passes: {exc}") from exc
    p.load_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return p
