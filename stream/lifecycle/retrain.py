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

Gate (:func:`stream.lifecycle.gate.decide`, re-exported here): candidate and current model are
scored on the same holdout, forecast accuracy (``ml.eval.forecast``: MAE, and for a quantile
model the mean pinball loss at h = 1 and h = 10) and the mean policy reward of their served
allocations (``ml.policy.evaluation.links_policy_reward``). The candidate must beat the naive
forecasters and, by ``margin``, the current model's forecast, and its reward must be finite
and at least the current model's. With no current model only the baselines count.
Otherwise the candidate stays registered, not current. Every run (failures too)
writes ``<model_dir>/retrain-reports/<UTC timestamp>.json`` and returns the same
report. A non-blocking ``flock`` on ``<model_dir>/.retrain.lock`` keeps two runs
from training and promoting at the same time.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ml.eval.forecast import evaluate_predictor
from ml.policy.evaluation import links_policy_reward
from ml.serving import registry
from ml.serving.predictor import load_predictor
from ml.train import TrainConfig, train
from stream.core.errors import BwpError
from stream.core.fileio import ExclusiveLock, atomic_write_text
from stream.core.progress import Progress, stderr_progress
from stream.lifecycle.drift import RetrainFlag
from stream.lifecycle.gate import GateVerdict, decide
from stream.lifecycle.retrain_data import RetrainConfig, load_data

LOCK_FILE = ".retrain.lock"
REPORTS_DIR = "retrain-reports"
__all__ = ["GateVerdict", "RetrainLock", "decide", "run_retrain", "score_holdout", "write_retrain_report"]


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


def score_holdout(model_dir: Path, version: str, links: Any) -> dict[str, Any]:
    """Load ``version`` once and score it on ``links``: the ``ml.eval.forecast`` report plus
    ``policy`` (the mean reward of its served allocations, ``links_policy_reward``)."""
    pred = load_predictor(model_dir, version)
    rep = evaluate_predictor(pred, links)
    rep["policy"] = links_policy_reward(pred, links)
    return rep


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
    cand_rep = score_holdout(model_dir, cand, data.holdout)
    report["candidate"]["metrics"] = cand_rep
    report["candidate"]["policy_reward"] = cand_rep["policy"]["mean_reward"]
    cur_rep = None
    if current is not None:
        try:
            cur_rep = score_holdout(model_dir, current, data.holdout)
        except BwpError as exc:
            # a current model that cannot be loaded is no reason to keep it
            report["current"]["error"] = str(exc)
            say(f"current model {current} cannot be evaluated: {exc}")
        report["current"]["metrics"] = cur_rep
        report["current"]["policy_reward"] = cur_rep["policy"]["mean_reward"] if cur_rep is not None else None
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
