"""CLI: ``bwp train``, ``bwp evaluate``, ``bwp evaluate-traces``, ``bwp models ...``.

TensorFlow is imported inside the handlers only, so ``bwp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ml.data import (
    EVAL_SEED,
    file_links,
    is_training_seed,
    simulator_links,
    trace_links,
)
from ml.eval.forecast import evaluate_links, mae_ratio, print_report
from ml.eval.traces import EVAL_MODES, evaluate_traces, format_traces
from ml.forecast.context import CONTEXT_MODES
from ml.forecast.features import DEFAULT_FEATURE_MODE, MODES
from ml.forecast.quantiles import HORIZONS, QUANTILES
from ml.serving.registry import (
    current_version,
    list_versions,
    promote_version,
    read_metadata,
    rollback,
)
from ml.train import TrainConfig, train
from simulator.profiles import PROFILE_NAMES
from stream.core.flags import add_settings_flags, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model subcommands: train, evaluate, evaluate-traces, models."""
    for add in (_register_train, _register_evaluate, _register_evaluate_traces, _register_models):
        add(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the LSTM forecaster and the DDQN policy, register (and promote) a version",
        description="Train the LSTM, then the DDQN with the LSTM as forecaster, score the held-out split, "
        "and register a new version in the model directory (current unless --no-promote). "
        "Progress goes to stderr; the new version name to stdout.",
    )
    p.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        default="mixed",
        help="simulator profile when no --data is given (default mixed)",
    )
    p.add_argument(
        "--data",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE.jsonl",
        help="train on telemetry files instead (split by link 70/15/15)",
    )
    p.add_argument("--quick", action="store_true", help="small data and few epochs (<= 60 s; demo and tests)")
    p.add_argument("--out", type=Path, default=None, help="registry directory (default: settings model_dir)")
    p.add_argument("--no-promote", action="store_true", help="register without making the version current")
    p.add_argument("--seed", type=int, default=0, help="training seed (simulator seeds 1000*S+1..3)")
    p.add_argument("--qnet-variant", choices=("mlp", "bn"), default="mlp", help="Q-network variant")
    p.add_argument(
        "--feature-mode",
        choices=MODES,
        default=None,
        help="feature transform (default: the shipped one, see docs/models.md)",
    )
    p.add_argument(
        "--loss",
        choices=("mae", "mse", "huber"),
        default=None,
        help="point-head LSTM training loss (default mae; the original design's mse is worse on real traces)",
    )
    p.add_argument(
        "--head",
        choices=("quantile", "point"),
        default="quantile",
        help="quantile (default): quantiles of the mean bandwidth over each horizon, pinball loss, calibrated, "
        "naive fallback per profile and horizon; point: the design's single next-step output",
    )
    p.add_argument(
        "--horizons", type=int, nargs="+", default=list(HORIZONS), metavar="H", help="steps (default 1 10 60)"
    )
    p.add_argument(
        "--quantiles",
        type=float,
        nargs="+",
        default=list(QUANTILES),
        metavar="Q",
        help="quantile levels, odd count, symmetric around 0.5 (default 0.1 0.5 0.9)",
    )
    add_settings_flags(p, "--model-dir")
    p.set_defaults(func=_train)


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="score the LSTM and the naive baselines on held-out data",
        description="Score the LSTM of a registered version and 4 baselines (last value, EWMA, harmonic mean "
        "of 5, moving average of 10) on every state whose next step is known. Data: telemetry files "
        "(--data), a real-trace dataset (--dataset, all its traces: use evaluate-traces for a trained/tested "
        "split) or synthetic held-out links (--profile/--seed, default seed 7 is never used for training).",
    )
    src = e.add_mutually_exclusive_group()
    src.add_argument("--data", nargs="+", type=Path, metavar="FILE.jsonl", help="telemetry files")
    src.add_argument("--dataset", help="a dataset of ../shared/data/traces")
    e.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        default="mixed",
        help="synthetic profile (default mixed)",
    )
    e.add_argument("--seed", type=int, default=None, help="synthetic seed (default 7)")
    e.add_argument("--links", type=int, default=32, help="synthetic links (default 32)")
    e.add_argument("--steps", type=int, default=600, help="synthetic steps per link (default 600)")
    e.add_argument("--model", default=None, metavar="VERSION", help="model version (default current)")
    e.add_argument("--traces-root", type=Path, default=None, help="traces directory (default ../shared/data/traces)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_settings_flags(e, "--model-dir")
    e.set_defaults(func=_evaluate)


def _register_evaluate_traces(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "evaluate-traces",
        help="per real-trace dataset: score the LSTM on 30%% of the traces held out, trained per dataset, "
        "pooled or leave-one-out",
        description="For each dataset, split whole traces 70/30 with a fixed seed (esnet-backbone-2018: "
        "every series by time, 60/10/30), fit preprocessing, the naive forecasters and an LSTM on the "
        "training part (15%% of those traces for early stopping, calibration and the fallback choice), "
        "and score LSTM, served forecast and naive forecasters on the test part: h=1 point metrics at the "
        "top level, and per horizon (1, 10, 60) MAE, pinball loss, interval score and coverage under "
        "'horizons'. Progress on stderr; about 10 min for all six datasets on 2 cores.",
    )
    t.add_argument(
        "--head",
        choices=("quantile", "point"),
        default="quantile",
        help="quantile: multi-horizon quantile LSTM with calibration and fallback (default); "
        "point: the design's single-output LSTM",
    )
    t.add_argument("--datasets", nargs="+", default=None, help="dataset names (default: all)")
    t.add_argument("--quick", action="store_true", help="tiny LSTM runs (smoke test, not a result)")
    t.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    t.add_argument("--traces-root", type=Path, default=None, help="traces directory (default ../shared/data/traces)")
    t.add_argument(
        "--mode",
        choices=EVAL_MODES,
        default="per-dataset",
        help="how the model scored on each dataset is trained: per-dataset (its own training split, default), "
        "pooled (one model on the training splits of all datasets, as one fleet deployment runs it), "
        "leave-one-out (per dataset, a model on the other datasets only: links of a kind it never saw)",
    )
    t.add_argument(
        "--context",
        choices=CONTEXT_MODES,
        default="none",
        help="the LSTM's second input: none (the 10-step window only, default) or long (per-link long-memory "
        "EWMAs and volatility, ml/forecast/context.py)",
    )
    t.add_argument(
        "--lstm-seconds",
        type=float,
        default=None,
        help="time budget of each LSTM (default 60 s per dataset, 120 s for a model on several datasets)",
    )
    t.add_argument("--json", action="store_true", help="print JSON instead of tables")
    t.set_defaults(func=_evaluate_traces)


def _register_models(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser(
        "models",
        help="list, show, promote and roll back registered model versions",
        description="Manage the model registry (BWP_MODEL_DIR).",
    )
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = msub.add_parser("list", help="versions, newest last; * marks the current one")
    add_settings_flags(ml, "--model-dir")
    ml.set_defaults(func=_models_list)
    ms = msub.add_parser("show", help="print a version's metadata JSON")
    ms.add_argument("version", nargs="?", default=None, help="version (default current)")
    add_settings_flags(ms, "--model-dir")
    ms.set_defaults(func=_models_show)
    mp = msub.add_parser("promote", help="make a version current")
    mp.add_argument("version")
    add_settings_flags(mp, "--model-dir")
    mp.set_defaults(func=_models_promote)
    mr = msub.add_parser("rollback", help="make the previously current version current again")
    add_settings_flags(mr, "--model-dir")
    mr.set_defaults(func=_models_rollback)


def _model_dir(args: argparse.Namespace) -> Path:
    return Path(settings_from_args(args).model_dir)


def _train(args: argparse.Namespace) -> int:

    out = args.out or _model_dir(args)
    cfg = TrainConfig(
        profile=args.profile,
        data=list(args.data),
        quick=args.quick,
        model_dir=out,
        promote=not args.no_promote,
        seed=args.seed,
        qnet_variant=args.qnet_variant,
        feature_mode=args.feature_mode or DEFAULT_FEATURE_MODE,
        lstm_loss=args.loss,
        head=args.head,
        horizons=tuple(args.horizons),
        quantiles=tuple(args.quantiles),
    )
    version = train(cfg)
    print(version)
    return 0


def _evaluate(args: argparse.Namespace) -> int:

    model_dir = _model_dir(args)
    if args.data:
        links, title = file_links(args.data), f"files {', '.join(map(str, args.data))}"
    elif args.dataset:
        links, title = trace_links(args.dataset, args.traces_root), f"dataset {args.dataset} (all traces)"
    else:
        seed = EVAL_SEED if args.seed is None else args.seed
        if is_training_seed(seed):
            print(
                f"bwp evaluate: warning: simulator seed {seed} is a training seed (1, 2 or 3 mod 1000) "
                "of some `bwp train --seed` run; the numbers may not be held-out",
                file=sys.stderr,
            )
        links = simulator_links(args.profile, args.links, args.steps, seed)
        title = f"synthetic {args.profile}, seed {seed}, {args.links} links x {args.steps} steps"
    rep = evaluate_links(model_dir, args.model, links)
    print_report(rep, args.json, f"model {rep['version']}, {title}")
    return 0


def _evaluate_traces(args: argparse.Namespace) -> int:
    res = evaluate_traces(
        args.datasets, quick=args.quick, seed=args.seed, root=args.traces_root, mode=args.mode, head=args.head,
        context=args.context, lstm_seconds=args.lstm_seconds,
    )  # fmt: skip
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_traces(res))
    return 0


def _models_list(args: argparse.Namespace) -> int:

    d = _model_dir(args)
    versions = list_versions(d)
    if not versions:
        print(f"no model versions in {d} (train one with `bwp train`)")
        return 0
    cur = current_version(d)
    print(f"{'':2}{'version':<24}{'created':<27}{'data':<28}{'LSTM MAE/best baseline':>24}")
    for v in versions:
        try:
            meta = read_metadata(d, v)
        except Exception as exc:  # a broken version must not hide the others
            print(f"{'*' if v == cur else ' '} {v:<24}(unreadable metadata: {exc})")
            continue
        td = meta.get("training_data", {})
        data = td.get("profile") if td.get("kind") == "simulator" else td.get("kind", "?")
        data = f"{data}{' quick' if meta.get('quick') else ''}"
        ratio = ""
        try:
            r = mae_ratio(meta["metrics"]["forecast_test"]["predictors"])
            ratio = "" if r is None else f"{r:.3f}"
        except (KeyError, TypeError):
            pass
        print(f"{'*' if v == cur else ' '} {v:<24}{meta.get('created', '?'):<27}{data:<28}{ratio:>24}")
    return 0


def _models_show(args: argparse.Namespace) -> int:

    print(json.dumps(read_metadata(_model_dir(args), args.version), indent=2, sort_keys=True))
    return 0


def _models_promote(args: argparse.Namespace) -> int:

    promote_version(_model_dir(args), args.version)
    print(f"current model is now {args.version}")
    return 0


def _models_rollback(args: argparse.Namespace) -> int:

    v = rollback(_model_dir(args))
    print(f"rolled back: current model is now {v}")
    return 0
