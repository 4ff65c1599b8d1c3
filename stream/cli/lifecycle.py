"""Model-lifecycle commands: ``bwp record``, ``bwp replay``, ``bwp backtest``, ``bwp evaluate-routes``, ``bwp retrain``.

See docs/lifecycle.md. Heavy imports (confluent-kafka, TensorFlow) happen inside
the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys

from stream.core.flags import add_settings_flags, settings_from_args
from stream.core.settings import namespaced
from stream.kafka.admin import create_topics
from stream.lifecycle.backtest import backtest
from stream.lifecycle.drift import RetrainFlag
from stream.lifecycle.recorder import Recorder
from stream.lifecycle.replay import parse_speed, parse_time, replay
from stream.lifecycle.retrain import run_retrain
from stream.lifecycle.retrain_data import RetrainConfig, parse_duration
from stream.lifecycle.routes_eval import evaluate_routes, format_table
from stream.pipeline.aci import AciParams


def register(sub: argparse._SubParsersAction) -> None:
    """Add record, replay, backtest, evaluate-routes and retrain."""
    _register_record(sub)
    _register_replay(sub)
    _register_backtest(sub)
    _register_evaluate_routes(sub)
    _register_retrain(sub)


# --- bwp record ---------------------------------------------------------------------------
def _register_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="record the telemetry topic to hourly gzip JSON-lines files (restart-safe)",
        description="Consume the telemetry topic in its own consumer group and write every record to "
        "DIR/YYYY-MM-DD/HH.part-NNNN.jsonl.gz (hour of ts_ms, UTC) with a manifest of offsets per part. "
        "Offsets are committed only after a part is fsynced and renamed into place, so a restart neither "
        "loses nor duplicates records. Invalid records go to HH.part-NNNN.invalid.jsonl.gz. "
        "Stops cleanly on SIGTERM / Ctrl-C.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--group", default="bwp-recorder", help="consumer group (default bwp-recorder)")
    p.add_argument("--max-records", type=int, default=None, help="stop after this many records")
    p.add_argument("--idle-exit", type=float, default=None, metavar="S", help="stop after S seconds without records")
    p.add_argument("--flush-interval", type=float, default=30.0, metavar="S", help="seconds between parts (default 30)")
    p.add_argument("--flush-records", type=int, default=50_000, help="records per part at most (default 50000)")
    p.add_argument(
        "--compact-grace", type=float, default=10.0, metavar="MIN",
        help="merge an hour's parts into one file once records MIN minutes past its end arrived (default 10)",
    )  # fmt: skip
    p.add_argument("--no-compact", action="store_true", help="keep every part (no hourly compaction)")
    p.add_argument("--namespace", default=None, help="record the topics of this replay namespace")
    add_settings_flags(p, "--bootstrap", "--telemetry-topic")
    p.set_defaults(func=_record)


def _record(args: argparse.Namespace) -> int:

    settings = namespaced(settings_from_args(args), args.namespace)
    rec = Recorder(
        settings,
        args.out,
        group=args.group,
        max_records=args.max_records,
        idle_exit_s=args.idle_exit,
        flush_records=args.flush_records,
        flush_interval_s=args.flush_interval,
        compact_grace_ms=None if args.no_compact else int(args.compact_grace * 60_000),
    )
    stats = rec.run()
    print(json.dumps({"out": str(args.out), "topic": settings.telemetry_topic, **stats.to_dict()}))
    return 0


# --- bwp replay ---------------------------------------------------------------------------
def _register_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="publish recorded / imported telemetry files back into Kafka",
        description="Publish telemetry files (folders are searched recursively for *.jsonl and *.jsonl.gz) "
        "sorted by (ts_ms, seq), key = link_id, keeping the recorded timing scaled by --speed. With "
        "--namespace NAME the records go to NAME.<telemetry topic> (created if missing); run "
        "`bwp worker --namespace NAME` to process them without touching live windows or decisions.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="telemetry files or folders")
    p.add_argument("--speed", default="1", help="1 = real time, 10 = ten times faster, max = no waiting")
    p.add_argument("--from", dest="t_from", default=None, help="first ts (ISO 8601 or epoch ms), inclusive")
    p.add_argument("--to", dest="t_to", default=None, help="last ts (ISO 8601 or epoch ms), inclusive")
    p.add_argument("--namespace", default=None, help="publish to <NAME>.<topic> instead of the live topics")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_settings_flags(p, "--bootstrap", "--telemetry-topic", "--decisions-topic", "--dlq-topic")
    p.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:

    base = settings_from_args(args)
    settings = namespaced(base, args.namespace)
    speed = parse_speed(args.speed)
    if args.namespace:
        s = settings
        create_topics(s, (s.telemetry_topic, s.decisions_topic, s.dlq_topic, s.routes_topic), s.partitions)
    stats = replay(settings, args.paths, speed=speed, t_from=parse_time(args.t_from), t_to=parse_time(args.t_to))
    if args.json:
        print(json.dumps({"topic": settings.telemetry_topic, "namespace": args.namespace, **stats.to_dict()}))
    return 0


# --- bwp backtest -------------------------------------------------------------------------
def _register_backtest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backtest",
        help="run the worker's window + model code over telemetry files, no Kafka or Redis",
        description="Deterministic offline run of the worker's own validation, window and model code over "
        "telemetry files (in-memory window store with the Redis script's semantics). Prints the "
        "`bwp evaluate` JSON plus the policy's mean reward; --decisions-out writes every decision.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="telemetry files or folders")
    p.add_argument("--model", default=None, metavar="VERSION", help="model version (default: current)")
    p.add_argument("--decisions-out", default=None, metavar="FILE", help="write decisions as JSON lines")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    add_settings_flags(p, "--model-dir", "--aci-gamma")
    p.set_defaults(func=_backtest)


def _backtest(args: argparse.Namespace) -> int:

    settings = settings_from_args(args)
    report = backtest(
        args.paths, settings.model_dir, version=args.model, decisions_out=args.decisions_out,
        aci=AciParams(settings.aci_gamma),
    )  # fmt: skip
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(json.dumps(report, indent=2, sort_keys=True))
    return 0


# --- bwp evaluate-routes ------------------------------------------------------------------
def _register_evaluate_routes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-routes",
        help="score route-group rankings on telemetry files (records with route_group)",
        description="Run the worker's pipeline over telemetry files (as bwp backtest) and, for every route "
        "group and step with two or more members decided, rank the members by the route score "
        "(docs/wire.md, Routes). Reports how often the top link has the best realised mean bandwidth over the "
        "next --horizon steps (hit rate) and the regret in Mbit/s against that oracle, next to the same for "
        "'pick the best last value'.",
        epilog="example: bwp simulate --links 40 --steps 600 --profile internet --route-groups 8 "
        "--start-ms 0 --out /tmp/rg.jsonl && bwp evaluate-routes --telemetry /tmp/rg.jsonl",
    )
    p.add_argument("--telemetry", nargs="+", required=True, metavar="FILE", help="telemetry files or folders")
    p.add_argument("--model", default=None, metavar="VERSION", help="model version (default: current)")
    p.add_argument("--horizon", type=int, default=10, help="steps of the realised mean (default 10)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    add_settings_flags(p, "--model-dir")
    p.set_defaults(func=_evaluate_routes)


def _evaluate_routes(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    print(f"bwp evaluate-routes: running the pipeline over {len(args.telemetry)} path(s)...", file=sys.stderr)
    rep = evaluate_routes(args.telemetry, settings.model_dir, version=args.model, horizon=args.horizon)
    print(json.dumps(rep, sort_keys=True) if args.json else format_table(rep))
    return 0


# --- bwp retrain --------------------------------------------------------------------------
def _register_retrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrain",
        help="train a candidate on recent recorded telemetry; promote it only if it beats the current model",
        description="Train a candidate on the last --window of recorded telemetry (the newest --holdout held "
        "out), evaluate candidate and current model on the held-out data, and promote the candidate only "
        "if its MAE beats the current model's and every naive baseline's by --margin (relative). The "
        "report goes to <model_dir>/retrain-reports/<timestamp>.json and stdout. Exit 0 whether promoted "
        "or not (unless --fail-if-not-promoted), 1 when not promoted with that flag, 2 on errors "
        "(no data, training failed, another retrain running).",
    )
    p.add_argument("--data", required=True, nargs="+", metavar="DIR", help="recorded telemetry (files or folders)")
    p.add_argument("--window", default="14d", help="training window before the newest record (default 14d)")
    p.add_argument("--holdout", default="1d", help="newest span held out for the gate (default 1d)")
    p.add_argument("--margin", type=float, default=0.02, help="relative MAE margin the candidate must win by")
    p.add_argument("--half-life", default="3d", help="recency weighting: weight halves every this much age")
    p.add_argument(
        "--max-records", type=int, default=5_000_000,
        help="read about this many records at most: whole files are thinned evenly in time (default 5000000, 0 = all)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny training run (seconds): tests and demos")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--fail-if-not-promoted", action="store_true", help="exit 1 when the candidate is not promoted")
    p.add_argument("--ignore-flag", action="store_true", help="do not read/clear the retrain-requested flag")
    p.add_argument(
        "--only-if-requested", action="store_true",
        help="do nothing (exit 0) unless the retrain-requested flag is set (for a frequent cron line)",
    )  # fmt: skip
    add_settings_flags(p, "--model-dir", "--redis-url")
    p.set_defaults(func=_retrain)


def _retrain(args: argparse.Namespace) -> int:

    settings = settings_from_args(args)
    if args.only_if_requested:
        flag = RetrainFlag.from_settings(settings)
        try:
            requested = flag.read()
        finally:
            flag.redis.close()
        if requested is None:
            print(json.dumps({"skipped": True, "reason": "no retrain requested"}))
            return 0
    cfg = RetrainConfig(
        data=[str(p) for p in args.data],
        model_dir=settings.model_dir,
        window_ms=parse_duration(args.window),
        holdout_ms=parse_duration(args.holdout),
        margin=args.margin,
        half_life_ms=parse_duration(args.half_life),
        max_records=args.max_records or None,
        quick=args.quick,
        seed=args.seed,
    )
    report = run_retrain(cfg, settings=None if args.ignore_flag else settings)
    print(json.dumps(report, indent=2, sort_keys=True, default=str))
    promoted = report["decision"]["promote"]
    cur = report["current"]["version"]
    what = f"promoted {report['candidate']['version']}" if promoted else f"not promoted (current: {cur or 'none'})"
    print(f"bwp retrain: {what}: {report['decision']['reason']}", file=sys.stderr)
    return 1 if (args.fail_if_not_promoted and not promoted) else 0
