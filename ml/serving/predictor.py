"""Serving-side inference: window in Mbit/s -> forecast, allocation action, reference bandwidth.

This is the only ml module that serving code imports. It depends on the registry,
the feature transform and the policy observation only (never on training code).
The serving path (preprocessing, LSTM with ``training=False``, policy observation,
Q-net) is one compiled ``tf.function`` (:mod:`ml.serving.graph`), traced once per batch
bucket at load time, so steady-state calls never retrace. Buckets of ``XLA_MIN``
windows and more (the worker's batches under load) run XLA-compiled
(``jit_compile=True``): `bwp bench model` and the pipeline bench measured the LSTM
forward pass at about 21 us/window in chunks of 1024 against 35 us without XLA, with
outputs equal to float32 rounding (a test checks). ``BWP_TF_XLA=0`` turns it off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.forecast.calibration import SOURCES, ForecastSpec
from ml.forecast.context import CONTEXT_FEATURES, long_memory_states
from ml.forecast.quantiles import quantile_at
from ml.policy.observation import QUANTILE_OBS_LEVELS, observation_layout
from ml.serving.graph import serving_function
from ml.serving.quantile_graph import POLICIES, quantile_serving_function
from ml.serving.registry import load_version
from ml.serving.runtime import configure_tf, tf_threads, xla_enabled
from stream.core.errors import ModelError
from stream.core.longmem import STATE
from stream.core.records import BW, FEATURES, WINDOW

log = logging.getLogger(__name__)

#: Batches are padded up to one of these sizes; larger ones go in chunks (``max_chunk``).
#: The serving path costs about 40 us per padded window at 64-256 (`bwp bench model`), so
#: padding is paid in full: between 64 and 512 each bucket is at most 1.5x the one below,
#: because the worker's chunks at a few thousand states/s fall there (about 130 windows
#: at 5,000/s, which powers of two padded to 256). The coarser set 1/8/64/256/1024/4096 measured
#: 17 ms vs 10 ms p50 at batch 100; 96/160/192/384 cut the worker's predict stage at
#: ``--rate 5000`` from 11.6-14.9 to 9.0-12.0 ms per chunk (docs/pipeline.md).
BUCKETS: tuple[int, ...] = (1, 4, 16, 32, 64, 96, 128, 160, 192, 256, 384, 512, 1024, 2048, 4096)

#: Smallest bucket run XLA-compiled. XLA wins at every size measured (whole serving
#: path, batch 16: 1.4 vs 4.9 ms; 64: 4.1 vs 7.3 ms; 128: 7.3 vs 11.8 ms; quantile
#: model, 2026-12-02, 250 calls each, interleaved: batch 1 2.0-2.2 vs 6.0-6.5 ms p50,
#: batch 4 3.4-3.8 vs 5.5-6.3 ms), so every bucket is compiled: batch 1 is what `bwp serve`
#: runs for a lone client. Each XLA bucket costs about a second of compilation at load.
XLA_MIN = 1
#: Largest chunk an XLA call gets (larger batches go in chunks): 1024 was the fastest
#: per window here (21 us vs 25 at 2048 and 28 at 4096).
XLA_CHUNK = 1024
#: Quantile levels of the decisions schema v2 (p10, p50, p90).
WIRE_LEVELS = (0.1, 0.5, 0.9)


@dataclass
class Prediction:
    """One row per input window."""

    bandwidth_mbps: np.ndarray  # (N,) forecast of the next step (the served h=1 median), >= 0
    action: np.ndarray  # (N,) int64 in 0..9, allocation (action + 1) * 10 %
    reference_bandwidth_mbps: np.ndarray  # (N,) what 100 % allocation means
    #: (N, H, Q) Mbit/s quantiles of the mean bandwidth over the next h steps; None for a point model
    quantiles: np.ndarray | None = None
    horizons: tuple[int, ...] = (1,)
    forecast_source: np.ndarray | None = None  # (N,) names of ml.forecast.calibration.SOURCES
    policy: np.ndarray | None = None  # (N,) names of ml.serving.quantile_graph.POLICIES
    #: (N, H, 3) Mbit/s: the quantiles 0.1, 0.5, 0.9 the decisions schema v2 carries; None for a point model
    wire_quantiles: np.ndarray | None = None


def _bucket(n: int) -> int:
    for b in BUCKETS:
        if n <= b:
            return b
    return BUCKETS[-1]


class Predictor:
    """A loaded, verified model version with its serving path compiled.

    The serving path (preprocessing, LSTM, policy observation, Q-net) is one
    TensorFlow function (:mod:`ml.serving.graph`), traced once per batch bucket at load.
    Thread-safe for concurrent callers (a lock serialises calls; TF itself uses the
    configured intra-op threads).
    """

    def __init__(self, loaded: Any, xla: bool | None = None) -> None:
        import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

        self.version: str = loaded.version
        self.metadata: dict[str, Any] = loaded.metadata
        self.preprocessor = loaded.preprocessor
        self._lstm = loaded.lstm
        self._qnet = loaded.qnet
        self._lock = threading.Lock()
        self._raw: dict[bool, tuple[Any, Any]] = {}
        self.head: str = self.metadata.get("head", "point")
        #: the Q-network's observation layout ("point" 9 columns, "quantiles" 11; checked at load)
        self.observation: str = observation_layout(self.metadata)
        self.spec: ForecastSpec | None = None
        #: whether the model reads each window's long-memory link state (predict(..., states=))
        self.context = False
        if self.head == "quantile":
            self.spec = ForecastSpec.from_json(self.metadata["forecast"])
            pol = self.metadata.get("policy", {})
            rule = pol.get("ewma_rule") or {"alpha": 0.5, "k": 0.8}
            serve = quantile_serving_function(
                self.preprocessor,
                self._lstm,
                self._qnet,
                self.spec,
                pol.get("serving") or {"*": "ddqn"},
                (float(rule["alpha"]), float(rule["k"])),
                float((pol.get("quantile_rule") or {"tau": 0.1})["tau"]),
                self.observation,
            )
            self._groups = {g: i for i, g in enumerate(self.spec.groups())}
            self.context = self.spec.context is not None
            n_in = len(self._lstm.inputs)
            if n_in != (2 if self.context else 1) or (
                self.context and self._lstm.inputs[1].shape[-1] != len(CONTEXT_FEATURES)
            ):
                raise ModelError(
                    f"model {self.version}: the forecast spec says context {self.spec.context is not None}, but the LSTM "
                    f"has {n_in} inputs {[tuple(i.shape) for i in self._lstm.inputs]} (a context model takes the window "
                    f"and ({len(CONTEXT_FEATURES)},) context features)"
                )
        else:
            # The point head serves the DDQN or the EWMA rule, per profile, as chosen at training
            # (v1 artefacts have no choice: the DDQN everywhere).
            pol = self.metadata.get("policy") or {}
            serving = pol.get("serving") or {"*": "ddqn"}
            groups = ["*", *sorted(g for g in serving if g != "*")]
            choice = [serving.get(g, serving.get("*", "ddqn")) for g in groups]
            if any(c not in POLICIES[:2] for c in choice):
                raise ModelError(
                    f"model {self.version}: a point model serves ddqn or ewma_rule, metadata says {serving}"
                )
            rule = pol.get("ewma_rule") or {"alpha": 0.5, "k": 0.8}
            serve = serving_function(
                self.preprocessor, self._lstm, self._qnet,
                [POLICIES.index(c) for c in choice], (float(rule["alpha"]), float(rule["k"])),
            )  # fmt: skip
            self._groups = {g: i for i, g in enumerate(groups)}
        # One concrete function per bucket: shapes are static, so nothing retraces later.
        self._serve_fn = tf.function(serve, reduce_retracing=False)
        self.xla = xla_enabled() if xla is None else xla
        if self.xla:
            self._serve_xla = tf.function(serve, reduce_retracing=False, jit_compile=True)
            try:
                self._warm_up()
            except Exception as exc:
                log.warning("model %s: XLA compilation failed (%r); serving without XLA", self.version, exc)
                self.xla = False
        if not self.xla:
            self._warm_up()

    @property
    def lstm(self) -> Any:
        """The loaded Keras forecaster (for evaluation code that runs it outside the serving graph)."""
        return self._lstm

    @property
    def qnet(self) -> Any:
        """The loaded Keras Q-network (for evaluation code that scores it outside the serving graph)."""
        return self._qnet

    @property
    def max_chunk(self) -> int:
        """Largest batch (windows) one compiled call takes; larger batches are served in chunks."""
        return XLA_CHUNK if self.xla else BUCKETS[-1]

    def _fn(self, bucket: int) -> Any:
        """The compiled serving function for ``bucket``."""
        return self._serve_xla if self.xla and bucket >= XLA_MIN else self._serve_fn

    def buckets(self) -> list[int]:
        """The batch sizes served (each compiled once, at load)."""
        return [b for b in BUCKETS if b <= self.max_chunk]

    def _warm_up(self) -> None:
        """Trace (and XLA-compile) every bucket now, so that no call compiles later.

        Compilation is single-threaded in XLA and about a second per bucket, so the
        buckets compile on :func:`tf_threads` threads, largest first (two here: 16.7 s ->
        11.3 s for the whole load). Concurrent calls of one ``tf.function`` are safe; TensorFlow
        serialises the tracing itself.
        """

        def compile_(b: int) -> None:
            args = (np.zeros((b, WINDOW, len(FEATURES)), np.float64), np.zeros((b,), np.int32))
            self._fn(b)(*args, *((np.zeros((b, len(STATE)), np.float64),) if self.context else ()))

        with ThreadPoolExecutor(max_workers=tf_threads(), thread_name_prefix="bwp-compile") as ex:
            list(ex.map(compile_, sorted(self.buckets(), reverse=True)))  # re-raises a compile error

    def _run(self, w: np.ndarray, groups: np.ndarray, states: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """The serving function on bucket-padded chunks of ``w`` (N, 10, 4) float64 and profile
        groups (N,) int32 (and, for a context model, states (N, 6)): (forecast, action,
        reference[, quantiles, source, policy]), N rows each."""
        n = w.shape[0]
        step = self.max_chunk
        outs: list[tuple[np.ndarray, ...]] = []
        for start in range(0, n, step):
            chunk, g = w[start : start + step], groups[start : start + step]
            st = states[start : start + step] if states is not None else None
            m = chunk.shape[0]
            b = _bucket(m)
            if m < b:  # zero windows (an outage) are valid input; their rows are dropped
                chunk = np.concatenate([chunk, np.zeros((b - m,) + chunk.shape[1:], dtype=np.float64)])
                g = np.concatenate([g, np.zeros(b - m, np.int32)])
                if st is not None:
                    st = np.concatenate([st, np.zeros((b - m, st.shape[1]), dtype=np.float64)])
            extra = (st,) if st is not None else ()
            outs.append(tuple(t.numpy()[:m] for t in self._fn(b)(chunk, g, *extra)))
        if len(outs) == 1:
            return outs[0]
        return tuple(np.concatenate(parts) for parts in zip(*outs))

    def forecast(self, windows: np.ndarray) -> np.ndarray:
        """The forecast of :meth:`predict` alone: (N, 10, 4) Mbit/s -> (N,) Mbit/s (the
        serving graph also runs the tiny Q-net; one compiled path serves both)."""
        return self.predict(windows).bandwidth_mbps

    def predict(
        self,
        windows: np.ndarray,
        profiles: Sequence[str | None] | None = None,
        states: np.ndarray | None = None,
    ) -> Prediction:
        """Forecast, action and reference bandwidth for each window (and, for a quantile
        model, the quantiles of every horizon, the forecast source and the policy).

        ``windows`` is (N, 10, 4) in raw units (Mbit/s, ms, ratios), FEATURES order,
        oldest row first; ``profiles`` (N,) selects each window's calibration, fallback
        and policy (unknown or None: the all-profiles choice). ``states`` (N, 6): each
        window's long-memory link state after its last step (``stream.core.longmem``), read
        by a context model only; None there: the state built from the window itself (10
        steps of history, :func:`window_states`). N = 0 gives empty arrays.
        """
        w = self._check(windows)
        n = w.shape[0]
        st: np.ndarray | None = None
        if self.context:
            st = window_states(w) if states is None else np.asarray(states, dtype=np.float64).reshape(n, len(STATE))
        g = np.fromiter((self._groups.get(p, 0) for p in (profiles or [None] * n)), np.int32, count=n)  # type: ignore[arg-type]
        if n == 0:
            out: tuple[np.ndarray, ...] = (np.zeros((0,)), np.zeros((0,), np.int64), np.zeros((0,)))
            if self.spec is None:
                out += (np.zeros(0, np.int32),)
            else:
                shape = (0, len(self.spec.horizons), len(self.spec.quantiles))
                out += (np.zeros(shape), np.zeros(0, np.int32), np.zeros(0, np.int32))
        else:
            with self._lock:
                out = self._run(w, g, st)  # N rows each
        if self.spec is None:
            return Prediction(
                out[0], out[1].astype(np.int64), out[2], policy=np.asarray(POLICIES, dtype=object)[out[3]]
            )
        return Prediction(
            out[0],
            out[1].astype(np.int64),
            out[2],
            quantiles=out[3],
            horizons=self.spec.horizons,
            forecast_source=np.asarray(SOURCES, dtype=object)[out[4]],
            policy=np.asarray(POLICIES, dtype=object)[out[5]],
            wire_quantiles=self._wire(w, out[3]),
        )

    def _wire(self, w: np.ndarray, q: np.ndarray) -> np.ndarray:
        """(N, H, Q) -> (N, H, 3) at 0.1, 0.5, 0.9: a slice when the model has those levels
        (the default), else interpolated in the ratio space."""
        assert self.spec is not None
        levels = [round(t, 9) for t in self.spec.quantiles]
        if all(t in levels for t in WIRE_LEVELS):
            return q[:, :, [levels.index(t) for t in WIRE_LEVELS]]
        cols = [
            np.stack([quantile_at(w, q[:, k], self.spec.quantiles, t) for t in WIRE_LEVELS], axis=1)
            for k in range(q.shape[1])
        ]
        return np.maximum.accumulate(np.stack(cols, axis=1), axis=2)

    def policy_forecast(
        self,
        windows: np.ndarray,
        profiles: Sequence[str | None] | None = None,
        layout: str | None = None,
        pred: Prediction | None = None,
    ) -> np.ndarray:
        """What the serving graph feeds the Q-network's observation of ``layout`` (default: this
        model's), for evaluation code that builds it with :func:`ml.policy.observation.observation`:
        the forecast (N,) for the point layout, the served h = 1 p10, median and p90 (N, 3) Mbit/s
        for the quantiles layout (ModelError for a point model, which has no quantiles). ``pred``:
        this model's prediction of the same windows and profiles, if the caller has it already."""
        if pred is None:
            pred = self.predict(windows, profiles)
        if (layout or self.observation) != "quantiles":
            return pred.bandwidth_mbps
        if pred.quantiles is None or self.spec is None:
            raise ModelError(
                f"model {self.version} is a point model: it has no quantiles for the quantiles observation"
            )
        w = self._check(windows)
        lo, hi = QUANTILE_OBS_LEVELS[0], QUANTILE_OBS_LEVELS[-1]
        q1, levels = pred.quantiles[:, 0], [round(t, 9) for t in self.spec.quantiles]
        tails = [
            q1[:, levels.index(t)] if t in levels else quantile_at(w, q1, self.spec.quantiles, t) for t in (lo, hi)
        ]
        return np.stack([tails[0], pred.bandwidth_mbps, tails[1]], axis=1)

    def quantile(self, windows: np.ndarray, tau: float, profiles: Sequence[str | None] | None = None) -> np.ndarray:
        """The served ``tau``-quantile of the next step's bandwidth, (N,) Mbit/s (interpolated in the
        ratio space between the model's quantiles); a point model has only its forecast."""
        pred = self.predict(windows, profiles)
        if pred.quantiles is None or self.spec is None:
            return pred.bandwidth_mbps
        return quantile_at(self._check(windows), pred.quantiles[:, 0], self.spec.quantiles, tau)

    @staticmethod
    def _check(windows: np.ndarray) -> np.ndarray:
        w = np.ascontiguousarray(windows, dtype=np.float64)
        if w.ndim != 3 or w.shape[1:] != (WINDOW, len(FEATURES)):
            raise ValueError(f"windows must be (N, {WINDOW}, {len(FEATURES)}), got {w.shape}")
        return w

    def compiled_forward(self, x: np.ndarray, obs: np.ndarray) -> tuple[Any, Any]:
        """The two networks alone, compiled as serving compiles them (XLA when on), on
        already-prepared inputs: the bench's bound. Compiled on first use."""
        import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

        if self.xla not in self._raw:
            lstm, qnet = self._lstm, self._qnet

            def forecast(v: Any) -> Any:
                return tf.reshape(lstm(v, training=False), [-1])

            def policy(o: Any) -> Any:
                return tf.argmax(qnet(o, training=False), axis=1, output_type=tf.int32)

            self._raw[self.xla] = (tf.function(forecast, jit_compile=self.xla or None),
                                   tf.function(policy, jit_compile=self.xla or None))  # fmt: skip
        f, p = self._raw[self.xla]
        return f(x), p(obs)


def load_predictor(model_dir: Path | str, version: str | None = None) -> Predictor:
    """Verify and load ``version`` (default: the current one) into a ready :class:`Predictor`.

    Raises :class:`ModelError` when there is no model or it fails verification.
    """
    configure_tf()

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


def window_states(windows: np.ndarray) -> np.ndarray:
    """The long-memory state (N, 6) a link would hold after only the window's own 10 steps: what a
    context model reads when the caller has no link state (``bwp serve``'s windows)."""
    w = np.asarray(windows, dtype=np.float64)
    if len(w) == 0:
        return np.zeros((0, len(STATE)))
    return np.stack([long_memory_states(row)[-1] for row in w[:, :, BW]])
