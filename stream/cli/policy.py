"""``bwp evaluate-policy`` and ``bwp report``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ml.eval.report import write_html_report
from ml.policy.observation import last_value_forecast
from ml.serving.predictor import load_predictor
from ml.serving.runtime import configure_tf
from simulator.profiles import PROFILE_NAMES
from stream.core.errors import ModelError
from stream.core.flags import add_settings_flags, settings_from_args
from stream.core.records import PROFILES


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate-policy`` and ``report`` subcommands."""
    p = sub.add_parser(
        "evaluate-policy",
        help="score the DDQN allocation policy against fixed, predict-then-allocate and oracle baselines",
        description="Mean reward (docs/policy.md) of the DDQN policy and the baselines on held-out "
        "simulator episodes (a seed range never used for training) or on telemetry JSONL files. "
        "normalized_score = (R_ddqn - R_fixed50) / (R_oracle - R_fixed50).",
    )
    p.add_argument(
        "--profile",
        default="mixed",
        choices=PROFILE_NAMES,
        help="simulator profile (default mixed)",
    )
    p.add_argument("--episodes", type=int, default=20, help="held-out episodes = simulator links (default 20)")
    p.add_argument("--episode-len", type=int, default=200, help="decisions per episode (default 200)")
    p.add_argument("--seed", type=int, default=0, help="selects the held-out simulator seed (default 0)")
    p.add_argument("--model", default=None, metavar="VERSION", help="registry version (default: current)")
    p.add_argument(
        "--qnet",
        default=None,
        metavar="PATH",
        help="score this .keras Q-network instead of the registry's "
        "(forecasts from the registry's LSTM when there is one, else last value)",
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=None,
        metavar="FILE.jsonl",
        help="episodes from telemetry files instead of the simulator",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_settings_flags(p, "--model-dir")
    p.set_defaults(func=cmd_evaluate_policy)

    r = sub.add_parser(
        "report",
        help="write an HTML report with plots (forecasts, error CDFs, DDQN training, policy scores)",
        description="Writes DIR/index.html and PNG plots for a registered model version.",
    )
    r.add_argument("--out", required=True, type=Path, help="output directory")
    r.add_argument("--model", default=None, metavar="VERSION", help="registry version (default: current)")
    r.add_argument(
        "--profile",
        nargs="+",
        default=list(PROFILES),
        choices=PROFILE_NAMES,
        help="simulator profiles to evaluate on (default datacenter internet)",
    )
    r.add_argument("--links", type=int, default=8, help="held-out links per profile (default 8)")
    r.add_argument("--steps", type=int, default=300, help="steps per held-out link (default 300)")
    r.add_argument("--seed", type=int, default=0, help="held-out simulator seed selector (default 0)")
    add_settings_flags(r, "--model-dir")
    r.set_defaults(func=cmd_report)


def _load_policy(args: argparse.Namespace, model_dir: Path) -> tuple[Any, Any, str, str]:
    """(forecaster, policy, model label, forecaster label) for the command line's choice."""
    # gymnasium (through ml.policy.env): only policy evaluation needs it
    from ml.policy.evaluation import (
        load_qnet,
        predictor_policy,
        qnet_policy,
    )

    if args.qnet:
        configure_tf()
        policy = qnet_policy(load_qnet(args.qnet))
        try:
            pred = load_predictor(model_dir, args.model)
            return pred.forecast, policy, str(args.qnet), f"lstm:{pred.version}"
        except (ModelError, ImportError):
            if args.model:
                raise
            return last_value_forecast, policy, str(args.qnet), "last_value"

    pred = load_predictor(model_dir, args.model)
    forecaster, policy = predictor_policy(pred)
    return forecaster, policy, pred.version, f"lstm:{pred.version}"


def cmd_evaluate_policy(args: argparse.Namespace) -> int:
    """Handler of ``bwp evaluate-policy``."""
    # gymnasium (through ml.policy.env): only policy evaluation needs it
    from ml.policy.evaluation import (
        evaluate_series,
        heldout_seed,
        heldout_series,
        series_from_jsonl,
    )

    settings = settings_from_args(args)
    if args.episodes < 1 or args.episode_len < 1:
        print("bwp evaluate-policy: --episodes and --episode-len must be >= 1", file=sys.stderr)
        return 2
    forecaster, policy, model_label, fc_label = _load_policy(args, Path(settings.model_dir))
    if args.data:
        series, profile = series_from_jsonl(args.data, args.episode_len)
        source: dict[str, Any] = {"kind": "files", "files": [str(p) for p in args.data]}
    else:
        series = heldout_series(args.profile, args.episodes, args.seed, args.episode_len)
        profile = args.profile
        source = {"kind": "simulator", "simulator_seed": heldout_seed(args.seed), "links": f"0..{args.episodes - 1}"}
    res = evaluate_series(series, forecaster, policy)
    out = {
        "profile": profile,
        "episodes": res["episodes"],
        "episode_len": args.episode_len,
        "decisions": res["decisions"],
        "mean_reward": res["mean_reward"],
        "normalized_score": res["normalized_score"],
        "normalized_score_predict_then_allocate": res["normalized_score_predict_then_allocate"],
        "best_fixed_pct": res["best_fixed_pct"],
        "fixed": res["fixed"],
        "model": model_label,
        "forecaster": fc_label,
        "source": source,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    m = out["mean_reward"]
    print(
        f"policy evaluation: profile {profile}, {out['episodes']} episodes, {out['decisions']} decisions, model {model_label}"
    )
    for k in ("ddqn", "fixed_50", "best_fixed", "predict_then_allocate", "oracle"):
        extra = f" (fixed {out['best_fixed_pct']} %)" if k == "best_fixed" else ""
        print(f"  {k:<22} mean reward {m[k]:.4f}{extra}")
    ns = out["normalized_score"]
    print(
        f"  normalized score (ddqn vs fixed 50 % .. oracle): {ns:.3f}"
        if ns is not None
        else "  normalized score: undefined"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Handler of ``bwp report``."""
    settings = settings_from_args(args)
    path = write_html_report(
        args.out,
        Path(settings.model_dir),
        args.model,
        profiles=args.profile,
        links=args.links,
        steps=args.steps,
        seed=args.seed,
    )
    print(f"report written to {path}")
    return 0
