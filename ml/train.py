"""Training orchestration: data -> preprocessing -> LSTM -> DDQN -> held-out metrics -> registry.

``bwp train`` and in-process callers (tests, the demo, the retraining job) both go
through :func:`train`. Data and seeds:

* simulator (default): training links from seed ``1000*S + 1``, validation links
  (EarlyStopping, ReduceLROnPlateau) from ``1000*S + 2`` and held-out test links
  (metrics in metadata) from ``1000*S + 3`` (see :mod:`ml.data`);
* ``--data FILE ...``: whole links split 70 / 15 / 15 (train / val / test) with ``S``.

Preprocessing statistics and the EWMA baseline's alpha are fitted on the training
links only. The DDQN is trained on the training links with the freshly trained LSTM
as its forecaster.
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
from ml.forecast.features import DEFAULT_FEATURE_MODE
from ml.forecast.lstm import LSTMConfig
from ml.forecast.training import fit_forecaster, make_forecaster
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
    # gymnasium (through ml.policy.env): only the DDQN training needs it
    from ml.policy.ddqn import DDQNConfig, train_ddqn

    cfg = config.resolved()
    say = cfg.progress or stderr_progress
    started = time.monotonic()
    timings: dict[str, float] = {}

    train_links, val_links, test_links, data_info = load_splits(cfg, say)
    timings["data_s"] = round(time.monotonic() - started, 1)

    t0 = time.monotonic()
    model, pre, alpha, lstm_hist = fit_forecaster(train_links, val_links, cfg.lstm, cfg.seed, cfg.feature_mode, say)
    timings["lstm_s"] = round(time.monotonic() - t0, 1)
    forecaster = make_forecaster(model, pre)

    t0 = time.monotonic()
    dcfg = cfg.ddqn or (DDQNConfig.quick() if cfg.quick else DDQNConfig())

    dcfg = replace(dcfg, variant=cfg.qnet_variant)
    say(f"ddqn: {dcfg.episodes} episodes of {dcfg.episode_len} steps, variant {dcfg.variant}")

    def ddqn_progress(d: dict[str, Any]) -> None:
        say("ddqn " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()))

    qnet, ddqn_hist = train_ddqn([ls.data for ls in train_links], forecaster, dcfg, cfg.seed, ddqn_progress)
    timings["ddqn_s"] = round(time.monotonic() - t0, 1)

    t0 = time.monotonic()
    rep = report(forecasts_for_links(forecaster, test_links, alpha))
    timings["evaluate_s"] = round(time.monotonic() - t0, 1)
    preds = rep["predictors"]
    best = best_baseline(preds)
    say(
        f"held-out test: LSTM MAE {preds['lstm']['mae']:.4g} vs best baseline {best} "
        f"{preds[best]['mae'] if best else float('nan'):.4g} (ratio {mae_ratio(preds) or float('nan'):.3f})"
    )

    timings["total_s"] = round(time.monotonic() - started, 1)
    meta = {
        "kind": "bwp-forecaster+policy",
        "feature_mode": cfg.feature_mode,
        "ewma_alpha": alpha,
        "seed": cfg.seed,
        "quick": cfg.quick,
        "qnet_variant": cfg.qnet_variant,
        "training_data": data_info,
        "lstm": {"config": asdict(cfg.lstm), "history": lstm_hist},
        "ddqn": _jsonable(ddqn_hist),
        "metrics": {"forecast_test": rep},
        "timings": timings,
    }
    version = save_version(cfg.model_dir, model, qnet, pre, meta, promote=cfg.promote)
    say(
        f"registered {version} in {cfg.model_dir}{' (current)' if cfg.promote else ''} after {timings['total_s']:.0f} s"
    )
    return version


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
