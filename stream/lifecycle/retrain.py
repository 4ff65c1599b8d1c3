"""``bwp retrain``: train a candidate on recent recorded telemetry; promote it only through a gate.

Data (all by record ``ts_ms``, relative to the newest record ``T``):

* window  = ``(T - window, T]``; older records are ignored;
* holdout = ``(T - holdout, T]``: never trained on (nor used for early stopping);
  each link's holdout series is prefixed with its last 10 pre-holdout states as
  *inputs* only, so every holdout state is a scored target;
* the rest is the training period. Its links are split 85 / 15 by whole link into
  training and validation (EarlyStopping / ReduceLROnPlateau) links.

Each link's states are first cut into runs of consecutive ``seq`` (a gap = lost
states or an unread file), so no window spans a gap. Above ``max_records`` (5 M) in
the window, whole files are thinned evenly in time (:func:`select_files`; manifests
give the counts without reading): the LSTM uses at most 60 k windows anyway, and 14
days of 1000 links at 1 Hz would be 1.2 G records.

Recency weighting: ``ml.train`` has no per-sample weights, so recent data is
*oversampled*: each training link is cut into one-day chunks (each chunk keeps the
9 states before it so no window is lost at a cut) and a chunk whose newest state
is ``a`` old appears ``1 + round(3 * 0.5 ** (a / half_life))`` times (4 copies for
the newest day, 3 at one half-life, 2 at two, 1 from about 2.6 half-lives on). The LSTM subsamples
windows uniformly, so copies act as weights; the DDQN draws its episodes from the
same chunks.

Gate (:func:`decide`): the candidate is promoted only if its holdout MAE is at
least ``margin`` (relative) below the current model's MAE **and** below every naive
baseline's MAE on the same holdout. With no current model only the baselines count.
Otherwise the candidate stays registered, not current. Every run (failures too)
writes ``<model_dir>/retrain-reports/<UTC timestamp>.json`` and returns the same
report. A non-blocking ``flock`` on ``<model_dir>/.retrain.lock`` keeps two runs
from training and promoting at the same time.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ml.eval.forecast import evaluate_links
from ml.serving import registry
from ml.train import TrainConfig, train
from stream.core.errors import BwpError, ConfigError
from stream.core.fileio import ExclusiveLock, atomic_write_text
from stream.core.progress import Progress, stderr_progress
from stream.lifecycle.drift import RetrainFlag
from stream.lifecycle.retrain_data import RetrainConfig, load_data

LOCK_FILE = ".retrain.lock"
REPORTS_DIR = "retrain-reports"


# --- the gate ------------------------------------------------------------------------------
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


def decide(candidate_metrics: dict[str, Any], current_metrics: dict[str, Any] | None, margin: float) -> GateVerdict:
    """The promotion gate.

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


# --- the run -------------------------------------------------------------------------------
class RetrainLock(ExclusiveLock):
    """Non-blocking exclusive ``flock`` on ``<model_dir>/.retrain.lock``."""

    def __init__(self, model_dir: Path | str) -> None:
        path = Path(model_dir) / LOCK_FILE
        super().__init__(
            path,
            f"another `bwp retrain` holds {path}; two runs must not train and promote at once "
            "(wait for it, or remove nothing: the lock is released when that process exits)",
        )


def write_retrain_report(model_dir: Path | str, report: dict[str, Any]) -> Path:
    """Atomically write the report to ``<model_dir>/retrain-reports/<timestamp>.json``."""
    d = Path(model_dir) / REPORTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = d / f"{stamp}.json"
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True, default=str))
    return path


def _default_progress(msg: str) -> None:
    stderr_progress(msg, tag="bwp retrain")


def _train_candidate(cfg: RetrainConfig, data: Any, model_dir: Path, say: Progress) -> str:
    """Train a candidate version on ``data``'s splits, registered but not promoted; its name."""
    tcfg = TrainConfig(
        model_dir=model_dir,
        quick=cfg.quick,
        promote=False,
        seed=cfg.seed,
        progress=say,
        splits=(data.train, data.val, data.holdout),
        splits_info={"retrain": {k: v for k, v in data.info.items() if not k.endswith("_links")}},
        **cfg.train_overrides,
    )
    try:
        return train(tcfg)
    except BwpError:
        raise
    except Exception as exc:  # keras/TF raise many types
        raise BwpError(f"training the candidate failed: {type(exc).__name__}: {exc}") from exc


def _gate(
    cfg: RetrainConfig,
    data: Any,
    model_dir: Path,
    cand: str,
    current: str | None,
    report: dict[str, Any],
    say: Progress,
) -> GateVerdict:
    """Score candidate and current on the holdout (into ``report``), decide, promote a winner."""
    cand_rep = evaluate_links(model_dir, cand, data.holdout)
    report["candidate"]["metrics"] = cand_rep
    cur_rep = None
    if current is not None:
        try:
            cur_rep = evaluate_links(model_dir, current, data.holdout)
        except BwpError as exc:
            # a current model that cannot be loaded is no reason to keep it
            report["current"]["error"] = str(exc)
            say(f"current model {current} cannot be evaluated: {exc}")
        report["current"]["metrics"] = cur_rep
    decision = decide(cand_rep, cur_rep, cfg.margin)
    if current is not None and cur_rep is None and decision.promote:
        decision = GateVerdict(True, decision.reason + f"; current model {current} failed to load")
    if decision.promote:
        registry.promote_version(model_dir, cand)
    return decision


def run_retrain(cfg: RetrainConfig, settings: Any = None) -> dict[str, Any]:
    """Train, evaluate, gate, maybe promote; returns the report (also written to the registry).

    ``settings`` (optional) locates the "retrain requested" flag (Redis key and file in
    the model dir); it is read at the start and cleared after a run that reached a
    decision. Raises :class:`BwpError` subclasses on failure (a report with the error
    is written first).
    """
    say = cfg.progress or _default_progress
    model_dir = Path(cfg.model_dir)
    report: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {
            "data": [str(p) for p in cfg.data],
            "model_dir": str(model_dir),
            "window_ms": cfg.window_ms,
            "holdout_ms": cfg.holdout_ms,
            "margin": cfg.margin,
            "half_life_ms": cfg.half_life_ms,
            "quick": cfg.quick,
            "seed": cfg.seed,
            "max_records": cfg.max_records,
        },
    }
    flag = None
    with RetrainLock(model_dir):
        try:
            if settings is not None:
                # an unreachable Redis is tolerated by read/clear: the file flag still works
                flag = RetrainFlag.from_settings(settings, model_dir=model_dir)
                report["requested"] = flag.read()
            started = time.monotonic()
            data = load_data(cfg, say)
            report["data"] = data.info
            current = registry.current_version(model_dir)
            report["current"] = {"version": current}

            t0 = time.monotonic()
            cand = _train_candidate(cfg, data, model_dir, say)
            report["candidate"] = {"version": cand, "train_seconds": round(time.monotonic() - t0, 1)}

            decision = _gate(cfg, data, model_dir, cand, current, report, say)
            report["decision"] = asdict(decision)
            report["seconds"] = round(time.monotonic() - started, 1)
            say(
                ("PROMOTED " + cand if decision.promote else f"not promoted, current stays {current}")
                + ": "
                + decision.reason
            )
            report["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            report["report_path"] = str(write_retrain_report(model_dir, report))
            if flag is not None:
                flag.clear()  # only after a run that reached a decision: a failed run leaves it for the next
        except BwpError as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
            report["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            report["report_path"] = str(write_retrain_report(model_dir, report))
            raise
        finally:
            if flag is not None and flag.redis is not None:
                flag.redis.close()
    return report
