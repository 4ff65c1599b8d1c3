"""Training orchestration: data -> preprocessing -> LSTM -> DDQN -> held-out metrics -> registry.

``bwp train`` and in-process callers (tests, the demo, the retraining job) both go
through :func:`train`. Data and seeds:

* simulator (default): training links from seed ``1000*S + 1``, validation links
  (EarlyStopping, ReduceLROnPlateau) from ``1000*S + 2`` and held-out test links
  (metrics in metadata) from ``1000*S + 3`` (see :mod:`ml.data`);
* ``--data FILE ...``: whole links split 70 / 15 / 15 (train / val / test) with ``S``.

Preprocessing statistics and the EWMA baseline's alpha are fitted on the training
links only. The DDQN is trained on the training links with the freshly trained LSTM
as its forecaster: for a quantile model, the served h = 1 p10 / median / p90 of each
link's profile (the quantiles observation layout, 11 columns, recorded as
``metadata["policy"]["observation"]``); for a point model its forecast (9 columns).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import (
    LinkSeries,
    describe,
    file_links,
    simulator_links,
    simulator_seeds,
    split_links,
)
from ml.eval.forecast import best_baseline, forecasts_for_links, mae_ratio, report
from ml.eval.probabilistic import prob_report, quantile_forecasts, summary
from ml.forecast.calibration import ForecastSpec
from ml.forecast.features import DEFAULT_FEATURE_MODE
from ml.forecast.lstm import LSTMConfig
from ml.forecast.quantiles import HORIZONS, QUANTILES
from ml.forecast.training import (
    fit_forecaster,
    fit_quantile_forecaster,
    make_forecaster,
    make_quantile_model_fn,
    served_functions,
)
from ml.policy.observation import QUANTILE_OBS_LEVELS
from ml.policy.rules import tune_ewma_rule, tune_quantile_rule
from ml.serving.registry import save_version
from ml.serving.runtime import configure_tf
from stream.core.errors import DataError
from stream.core.progress import Progress, stderr_progress
from stream.core.records import WINDOW

#: Feature mode shipped by default (docs/models.md has the measured comparison).


@dataclass
class SimSizes:
    """How many simulator links/steps each split gets."""

    train_links: int = 64
    train_steps: int = 1000
    val_links: int = 16
    val_steps: int = 600
    test_links: int = 32
    test_steps: int = 600

    @classmethod
    def quick(cls) -> SimSizes:
        """Small splits (links x steps) for demos and smoke tests."""
        return cls(train_links=16, train_steps=300, val_links=4, val_steps=200, test_links=8, test_steps=200)


@dataclass
class TrainConfig:
    """Everything one training run needs. ``quick`` shrinks data, epochs and DDQN episodes."""

    profile: str = "mixed"
    data: list[Path] = field(default_factory=list)
    quick: bool = False
    model_dir: Path = Path("models")
    promote: bool = True
    seed: int = 0
    qnet_variant: str = "mlp"
    head: str = "quantile"  # "point": the design's single-output LSTM (``bwp train --head point``)
    horizons: tuple[int, ...] = HORIZONS
    quantiles: tuple[float, ...] = QUANTILES
    feature_mode: str = DEFAULT_FEATURE_MODE
    lstm_loss: str | None = None  # overrides lstm.loss ("mae" default, "mse" = the original design)
    lstm: LSTMConfig | None = None
    sim: SimSizes | None = None
    ddqn: Any = None  # ml.policy.ddqn.DDQNConfig; None = default (or quick)
    progress: Progress | None = None
    #: (train, val, test) LinkSeries lists prepared by the caller (stream.lifecycle.retrain: time-based holdout,
    #: recency oversampling) and a JSON-able description; when set, profile/data are ignored
    splits: tuple[list, list, list] | None = None
    splits_info: dict | None = None

    def resolved(self) -> TrainConfig:
        """A copy with the quick/default sub-configs filled in."""
        lstm = self.lstm or (LSTMConfig.quick() if self.quick else LSTMConfig(time_budget_s=330))
        if self.lstm_loss:
            lstm = replace(lstm, loss=self.lstm_loss)
        return replace(
            self,
            model_dir=Path(self.model_dir),
            data=[Path(p) for p in self.data],
            lstm=lstm,
            sim=self.sim or (SimSizes.quick() if self.quick else SimSizes()),
        )


def load_splits(cfg: TrainConfig, say: Progress) -> tuple[list[LinkSeries], list[LinkSeries], list[LinkSeries], dict]:
    """Train / validation / test links and a JSON-able description of where they came from."""
    sizes = cfg.sim or SimSizes()
    if cfg.splits is not None:
        train, val, test = (list(x) for x in cfg.splits)
        info = {"kind": "given", **(cfg.splits_info or {})}
    elif cfg.data:
        links = [ls for ls in file_links(cfg.data) if ls.steps > WINDOW]
        if len(links) < 3:
            raise DataError(
                f"training from files needs at least 3 links with more than {WINDOW} states "
                f"(split by link into train/val/test), got {len(links)}"
            )
        train, val, test = split_links(links, (0.7, 0.15, 0.15), cfg.seed)
        info = {
            "kind": "files",
            "files": [str(p) for p in cfg.data],
            "split": "by link 70/15/15",
            "split_seed": cfg.seed,
        }
    else:
        seeds = simulator_seeds(cfg.seed)
        say(f"simulating {cfg.profile}: train seed {seeds['train']}, val {seeds['val']}, test {seeds['test']}")
        train = simulator_links(cfg.profile, sizes.train_links, sizes.train_steps, seeds["train"])
        val = simulator_links(cfg.profile, sizes.val_links, sizes.val_steps, seeds["val"])
        test = simulator_links(cfg.profile, sizes.test_links, sizes.test_steps, seeds["test"])
        info = {"kind": "simulator", "profile": cfg.profile, "seeds": seeds, "sizes": asdict(sizes)}
    info.update({"train": describe(train), "val": describe(val), "test": describe(test)})
    return train, val, test, info


def train(config: TrainConfig) -> str:
    """Run a full training and register the result; returns the new version name."""
    configure_tf()
    cfg = config.resolved()
    say = cfg.progress or stderr_progress
    started = time.monotonic()
    timings: dict[str, float] = {}

    train_links, val_links, test_links, data_info = load_splits(cfg, say)
    timings["data_s"] = round(time.monotonic() - started, 1)

    t0 = time.monotonic()
    spec: ForecastSpec | None = None
    fns: dict[str | None, tuple] = {}  # profile (None: "*") -> (forecast, quantile_fn, policy forecaster)
    if cfg.head == "quantile":
        model, pre, spec, lstm_hist = fit_quantile_forecaster(
            train_links, val_links, cfg.lstm, cfg.seed, cfg.horizons, cfg.quantiles, cfg.feature_mode, say
        )
        model_fn = make_quantile_model_fn(model, pre, len(spec.horizons))
        tails = (QUANTILE_OBS_LEVELS[0], QUANTILE_OBS_LEVELS[-1])
        for p in {None, *(ls.profile for ls in train_links + val_links)}:
            fns[p] = served_functions(model_fn, spec, p, tails)  # the serving graph's choices for p
        alpha = spec.naive.alphas[0]
    else:
        model, pre, alpha, lstm_hist = fit_forecaster(train_links, val_links, cfg.lstm, cfg.seed, cfg.feature_mode, say)
        point = make_forecaster(model, pre)
        fns[None] = (point, None, point)
    forecaster = fns[None][0]
    timings["lstm_s"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    qnet, ddqn_hist = _train_policy(cfg, train_links, [fns.get(ls.profile, fns[None])[2] for ls in train_links], say)
    timings["ddqn_s"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    policy_meta = _choose_policy(train_links, val_links, fns, qnet, say)
    policy_meta["observation"] = ddqn_hist["observation"]
    timings["policy_select_s"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    metrics = _test_metrics(test_links, forecaster, alpha, model, pre, spec, say)
    timings["evaluate_s"] = round(time.monotonic() - t0, 1)

    timings["total_s"] = round(time.monotonic() - started, 1)
    meta = {
        "kind": "bwp-forecaster+policy",
        "head": cfg.head,
        "feature_mode": cfg.feature_mode,
        "ewma_alpha": alpha,
        "seed": cfg.seed,
        "quick": cfg.quick,
        "qnet_variant": cfg.qnet_variant,
        "training_data": data_info,
        "lstm": {"config": asdict(cfg.lstm), "history": lstm_hist},
        "ddqn": _jsonable(ddqn_hist),
        "policy": _jsonable(policy_meta),
        "metrics": _jsonable(metrics),
        "timings": timings,
    }
    if spec is not None:
        meta["forecast"] = spec.to_json()
    version = save_version(cfg.model_dir, model, qnet, pre, _jsonable(meta), promote=cfg.promote)
    say(
        f"registered {version} in {cfg.model_dir}{' (current)' if cfg.promote else ''} after {timings['total_s']:.0f} s"
    )
    return version


def _train_policy(
    cfg: TrainConfig, train_links: list[LinkSeries], forecasters: list[Any], say: Progress
) -> tuple[Any, dict]:
    """The DDQN on the training links (one forecaster per link), with its own budget (``DDQNConfig``)."""
    # gymnasium (through ml.policy.env): only the DDQN training needs it
    from ml.policy.ddqn import DDQNConfig, train_ddqn

    dcfg = cfg.ddqn or (DDQNConfig.quick() if cfg.quick else DDQNConfig())
    dcfg = replace(dcfg, variant=cfg.qnet_variant)
    say(f"ddqn: up to {dcfg.episodes} episodes of {dcfg.episode_len} steps, variant {dcfg.variant}")

    def ddqn_progress(d: dict[str, Any]) -> None:
        say("ddqn " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()))

    return train_ddqn([ls.data for ls in train_links], forecasters, dcfg, cfg.seed, ddqn_progress)


def _choose_policy(
    train_links: list[LinkSeries],
    val_links: list[LinkSeries],
    fns: dict[str | None, tuple],
    qnet: Any,
    say: Progress,
) -> dict[str, Any]:
    """Tune both rules on the training links; pick the serving policy per profile on validation, each
    profile scored with its own served forecasts (``fns``: profile -> forecast, quantile_fn, policy
    forecaster; None = the ``"*"`` choices, which also tune the quantile rule)."""
    # gymnasium (through ml.policy.env): only training needs the policy evaluation
    from ml.policy.evaluation import qnet_policy
    from ml.policy.selection import select_policies  # gymnasium, through ml.policy.evaluation

    series = [ls.data for ls in train_links]
    ewma_rule = tune_ewma_rule(series)
    quantile_fn = fns[None][1]
    qrule = tune_quantile_rule(series, quantile_fn) if quantile_fn is not None else None
    say(f"rules tuned on training links: EWMA alpha {ewma_rule.alpha} k {ewma_rule.k}; quantile tau "
        f"{qrule.tau if qrule else None}")  # fmt: skip
    groups: dict[str, list] = {"*": [ls.data for ls in val_links]}
    for ls in val_links:
        if ls.profile:
            groups.setdefault(ls.profile, []).append(ls.data)
    by_group = {g: fns.get(None if g == "*" else g, fns[None]) for g in groups}
    serving, evidence = select_policies(
        groups,
        {g: f[2] for g, f in by_group.items()},
        qnet_policy(qnet),
        ewma_rule,
        (qrule, {g: f[1] for g, f in by_group.items()}) if qrule else None,
        say,
    )
    if qrule is None:  # a point model has no calibrated quantiles to serve the quantile rule with
        serving = {g: ("ewma_rule" if p == "quantile_rule" else p) for g, p in serving.items()}
    return {
        "ewma_rule": ewma_rule.to_json(),
        "quantile_rule": qrule.to_json() if qrule else None,
        "serving": serving,
        "validation": evidence,
    }


def _test_metrics(
    test_links: list[LinkSeries], forecaster: Any, alpha: float, model: Any, pre: Any, spec: Any, say: Progress
) -> dict[str, Any]:
    """Held-out test metrics: the h=1 point report and, for a quantile model, the probabilistic one."""
    rep = report(forecasts_for_links(forecaster, test_links, alpha))
    preds = rep["predictors"]
    best = best_baseline(preds)
    say(
        f"held-out test: served MAE {preds['lstm']['mae']:.4g} vs best baseline {best} "
        f"{preds[best]['mae'] if best else float('nan'):.4g} (ratio {mae_ratio(preds) or float('nan'):.3f})"
    )
    out: dict[str, Any] = {"forecast_test": rep}
    if spec is not None:
        prob = prob_report(quantile_forecasts(make_quantile_model_fn(model, pre, len(spec.horizons)), spec, test_links))
        out["forecast_test_quantiles"] = prob
        out["forecast_test_summary"] = summary(prob)
        for h, v in out["forecast_test_summary"].items():
            say(f"held-out test h={h}: served pinball ratio {v['served_pinball_ratio']}, MAE ratio "
                f"{v['served_mae_ratio']}, coverage {v['served_coverage']}")  # fmt: skip
        # what a decision's forecast_source will say: the model, or the naive forecaster serving instead
        say("what serves on the held-out links (forecast_source): " + "; ".join(
            f"h={h} " + ", ".join(f"{src} {share:.0%}" for src, share in sorted(shares.items(), key=lambda kv: -kv[1]))
            for h, shares in prob["forecast_sources"].items()
        ))  # fmt: skip
    return out


def _jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays -> Python, recursively (metadata must be plain JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
