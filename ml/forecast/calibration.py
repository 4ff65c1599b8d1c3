"""Split-conformal calibration of the quantile model and the per-profile fallback choice.

Both are fitted on the *validation* split (other links than training) and stored in
the model's metadata as a :class:`ForecastSpec`:

* **calibration**: for each profile group, horizon and quantile ``tau``, the shift
  ``s = quantile_tau(z_true - z_tau)`` of the model's ratio-space residuals, so that
  ``y <= q_tau + s`` holds for a share ``tau`` of the validation states
  (conformalised quantile regression, one-sided). Shifts differ per quantile, so after
  shifting the quantiles are made non-decreasing again by a running maximum (a
  no-op whenever the shifted quantiles do not cross);
* **fallback**: per profile group and horizon, the forecaster with the lowest mean
  pinball loss (Mbit/s) on the validation states among the calibrated model and the
  naive forecasters (:mod:`ml.forecast.naive`), each naive one both with its training
  offsets alone and with the validation shifts on top. The served forecast of that
  (profile, horizon) is that forecaster's; ``forecast_source`` names it.

The choice is **cross-fitted**: the validation links are cut into two folds, each
candidate's shifts are fitted on one fold and scored on the other, both ways
(:func:`crossfit_scores`). Scoring shifts on the states they were fitted on made the
validation-shifted candidates look better than they are, most where validation has
one or two traces (measured in docs/models.md: served pinball up to 1.40 x the best
naive forecaster on the test traces). The stored shifts are then fitted on all of
validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.forecast.context import ContextScaler
from ml.forecast.naive import ALL_GROUPS, NAIVE, NaiveQuantiles, fit_groups, group_of
from ml.forecast.quantiles import from_ratio, pinball, to_ratio

SOURCES: tuple[str, ...] = ("lstm",) + NAIVE
#: Suffix of a naive candidate served with its training offsets only (no validation shift).
RAW = ":training_offsets"


def conformal_shifts(z_true: np.ndarray, z_pred: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """(H, Q) shifts from ratio-space targets (N, H) (NaN = unknown) and forecasts (N, H, Q)."""
    n_h, n_q = z_pred.shape[1], z_pred.shape[2]
    out = np.zeros((n_h, n_q))
    for k in range(n_h):
        ok = np.isfinite(z_true[:, k])
        if not ok.any():
            continue
        for j, tau in enumerate(quantiles):
            out[k, j] = float(np.quantile(z_true[ok, k] - z_pred[ok, k, j], tau))
    return out


def apply_shifts(z_pred: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shifted forecasts (N, H, Q), non-decreasing along Q; ``shifts`` is (H, Q) or (N, H, Q)."""
    return np.maximum.accumulate(z_pred + shifts, axis=-1)


@dataclass
class ForecastSpec:
    """What serving needs besides the network: naive forecasters, shifts, sources."""

    horizons: tuple[int, ...]
    quantiles: tuple[float, ...]
    naive: NaiveQuantiles
    shifts: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (H, Q)
    #: group -> naive forecaster -> (H, Q): the same split-conformal shifts for the naive forecasters,
    #: applied when one of them serves (the naive *baselines* of the reports stay as fitted on training)
    naive_shifts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)  # group -> source per horizon
    #: group -> horizon -> source -> mean pinball (Mbit/s) on validation (the evidence for ``sources``)
    validation: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: the model's second input, per-link long-memory context (None: the window alone)
    context: ContextScaler | None = None

    def groups(self) -> list[str]:
        """Groups with their own shifts and sources (``"*"`` first)."""
        return list(self.shifts)

    def served_ratio(
        self, windows: np.ndarray, profiles: Sequence[Any] | np.ndarray, z_model: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Served forecasts (N, H, Q) in the ratio space, and every candidate's (calibrated
        ``lstm`` and the naive ones), from the model's raw ratio-space output ``z_model`` (N, H, Q)."""
        g = group_of(profiles, self.groups())
        cands = self.candidates(windows, profiles, z_model, g)
        served = np.empty_like(z_model)
        for grp in set(g.tolist()):
            rows = g == grp
            for k, src in enumerate(self.sources[grp]):
                served[rows, k] = cands[src][rows, k]
        raw_naive = self.naive.predict_ratio(windows, profiles)
        return served, {"lstm": cands["lstm"], **raw_naive}

    def candidates(
        self,
        windows: np.ndarray,
        profiles: Sequence[Any] | np.ndarray,
        z_model: np.ndarray,
        g: np.ndarray,
        calibrate_naive: bool = True,
    ) -> dict[str, np.ndarray]:
        """Calibrated model and naive quantile forecasts (N, H, Q), ratio space (the naive ones
        shifted by ``naive_shifts`` when ``calibrate_naive`` and the spec has them)."""
        empty = np.zeros((0,) + z_model.shape[1:])
        shifts = np.stack([self.shifts[str(x)] for x in g]) if len(g) else empty
        # the naive offsets of each row's *spec* group, as the serving graph gathers them
        out = {"lstm": apply_shifts(z_model, shifts), **self.naive.predict_ratio(windows, g)}
        if calibrate_naive and self.naive_shifts:
            for name in NAIVE:
                ns = np.stack([self.naive_shifts[str(x)][name] for x in g]) if len(g) else empty
                out[name] = apply_shifts(out[name], ns)
        return out

    def serving_offsets(self, group: str, name: str) -> np.ndarray:
        """(H, Q) ratio-space offsets a naive forecaster serves ``group`` with (fit + calibration shift)."""
        base = self.naive.offsets.get(group, self.naive.offsets[ALL_GROUPS])[name]
        return base + self.naive_shifts[group][name] if self.naive_shifts else base

    def source_of(self, profiles: Sequence[Any] | np.ndarray, horizon_index: int = 0) -> np.ndarray:
        """The served source of each row for one horizon, object array (N,)."""
        g = group_of(profiles, self.groups())
        return np.array([self.sources[str(x)][horizon_index] for x in g], dtype=object)

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON dict (stored in model metadata under ``forecast``)."""
        return {
            "horizons": list(self.horizons),
            "quantiles": list(self.quantiles),
            "naive": self.naive.to_json(),
            "shifts": {g: s.tolist() for g, s in self.shifts.items()},
            "naive_shifts": {g: {n: v.tolist() for n, v in d.items()} for g, d in self.naive_shifts.items()},
            "sources": self.sources,
            "validation": self.validation,
        } | ({"context": self.context.to_json()} if self.context is not None else {})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ForecastSpec:
        """Inverse of :meth:`to_json`; raises ValueError/KeyError on a malformed dict."""
        h, q = tuple(int(x) for x in d["horizons"]), tuple(float(x) for x in d["quantiles"])
        spec = cls(h, q, NaiveQuantiles.from_json(d["naive"]))
        spec.shifts = {g: np.asarray(s, dtype=np.float64).reshape(len(h), len(q)) for g, s in d["shifts"].items()}
        spec.sources = {g: [str(x) for x in s] for g, s in d["sources"].items()}
        spec.validation = d.get("validation", {})
        spec.context = ContextScaler.from_json(d["context"]) if d.get("context") else None
        spec.naive_shifts = {
            g: {n: np.asarray(v, dtype=np.float64).reshape(len(h), len(q)) for n, v in per.items()}
            for g, per in (d.get("naive_shifts") or {}).items()
        }
        if spec.naive_shifts and (set(spec.naive_shifts) != set(spec.shifts)
                                  or any(set(v) != set(NAIVE) for v in spec.naive_shifts.values())):  # fmt: skip
            raise ValueError("forecast spec naive_shifts need every group and every naive forecaster")
        if ALL_GROUPS not in spec.shifts or set(spec.shifts) != set(spec.sources):
            raise ValueError("forecast spec needs the '*' group and the same groups in shifts and sources")
        bad = {s for v in spec.sources.values() for s in v} - set(SOURCES)
        if bad or any(len(v) != len(h) for v in spec.sources.values()):
            raise ValueError(f"forecast sources must be one of {SOURCES} per horizon, got {spec.sources}")
        return spec


def folds(links: np.ndarray | None, n: int) -> np.ndarray:
    """Two cross-fitting folds (N,) of 0/1: by link (alternating over the distinct links, in
    order) when there are at least two, else the first and the second half of the rows."""
    if links is not None and len(np.unique(links)) >= 2:
        _, inv = np.unique(links, return_inverse=True)
        return (inv % 2).astype(np.int8)
    return (np.arange(n) >= n // 2).astype(np.int8)


def crossfit_scores(
    windows: np.ndarray,
    y: np.ndarray,
    zy: np.ndarray,
    cands_raw: dict[str, np.ndarray],
    fold: np.ndarray,
    quantiles: Sequence[float],
    k: int,
) -> dict[str, float]:
    """Cross-fitted mean pinball (Mbit/s) at horizon ``k`` of each raw candidate (N, H, Q) shifted by
    conformal shifts fitted on the other fold; each naive one also unshifted (``name + RAW``).
    Rows: those with a finite target (windows (N, 10, 4), y (N, H) Mbit/s, zy its ratio space)."""
    ok = np.isfinite(y[:, k])
    out: dict[str, float] = {}
    for name, z in cands_raw.items():
        shifted = np.empty(z.shape[:1] + z.shape[2:])  # (N, Q)
        for f in (0, 1):
            fit, use = ok & (fold != f), ok & (fold == f)
            if not use.any():
                continue
            sh = conformal_shifts(zy[fit][:, k : k + 1], z[fit][:, k : k + 1], quantiles)  # zeros if none
            shifted[use] = apply_shifts(z[use][:, k : k + 1], sh)[:, 0]
        out[name] = pinball(y[ok, k], from_ratio(windows[ok], shifted[ok]), quantiles)
        if name != "lstm":
            out[name + RAW] = pinball(y[ok, k], from_ratio(windows[ok], z[ok, k]), quantiles)
    return out


def _training_scores(
    naive: NaiveQuantiles, train: tuple[np.ndarray, np.ndarray, Sequence[Any] | np.ndarray], group: str, k: int
) -> dict[str, float]:
    """Pinball (Mbit/s) at horizon ``k`` of each naive forecaster with its training offsets on the
    training rows of ``group`` (every row for ``"*"``), keyed ``name + RAW``; finite ones only."""
    w, y, prof = train
    p = np.asarray(list(prof), dtype=object)
    rows = np.isfinite(np.asarray(y, dtype=np.float64)[:, k]) & ((p == group) | (group == ALL_GROUPS))
    if not rows.any():
        return {}
    z = naive.predict_ratio(w[rows], np.full(int(rows.sum()), group, dtype=object))  # the group's offsets, as served
    out = {n + RAW: pinball(y[rows, k], from_ratio(w[rows], z[n][:, k]), naive.quantiles) for n in NAIVE}
    return {n: v for n, v in out.items() if np.isfinite(v)}


def fit_spec(
    windows: np.ndarray,
    targets: np.ndarray,
    profiles: Sequence[Any] | np.ndarray,
    z_model: np.ndarray,
    naive: NaiveQuantiles,
    allow_model: bool = True,
    links: np.ndarray | None = None,
    train: tuple[np.ndarray, np.ndarray, Sequence[Any] | np.ndarray] | None = None,
) -> ForecastSpec:
    """Shifts and sources from validation windows (N, 10, 4), targets (N, H) in Mbit/s,
    and the model's raw ratio-space forecasts (N, H, Q); ``links`` (N,) names each row's
    link for the cross-fitting folds (None: halves of the rows). ``allow_model=False``
    serves the naive forecasters only (a point-head or missing model).

    Where validation has no target at a horizon (series shorter than the horizon), nothing
    can be scored there: the served source is the naive forecaster with its training offsets
    that has the lowest pinball on ``train`` = (windows, targets, profiles) (the training
    split; its three parameters per horizon cannot overfit), else the last value."""
    spec = ForecastSpec(naive.horizons, naive.quantiles, naive)
    y = np.asarray(targets, dtype=np.float64)
    zy = to_ratio(windows, y)  # (N, H); NaN targets stay NaN
    prof = np.asarray(list(profiles), dtype=object)
    for g, rows in fit_groups(prof, y):
        spec.shifts[g] = conformal_shifts(zy[rows], z_model[rows], spec.quantiles)
    gidx = group_of(prof, spec.groups())
    # the naive forecasts with the offsets of each row's spec group, as the serving graph gathers them
    raw = naive.predict_ratio(windows, gidx)
    fold = folds(links, len(prof))
    for g in spec.groups():
        rows = gidx == g if g != ALL_GROUPS else np.ones(len(prof), bool)
        spec.naive_shifts[g] = {name: conformal_shifts(zy[rows], raw[name][rows], spec.quantiles) for name in NAIVE}
        cands = {name: raw[name][rows] for name in NAIVE}
        if allow_model:
            cands = {"lstm": z_model[rows], **cands}  # first: the model wins a tie
        spec.sources[g], spec.validation[g] = [], {}
        for k, h in enumerate(spec.horizons):
            scores = crossfit_scores(windows[rows], y[rows], zy[rows], cands, fold[rows], spec.quantiles, k)
            finite = {s: v for s, v in scores.items() if np.isfinite(v)}
            if not finite and train is not None:
                finite = _training_scores(naive, train, g, k)
                scores.update({"training:" + n: v for n, v in finite.items()})
            best = min(finite, key=finite.__getitem__) if finite else "last_value" + RAW
            if best.endswith(RAW):  # serve that naive forecaster with its training offsets at this horizon
                best = best[: -len(RAW)]
                spec.naive_shifts[g][best][k] = 0.0
            spec.sources[g].append(best)
            spec.validation[g][str(h)] = scores
    return spec
