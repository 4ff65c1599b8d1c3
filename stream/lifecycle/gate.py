"""The promotion gate of ``bwp retrain``: forecast accuracy and policy reward on the holdout.

:func:`decide` takes the candidate's and the current model's holdout reports (``ml.eval.forecast``
reports, plus a ``policy`` block: :func:`ml.policy.evaluation.links_policy_reward`) and says
whether to promote:

* **forecast** (:func:`decide_forecast`): a quantile candidate's served mean pinball loss at
  h = 1 and h = 10 must beat every naive forecaster's and, by ``margin``, the current quantile
  model's (:func:`decide_quantile`); a point candidate's MAE must beat, by ``margin``, the
  current model's and every baseline's;
* **policy** (:func:`decide_reward`): the candidate's mean reward of its served allocations
  must be finite and at least the current model's (no margin: the reward is what DWCP gets).

Both must pass. A report without a ``policy`` block (callers that score the forecast only)
is gated on the forecast alone. No current model (or one that failed to load): the forecast
references are the naive ones and the reward needs only to be finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stream.core.errors import ConfigError


@dataclass(frozen=True)
class GateVerdict:
    """Whether to promote, and why (one sentence for humans, the numbers in the report)."""

    promote: bool
    reason: str


def _mae(metrics: dict[str, Any], name: str) -> float:
    try:
        return float(metrics["predictors"][name]["mae"])
    except (KeyError, TypeError, ValueError):
        return math.nan


#: Horizons the gate compares a quantile candidate on (mean pinball loss of the served forecast).
GATE_HORIZONS = ("1", "10")


def _pinballs(metrics: dict[str, Any] | None) -> dict[str, dict[str, float]] | None:
    """Horizon -> predictor -> mean pinball of a quantile model's report (None for a point model)."""
    if not metrics or "horizons" not in metrics:
        return None
    try:
        return {h: {k: float(v["pinball"]) for k, v in metrics["horizons"][h]["predictors"].items()}
                for h in GATE_HORIZONS}  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


def decide_quantile(
    cand: dict[str, dict[str, float]], current: dict[str, dict[str, float]] | None, margin: float
) -> GateVerdict:
    """The gate of a quantile candidate: for h = 1 and 10, its served mean pinball loss must be
    finite, at most every naive forecaster's (no margin: the fallback serves one of them where
    the model does not win) and ``<= (1 - margin)`` times the current quantile model's."""
    losing = []
    for h in GATE_HORIZONS:
        c = cand[h].get("served", math.nan)
        if not math.isfinite(c):
            return GateVerdict(False, f"candidate pinball at h={h} is not a number ({c}); nothing was scored")
        for name in ("last_value", "ewma", "moving_average"):
            ref = cand[h].get(name, math.nan)
            if math.isfinite(ref) and not c <= ref:
                losing.append(f"{name} at h={h} ({c:.4g} > {ref:.4g})")
        if current is not None:
            ref = current[h].get("served", math.nan)
            if not math.isfinite(ref):
                return GateVerdict(False, f"the current model's pinball at h={h} is not a number; refusing to compare")
            if not c <= (1.0 - margin) * ref:
                losing.append(f"current model at h={h} ({c:.4g} vs {ref:.4g}, margin {margin:.1%})")
    if losing:
        return GateVerdict(False, "candidate pinball loss does not beat " + "; ".join(losing))
    vs = "the current model and every naive forecaster" if current is not None else "every naive forecaster"
    return GateVerdict(True, f"candidate pinball loss at h=1 and h=10 beats {vs}")


def decide_forecast(
    candidate_metrics: dict[str, Any], current_metrics: dict[str, Any] | None, margin: float
) -> GateVerdict:
    """The forecast half of the gate (see :func:`decide`).

    A quantile candidate (its report has ``horizons``) goes through :func:`decide_quantile`
    against a quantile current model; against a point current model (or none) it must beat the
    naive forecasters' pinball and the current model's MAE. Otherwise (point candidate):

    ``candidate_metrics`` / ``current_metrics`` are ``ml.eval.forecast`` reports on the same
    holdout (``{"predictors": {"lstm": {"mae"}, "last_value": {...}, ...}}``); the
    baselines are taken from the candidate's report. Promote iff the candidate's MAE
    is finite and ``<= (1 - margin) * ref`` for every reference: the current model's
    MAE (if there is a current model) and every baseline's MAE.
    """
    if not 0.0 <= margin < 1.0:
        raise ConfigError(f"margin must be in [0, 1), got {margin}")
    cand_pin = _pinballs(candidate_metrics)
    if cand_pin is not None:
        cur_pin = _pinballs(current_metrics)
        verdict = decide_quantile(cand_pin, cur_pin, margin)
        if not verdict.promote or current_metrics is None or cur_pin is not None:
            return verdict
        cand_mae, cur_mae = _mae(candidate_metrics, "lstm"), _mae(current_metrics, "lstm")
        if not (math.isfinite(cur_mae) and cand_mae <= (1.0 - margin) * cur_mae):
            return GateVerdict(
                False, f"candidate MAE {cand_mae:.4g} does not beat the current point model's {cur_mae:.4g}"
            )
        return GateVerdict(
            True, verdict.reason + f", and the current point model's MAE ({cand_mae:.4g} vs {cur_mae:.4g})"
        )
    cand = _mae(candidate_metrics, "lstm")
    if not math.isfinite(cand):
        return GateVerdict(False, f"candidate MAE is not a number ({cand}); nothing was scored")
    refs: dict[str, float] = {}
    if current_metrics is not None:
        refs["current model"] = _mae(current_metrics, "lstm")
    for name in candidate_metrics.get("predictors", {}):
        if name != "lstm":
            refs[name] = _mae(candidate_metrics, name)
    if not any(n != "current model" for n in refs):
        return GateVerdict(False, "the candidate report has no baseline predictors to compare with")
    losing = []
    for name, ref in refs.items():
        if not math.isfinite(ref):
            if name == "current model":
                return GateVerdict(False, f"the current model's MAE is not a number ({ref}); refusing to compare")
            continue
        if not cand <= (1.0 - margin) * ref:
            losing.append(f"{name} {ref:.4g}")
    bar = f"by {margin:.1%}" if margin else ""
    if losing:
        return GateVerdict(False, f"candidate MAE {cand:.4g} does not beat {', '.join(losing)} {bar}".rstrip())
    best = min(v for v in refs.values() if math.isfinite(v))
    vs = "the current model and every baseline" if current_metrics is not None else "every baseline (no current model)"
    return GateVerdict(
        True, f"candidate MAE {cand:.4g} beats {vs} {bar} (best reference {best:.4g})".replace("  ", " ")
    )


def policy_reward(metrics: dict[str, Any] | None) -> float | None:
    """The report's mean policy reward: None without a ``policy`` block, NaN when it holds no number."""
    if not metrics or not isinstance(metrics.get("policy"), dict):
        return None
    try:
        r = float(metrics["policy"]["mean_reward"])
    except (KeyError, TypeError, ValueError):
        return math.nan
    return r


def decide_reward(cand: float, current: float | None) -> GateVerdict:
    """The policy half of the gate: the candidate's mean reward must be finite and ``>=`` the
    current model's (``current`` None: no current model to compare, finite suffices)."""
    if not math.isfinite(cand):
        return GateVerdict(False, f"candidate policy reward is not a number ({cand}); nothing was scored")
    if current is None:
        return GateVerdict(True, f"candidate policy reward {cand:.4g} (no current model to compare)")
    if not math.isfinite(current):
        return GateVerdict(False, f"the current model's policy reward is not a number ({current}); refusing to compare")
    if not cand >= current:
        return GateVerdict(False, f"candidate policy reward {cand:.4g} is below the current model's {current:.4g}")
    return GateVerdict(True, f"candidate policy reward {cand:.4g} >= the current model's {current:.4g}")


def decide(candidate_metrics: dict[str, Any], current_metrics: dict[str, Any] | None, margin: float) -> GateVerdict:
    """The promotion gate: :func:`decide_forecast` and, when the candidate's report has a
    ``policy`` block, :func:`decide_reward` against the current model's (None: no current
    model, or one that did not load). Promote iff both pass; the reason names every failure."""
    forecast = decide_forecast(candidate_metrics, current_metrics, margin)
    cand = policy_reward(candidate_metrics)
    if cand is None:
        return forecast
    current = policy_reward(current_metrics) if current_metrics is not None else None
    if current_metrics is not None and current is None:
        current = math.nan  # scored the forecast but not the policy: nothing to compare the reward with
    reward = decide_reward(cand, current)
    if forecast.promote and reward.promote:
        return GateVerdict(True, f"{forecast.reason}; {reward.reason}")
    failed = [v.reason for v in (forecast, reward) if not v.promote]
    return GateVerdict(False, "; ".join(failed))
