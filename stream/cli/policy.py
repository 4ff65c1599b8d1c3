"""``bwp evaluate-policy`` and ``bwp report``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ml.eval.report import write_html_report
from ml.policy.observation import last_value_forecast, layout_of_width
from ml.policy.rules import EwmaRule, QuantileRule, tune_ewma_rule, tune_quantile_rule
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


def _load_policy(args: argparse.Namespace, model_dir: Path, episodes_profile: str) -> tuple[Any, Any, str, str, Any]:
    """(forecaster, policy, model label, forecaster label, predictor or None) for the command line's choice.

    A registry model serves the episodes with the calibration, fallback and policy of their profile
    (as the worker does with each link's), the all-profiles ones when that is not one profile."""
    # gymnasium (through ml.policy.env): only policy evaluation needs it
    from ml.policy.evaluation import (
        load_qnet,
        predictor_policy,
        qnet_policy,
    )

    profile = episodes_profile if episodes_profile in PROFILES else None
    if args.qnet:
        configure_tf()
        qnet = load_qnet(args.qnet)
        try:
            layout = layout_of_width(int(qnet.input_shape[-1]))
        except ValueError as exc:
            raise ModelError(f"{args.qnet}: {exc}") from exc
        policy = qnet_policy(qnet)
        try:
            pred = load_predictor(model_dir, args.model)
        except (ModelError, ImportError):
            if args.model or layout != "point":
                raise
            return last_value_forecast, policy, str(args.qnet), "last_value", None
        forecaster = predictor_policy(pred, profile, layout)[0]
        return forecaster, policy, str(args.qnet), f"lstm:{pred.version}", pred

    pred = load_predictor(model_dir, args.model)
    forecaster, policy = predictor_policy(pred, profile)
    return forecaster, policy, pred.version, f"lstm:{pred.version}", pred


def _policy_meta(pred: Any) -> dict[str, Any]:
    """``metadata["policy"]`` of the loaded model (where ``bwp train`` stores the tuned rules), or {}."""
    meta = getattr(pred, "metadata", None) or {}
    pol = meta.get("policy") if isinstance(meta, dict) else None
    return pol if isinstance(pol, dict) else {}


def _rules(args: argparse.Namespace, pred: Any, profile: str, notes: list[str]) -> tuple[Any, Any, dict[str, str]]:
    """The EWMA rule and the (quantile rule, quantile_fn) pair to score, and where their parameters came from.

    Parameters come from the model's ``metadata["policy"]``; missing ones are tuned on the
    training-seed simulator links of the profile, never on the evaluated episodes. The quantile
    rule needs a predictor with ``quantile(windows, tau)``; without one it is left out (a note says so).
    """
    from ml.policy.evaluation import tuning_series  # gymnasium (through ml.policy.env): only this command needs it

    pol = _policy_meta(pred)
    tune_profile = profile if profile in PROFILE_NAMES else args.profile  # files: their profile, if known
    cache: list[tuple[list[Any], str]] = []

    def train_series() -> tuple[list[Any], str]:
        if not cache:  # simulated once, shared by both rules
            cache.append(tuning_series(tune_profile, args.seed))
        return cache[0]

    def load(key: str, cls: Any, tune: Any) -> tuple[Any, str]:
        try:
            return cls.from_json(pol[key]), "model metadata"
        except (KeyError, TypeError, ValueError, AttributeError):  # missing, or null (a point model's quantile_rule)
            series, label = train_series()
            notes.append(f"{key}: no tuned parameters in the model's metadata; tuned on {label}")
            return tune(series), label

    ewma, ewma_src = load("ewma_rule", EwmaRule, tune_ewma_rule)
    sources = {"ewma_rule": ewma_src}
    if not callable(getattr(pred, "quantile", None)):
        notes.append("quantile_rule: omitted (the model has no quantile forecaster: predictor.quantile)")
        return ewma, None, sources
    one = profile if profile in PROFILES else None  # the served quantiles of the episodes' profile

    def qfn(windows: Any, tau: float) -> Any:
        return pred.quantile(windows, tau, None if one is None else [one] * len(windows))

    qrule, sources["quantile_rule"] = load("quantile_rule", QuantileRule, lambda ser: tune_quantile_rule(ser, qfn))
    return ewma, (qrule, qfn), sources


def cmd_evaluate_policy(args: argparse.Namespace) -> int:
    """Handler of ``bwp evaluate-policy``."""
    # gymnasium (through ml.policy.env): only policy evaluation needs it
    from ml.policy.evaluation import (
        evaluate_series,
        heldout_seed,
        heldout_series,
        qnet_policy,
        series_from_jsonl,
    )

    settings = settings_from_args(args)
    if args.episodes < 1 or args.episode_len < 1:
        print("bwp evaluate-policy: --episodes and --episode-len must be >= 1", file=sys.stderr)
        return 2
    if args.data:
        series, profile = series_from_jsonl(args.data, args.episode_len)
        source: dict[str, Any] = {"kind": "files", "files": [str(p) for p in args.data]}
    else:
        series = heldout_series(args.profile, args.episodes, args.seed, args.episode_len)
        profile = args.profile
        source = {"kind": "simulator", "simulator_seed": heldout_seed(args.seed), "links": f"0..{args.episodes - 1}"}
    forecaster, policy, model_label, fc_label, pred = _load_policy(args, Path(settings.model_dir), profile)
    notes: list[str] = []
    ewma_rule, quantile_rule, rule_sources = _rules(args, pred, profile, notes)
    for note in notes:
        print(f"bwp evaluate-policy: {note}", file=sys.stderr)
    res = evaluate_series(series, forecaster, policy, ewma_rule=ewma_rule, quantile_rule=quantile_rule)
    for key, src in rule_sources.items():
        res[key]["tuned_on"] = src
    serving = (getattr(pred, "metadata", None) or {}).get("policy", {}).get("serving") if pred is not None else None
    qnet_alone = None
    if serving and set(serving.values()) != {"ddqn"} and not args.qnet:
        # "ddqn" above scores the serving path, which follows ``serving``; the Q-network alone, for comparison
        qnet_alone = evaluate_series(series, forecaster, qnet_policy(pred.qnet))["mean_reward"]["ddqn"]
        notes.append(f"ddqn: scores the serving path, whose policy per profile is {serving}; "
                     f"qnet_alone scores the Q-network by itself")  # fmt: skip
        print(f"bwp evaluate-policy: {notes[-1]}", file=sys.stderr)
    out = {
        "profile": profile,
        "episodes": res["episodes"],
        "episode_len": args.episode_len,
        "decisions": res["decisions"],
        "mean_reward": res["mean_reward"],
        "normalized_score": res["normalized_score"],
        "normalized_score_predict_then_allocate": res["normalized_score_predict_then_allocate"],
        "normalized_score_ewma_rule": res["normalized_score_ewma_rule"],
        "normalized_score_quantile_rule": res["normalized_score_quantile_rule"],
        "best_fixed_pct": res["best_fixed_pct"],
        "fixed": res["fixed"],
        "action_histogram": res["action_histogram"],
        "collapsed": res["collapsed"],
        "ewma_rule": res["ewma_rule"],
        "quantile_rule": res["quantile_rule"],
        "serving_policy": serving,
        "served_by": (serving.get(profile, serving.get("*")) if serving else None),
        "qnet_alone_mean_reward": qnet_alone,
        "notes": notes,
        "model": model_label,
        "forecaster": fc_label,
        "source": source,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"policy evaluation: profile {profile}, {out['episodes']} episodes, {out['decisions']} decisions, model {model_label}"
    )
    _print_table(out)
    return 0


def _print_table(out: dict[str, Any]) -> None:
    """The human-readable form of ``bwp evaluate-policy``'s result."""
    m = out["mean_reward"]
    extras = {"best_fixed": f" (fixed {out['best_fixed_pct']} %)"}
    if out["collapsed"]:
        extras["ddqn"] = " (collapsed: one action >= 95 % of the decisions)"
    for key in ("ewma_rule", "quantile_rule"):
        r = out[key]
        if r is not None:
            params = ", ".join(f"{p} {r[p]:g}" for p in ("alpha", "k", "tau") if p in r)
            extras[key] = f" ({params}; from {r['tuned_on']})"
    for k in ("ddqn", "ewma_rule", "quantile_rule", "fixed_50", "best_fixed", "predict_then_allocate", "oracle"):
        if m.get(k) is not None:
            ns = out["normalized_score"] if k == "ddqn" else out.get(f"normalized_score_{k}")
            norm = f", normalized {ns:.3f}" if ns is not None else ""
            print(f"  {k:<22} mean reward {m[k]:.4f}{norm}{extras.get(k, '')}")
    print("  normalized score = (R - R_fixed50) / (R_oracle - R_fixed50)")


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
