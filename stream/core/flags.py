"""The settings flags shared by every ``bwp`` command (``--bootstrap``, ``--redis-url``, ...)
and how they override ``BWP_*`` settings.
"""

from __future__ import annotations

import argparse
from typing import Any

from stream.core.settings import Settings, load_settings

_SETTINGS_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    (
        "--bootstrap",
        "kafka_bootstrap",
        str,
        "Kafka bootstrap servers (env BWP_KAFKA_BOOTSTRAP, default 127.0.0.1:9092)",
    ),
    ("--redis-url", "redis_url", str, "Redis URL (env BWP_REDIS_URL, default redis://127.0.0.1:6379/0)"),
    ("--telemetry-topic", "telemetry_topic", str, "telemetry topic (env BWP_TELEMETRY_TOPIC, default bwp.telemetry)"),
    ("--decisions-topic", "decisions_topic", str, "decisions topic (env BWP_DECISIONS_TOPIC, default bwp.decisions)"),
    ("--dlq-topic", "dlq_topic", str, "dead-letter topic (env BWP_DLQ_TOPIC, default bwp.telemetry.dlq)"),
    ("--routes-topic", "routes_topic", str, "route rankings topic (env BWP_ROUTES_TOPIC, default bwp.routes)"),
    ("--model-dir", "model_dir", str, "model registry directory (env BWP_MODEL_DIR, default models)"),
    ("--state-dir", "state_dir", str, "embedded stack state directory (env BWP_STATE_DIR, default .bwp)"),
    (
        "--aci-gamma",
        "aci_gamma",
        float,
        "step size of the per-link online calibration of h=1 p10/p90, 0 = off (env BWP_ACI_GAMMA, default 0.005)",
    ),
)


def add_settings_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the CLI flags that override settings. ``names`` picks a subset (by flag); none = all."""
    group = parser.add_argument_group("settings (flags override BWP_* env vars)")
    for flag, dest, typ, help_ in _SETTINGS_FLAGS:
        if names and flag not in names:
            continue
        group.add_argument(flag, dest=f"setting_{dest}", type=typ, default=None, help=help_)


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from env, overridden by whatever ``--flag`` the user gave (and ``extra``)."""
    overrides = {k[len("setting_") :]: v for k, v in vars(args).items() if k.startswith("setting_")}
    overrides.update(extra)
    return load_settings(**overrides)
