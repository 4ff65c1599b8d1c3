"""The model interface of the worker, and how a prediction becomes decisions.

The hot path takes a model through these protocols only (no ``ml`` import):
``ml.serving.predictor.Predictor`` implements them, and so do the tests' stand-ins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from stream.core.compression import Compression, CompressionProfile, choose_levels, compression_of, default_profile
from stream.core.records import (
    COMPRESSION_HORIZON,
    DECISION_SCHEMA_V1,
    DECISION_SCHEMA_V3,
    N_ACTIONS,
    Decision,
    Telemetry,
)


class PredictionLike(Protocol):
    """What a model returns for N windows: forecast, action and reference bandwidth per window.

    A quantile model also sets ``wire_quantiles`` (N, H, 3) Mbit/s p10/p50/p90 per horizon,
    ``horizons`` (H,), ``forecast_source`` (N,) and ``policy`` (N,) names (decisions schema v2);
    a point model leaves ``wire_quantiles`` out or None, and its v2 decisions take the
    degenerate form (docs/wire.md).
    """

    bandwidth_mbps: np.ndarray  # (N,)
    action: np.ndarray  # (N,) int 0..9
    reference_bandwidth_mbps: np.ndarray  # (N,)


class PredictorLike(Protocol):
    """What the worker needs from a model (``ml.serving.predictor.Predictor`` implements it)."""

    version: str

    def predict(self, windows: np.ndarray, profiles: Sequence[str | None] | None = None) -> PredictionLike:
        """(N, WINDOW, 4) raw-unit windows, FEATURES order, oldest row first; each window's
        link profile (or None), which selects the model's per-profile choices. A predictor with
        a true ``context`` attribute also takes ``states`` (N, 6) as a third argument: each
        window's long-memory link state (``stream.core.longmem``, ``BatchUpdate.window_states``)."""
        ...


def check_prediction(pred: PredictionLike, n: int, version: str) -> None:
    """Raise ValueError unless ``pred`` has n rows of finite numbers, actions in 0..9 and,
    when present, finite non-decreasing ``wire_quantiles`` (n, H, 3).

    A malformed prediction is a predictor error (retried, counted), not a crash later in
    Decision.make or the JSON encoding.
    """
    for name in ("bandwidth_mbps", "action", "reference_bandwidth_mbps"):
        got = np.shape(getattr(pred, name))
        if got != (n,):
            raise ValueError(f"predictor {version} returned {name} of shape {got}, expected ({n},)")
    act = np.asarray(pred.action)
    if not np.all((act >= 0) & (act < N_ACTIONS)):
        raise ValueError(f"predictor {version} returned actions outside 0..{N_ACTIONS - 1}")
    for name in ("bandwidth_mbps", "reference_bandwidth_mbps"):
        if not np.all(np.isfinite(np.asarray(getattr(pred, name), dtype=np.float64))):
            raise ValueError(f"predictor {version} returned non-finite {name}")
    wire = getattr(pred, "wire_quantiles", None)
    if wire is not None:
        q = np.asarray(wire, dtype=np.float64)
        want = (n, len(getattr(pred, "horizons", ())), 3)
        if q.shape != want or not np.all(np.isfinite(q)) or np.any(np.diff(q, axis=2) < 0):
            raise ValueError(
                f"predictor {version} returned wire_quantiles of shape {q.shape} "
                f"(expected {want}, finite, non-decreasing along the quantiles)"
            )


def compression_hints(
    pred: PredictionLike, profile: CompressionProfile | None, horizon: int = COMPRESSION_HORIZON
) -> list[Compression]:
    """The v3 compression hint per row: ``profile``'s choice (shipped profile when None) for the p50
    of ``horizon``, else the largest horizon forecast, else the h=1 prediction (docs/compression.md)."""
    wire = getattr(pred, "wire_quantiles", None)
    if wire is None:
        bw = np.asarray(pred.bandwidth_mbps, dtype=np.float64)
    else:
        hs = [int(h) for h in pred.horizons]  # type: ignore[attr-defined]
        col = hs.index(horizon) if horizon in hs else int(np.argmax(hs))
        bw = np.asarray(wire, dtype=np.float64)[:, col, 1]
    # Decision.make raises negatives to 0; so does the hint (0 Mbit/s = compress as hard as the profile can).
    levels = choose_levels(np.maximum(bw, 0.0), profile or default_profile())
    return [compression_of(lv) for lv in levels.tolist()]


def build_decisions(
    records: list[Telemetry],
    pred: PredictionLike,
    version: str,
    now: int,
    schema_version: int,
    *,
    compression_profile: CompressionProfile | None = None,
    compression_horizon: int = COMPRESSION_HORIZON,
    wire: np.ndarray | None = None,
) -> list[Decision]:
    """One decision per record (``pred`` row i decides ``records[i]``), in ``schema_version``.

    A v3 decision's compression hint comes from ``compression_profile`` (default: the shipped
    profile) and the forecast at ``compression_horizon`` (:func:`compression_hints`). ``wire``
    (N, H, 3) replaces ``pred.wire_quantiles`` as the published forecast (the worker's online
    calibration of h = 1, stream.pipeline.aci).
    """
    bw = np.asarray(pred.bandwidth_mbps, dtype=np.float64).tolist()
    act = np.asarray(pred.action, dtype=np.int64).tolist()
    ref = np.asarray(pred.reference_bandwidth_mbps, dtype=np.float64).tolist()
    if wire is None:
        wire = getattr(pred, "wire_quantiles", None)
    comp: list[Compression | None] = (
        list(compression_hints(pred, compression_profile, compression_horizon))
        if schema_version == DECISION_SCHEMA_V3
        else [None] * len(records)
    )
    if schema_version == DECISION_SCHEMA_V1 or wire is None:
        # a point model may still say which policy served (the DDQN or the EWMA rule)
        pols = getattr(pred, "policy", None)
        pl: list[str | None] = [None] * len(records) if pols is None else np.asarray(pols).tolist()
        return [
            Decision.make(r.link_id, r.seq, r.ts_ms, b, a, f, version, now, r.profile, schema_version=schema_version,
                          compression=c, policy=p)
            for r, b, a, f, c, p in zip(records, bw, act, ref, comp, pl)
        ]  # fmt: skip
    hs = [int(h) for h in pred.horizons]  # type: ignore[attr-defined]
    src = pred.forecast_source.tolist()  # type: ignore[attr-defined]
    pol = pred.policy.tolist()  # type: ignore[attr-defined]
    return [
        Decision.make(
            r.link_id,
            r.seq,
            r.ts_ms,
            b,
            a,
            f,
            version,
            now,
            r.profile,
            forecast=[(h, *row) for h, row in zip(hs, q)],
            safe_bandwidth_mbps=q[0][0],
            forecast_source=s,
            policy=p,
            schema_version=schema_version,
            compression=c,
        )  # fmt: skip
        for r, b, a, f, q, s, p, c in zip(records, bw, act, ref, np.asarray(wire).tolist(), src, pol, comp)
    ]
