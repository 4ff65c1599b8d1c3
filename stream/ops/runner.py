"""The worker's composition root: settings, a model from the registry, the Kafka worker, hot
reload and live accuracy wired together; ``python -m stream.ops.runner`` runs it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ml.serving.predictor import load_predictor
from stream.core.errors import ConfigError
from stream.core.flags import add_settings_flags, settings_from_args
from stream.core.settings import Settings, namespaced
from stream.lifecycle.live import attach_live_accuracy
from stream.lifecycle.reload import attach_reloader
from stream.metrics.worker import WorkerMetrics
from stream.pipeline.app import KafkaWorker
from stream.pipeline.model import PredictorLike


# --- entry points -----------------------------------------------------------------------------
def load_registry_predictor(settings: Settings, version: str | None = None) -> PredictorLike:
    """The registered model (current, or ``version``); raises ModelError when there is none."""
    return load_predictor(settings.model_dir, version)


def _factory(spec: str) -> Callable[[], PredictorLike]:

    mod, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"--predictor-factory must be module:attribute, got {spec!r}")
    return getattr(importlib.import_module(mod), attr)


def run_worker(
    settings: Settings,
    model_version: str | None = None,
    metrics_port: int | None = None,
    predictor_factory: str | None = None,
    loglevel: str = "WARNING",
) -> int:
    """Load the model, serve /metrics, run the Faust worker until stopped."""
    if predictor_factory:
        # Test hook (python -m stream.ops.runner only): a deterministic stand-in model.
        predictor = _factory(predictor_factory)()
    else:
        predictor = load_registry_predictor(settings, model_version)
    metrics = WorkerMetrics.create()
    port = settings.metrics_port if metrics_port is None else metrics_port
    metrics.serve(port)
    w = KafkaWorker(settings, predictor, metrics)

    scorer = attach_live_accuracy(w.core, settings, metrics)  # registers the model served now
    if model_version is None and not predictor_factory:  # --model-version pins: no hot reload
        # a reloaded model's metadata (the live pinball's naive widening) reaches the scorer before it serves
        attach_reloader(w.app, w.core, settings, metrics, heap=w.heap, on_swap=[scorer.register])
    print(
        f"bwp worker: group {settings.consumer_group}, {settings.telemetry_topic} -> {settings.decisions_topic}, "
        f"model {predictor.version}" + (f", metrics on :{port}/metrics" if port else ""),
        file=sys.stderr,
        flush=True,
    )
    return w.run(loglevel)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stream.ops.runner``: like ``bwp worker`` plus the test-only ``--predictor-factory``."""
    p = argparse.ArgumentParser(prog="python -m stream.ops.runner")
    add_worker_flags(p)
    p.add_argument(
        "--predictor-factory", default=None, help="TESTS ONLY: module:callable returning a stand-in predictor"
    )
    add_settings_flags(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = namespaced(settings_from_args(args, **worker_overrides(args)), args.namespace)
    return run_worker(settings, args.model_version, args.metrics_port, args.predictor_factory)


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``bwp worker`` and ``python -m stream.ops.runner``."""
    p.add_argument(
        "--metrics-port", type=int, default=None, help="port of /metrics (0 = off; default BWP_METRICS_PORT=9464)"
    )
    p.add_argument("--model-version", default=None, help="model version to serve (default: the registry's current)")
    p.add_argument("--group", default=None, help="consumer group (env BWP_CONSUMER_GROUP, default bwp-worker)")
    p.add_argument("--batch-max", type=int, default=None, help="largest micro-batch (env BWP_BATCH_MAX, default 2048)")
    p.add_argument("--key-prefix", default=None, help="Redis key prefix (env BWP_KEY_PREFIX, default bwp)")
    p.add_argument(
        "--namespace", default=None,
        help="replay namespace NAME: topics NAME.<topic>, group NAME.<group>, Redis prefix NAME:<prefix> (see bwp replay)",
    )  # fmt: skip


def worker_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The worker flags' settings overrides (None = keep the setting)."""
    return {"consumer_group": args.group, "batch_max": args.batch_max, "key_prefix": args.key_prefix}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
