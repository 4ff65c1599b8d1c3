"""Settings from env and flags, incomplete configurations refused (by load_settings and by
`bwp worker`), secrets never printed or logged, and docs/settings.md."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli.main import build_parser
from stream.core.errors import ConfigError
from stream.core.flags import _SETTINGS_FLAGS, add_settings_flags, settings_from_args
from stream.core.settings import Settings, load_settings, redact_url
from stream.core.settings_doc import BEGIN, DOC, END, render_table
from stream.kafka.security import faust_broker_kwargs
from tests.helpers import REPO
from tests.helpers.security import REDIS_SECRET, SECRET, sasl_ssl_env

_SHIPPED_PROFILE = REPO / "stream" / "core" / "compression_profile.default.json"


# --- every setting has a working env var ----------------------------------------------------
def _env_values(pki: dict[str, Path]) -> dict[str, tuple[str, object]]:
    """field -> (env string, expected parsed value), all non-default, consistent together."""
    sec = sasl_ssl_env(pki)
    return {
        "kafka_bootstrap": (sec["BWP_KAFKA_BOOTSTRAP"], sec["BWP_KAFKA_BOOTSTRAP"]),
        "telemetry_topic": ("x.tel", "x.tel"),
        "decisions_schema_version": ("1", 1),
        "compression_profile": (str(_SHIPPED_PROFILE), _SHIPPED_PROFILE),
        "compression_horizon": ("60", 60),
        "decisions_topic": ("x.dec", "x.dec"),
        "dlq_topic": ("x.dlq", "x.dlq"),
        "routes_topic": ("x.routes", "x.routes"),
        "partitions": ("12", 12),
        "consumer_group": ("grp-7", "grp-7"),
        "kafka_security_protocol": ("SASL_SSL", "SASL_SSL"),
        "kafka_sasl_mechanism": ("SCRAM-SHA-512", "SCRAM-SHA-512"),
        "kafka_sasl_username": ("bwp-worker", "bwp-worker"),
        "kafka_sasl_password": (SECRET, SECRET),
        "kafka_ssl_cafile": (str(pki["ca"]), pki["ca"]),
        "kafka_ssl_certfile": (str(pki["client"]), pki["client"]),
        "kafka_ssl_keyfile": (str(pki["client.key"]), pki["client.key"]),
        "broker_rebalance_timeout_s": ("7.5", 7.5),
        "broker_session_timeout_s": ("11.5", 11.5),
        "redis_url": (sec["BWP_REDIS_URL"], sec["BWP_REDIS_URL"]),
        "redis_password": (REDIS_SECRET, REDIS_SECRET),
        "redis_ssl_cafile": (str(pki["ca"]), pki["ca"]),
        "redis_cluster": ("true", True),
        "window_ttl_s": ("3600", 3600),
        "key_prefix": ("bwpx", "bwpx"),
        "batch_max": ("64", 64),
        "fetch_max_wait_ms": ("250", 250),
        "pipeline_depth": ("3", 3),
        "gc_freeze": ("false", False),
        "metrics_port": ("9999", 9999),
        "serve_host": ("127.0.0.2", "127.0.0.2"),
        "serve_port": ("9501", 9501),
        "serve_token": ("tok-" + SECRET, "tok-" + SECRET),
        "serve_batching": ("0", False),
        "serve_batch_delay_ms": ("2.5", 2.5),
        "serve_max_batch": ("256", 256),
        "serve_max_windows": ("64", 64),
        "serve_max_body_bytes": ("65536", 65536),
        "aci_gamma": ("0.05", 0.05),
        "routes_interval_s": ("2.5", 2.5),
        "routes_stale_s": ("60", 60.0),
        "tf_xla": ("off", False),
        "tf_threads": ("1", 1),
        "state_dir": ("/tmp/bwp-state-x", Path("/tmp/bwp-state-x")),
        "model_dir": ("/tmp/bwp-models-x", Path("/tmp/bwp-models-x")),
        "embedded": ("never", "never"),
    }


def test_every_field_has_an_env_test_value(pki: dict[str, Path]) -> None:
    assert set(_env_values(pki)) == set(Settings.model_fields), "add new settings to _env_values"


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_env_var_sets_field(field: str, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    values = _env_values(pki)
    for name, (raw, _) in values.items():
        monkeypatch.setenv(f"BWP_{name.upper()}", raw)
    got = getattr(load_settings(), field)
    if hasattr(got, "get_secret_value"):
        got = got.get_secret_value()
    expected = values[field][1]
    assert got == expected
    assert got != Settings.model_fields[field].default


@pytest.mark.parametrize("flag,dest", [(f, d) for f, d, _, _ in _SETTINGS_FLAGS])
def test_cli_flag_overrides_env(flag: str, dest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env, from_flag = {
        "kafka_bootstrap": ("10.0.0.1:9092", "10.0.0.2:9092"),
        "redis_url": ("redis://10.0.0.1:6379/0", "redis://10.0.0.2:6379/1"),
        "aci_gamma": ("0.05", "0.2"),
    }.get(dest, ("env-value", "flag-value"))
    monkeypatch.setenv(f"BWP_{dest.upper()}", from_env)
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    assert str(getattr(settings_from_args(parser.parse_args([])), dest)) == from_env
    assert str(getattr(settings_from_args(parser.parse_args([flag, from_flag])), dest)) == from_flag


# --- incomplete configurations ---------------------------------------------------------------
INCOMPLETE = (
    "sasl-without-password",
    "sasl-without-username",
    "sasl-without-mechanism",
    "sasl-creds-on-plaintext",
    "cert-without-key",
    "missing-ca-file",
    "missing-redis-ca-file",
    "redis-url-scheme",
)


def _incomplete(pki: dict[str, Path]) -> dict[str, tuple[dict[str, str], list[str]]]:
    """case -> (env, strings the error must name)."""
    sasl = {"BWP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "BWP_KAFKA_SASL_MECHANISM": "PLAIN"}
    cases = [
        ("sasl-without-password", {**sasl, "BWP_KAFKA_SASL_USERNAME": "u"}, ["BWP_KAFKA_SASL_PASSWORD"]),
        ("sasl-without-username", {**sasl, "BWP_KAFKA_SASL_PASSWORD": SECRET}, ["BWP_KAFKA_SASL_USERNAME"]),
        (
            "sasl-without-mechanism",
            {
                "BWP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "BWP_KAFKA_SASL_USERNAME": "u",
                "BWP_KAFKA_SASL_PASSWORD": SECRET,
            },
            ["BWP_KAFKA_SASL_MECHANISM"],
        ),  # fmt: skip
        (
            "sasl-creds-on-plaintext",
            {"BWP_KAFKA_SASL_USERNAME": "u", "BWP_KAFKA_SASL_PASSWORD": SECRET},
            ["BWP_KAFKA_SECURITY_PROTOCOL"],
        ),
        (
            "cert-without-key",
            {"BWP_KAFKA_SECURITY_PROTOCOL": "SSL", "BWP_KAFKA_SSL_CERTFILE": str(pki["client"])},
            ["BWP_KAFKA_SSL_CERTFILE", "BWP_KAFKA_SSL_KEYFILE"],
        ),
        (
            "missing-ca-file",
            {"BWP_KAFKA_SECURITY_PROTOCOL": "SSL", "BWP_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            ["BWP_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem"],
        ),
        (
            "missing-redis-ca-file",
            {"BWP_REDIS_PASSWORD": REDIS_SECRET, "BWP_REDIS_SSL_CAFILE": "/nonexistent/rca.pem"},
            ["BWP_REDIS_SSL_CAFILE"],
        ),
        (
            "redis-url-scheme",
            {"BWP_REDIS_URL": f"http://:{REDIS_SECRET}@redis:6379/0"},
            ["BWP_REDIS_URL"],
        ),
    ]
    return {name: (env, must) for name, env, must in cases}


@pytest.mark.parametrize("case", INCOMPLETE)
def test_incomplete_config_is_refused_without_echoing_secrets(
    case: str, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, must_name = _incomplete(pki)[case]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    msg = str(info.value)
    for name in must_name:
        assert name in msg
    assert SECRET not in msg and REDIS_SECRET not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback with inputs


def test_incomplete_cases_listed(pki: dict[str, Path]) -> None:
    assert tuple(_incomplete(pki)) == INCOMPLETE


# --- secrets never printed or logged -------------------------------------------------------
def test_secrets_absent_from_repr_str_logs_and_dumps(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    env = sasl_ssl_env(pki)
    # A password written inside the URL as well: it must be redacted too.
    env["BWP_REDIS_URL"] = f"rediss://bwp:{REDIS_SECRET}@redis.example:6380/2"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    log = logging.getLogger("bwp.test.security")
    with caplog.at_level(logging.DEBUG):
        log.info("settings: %s", s)
        log.info("settings: %r", s)
        log.info("credentials: %r", faust_broker_kwargs(s))
        print(s, repr(s), s.model_dump_json())
    out = capsys.readouterr()
    text = "\n".join([caplog.text, out.out, out.err, repr(s), str(s), s.model_dump_json()])
    assert "bwp-worker" in text and "redis.example" in text  # the non-secret parts are there
    assert SECRET not in text and REDIS_SECRET not in text
    assert s.redis_url.endswith("@redis.example:6380/2") and REDIS_SECRET in s.redis_url  # value itself intact


@pytest.mark.parametrize(
    "url,expected",
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://user:pw@h:6380/2", "rediss://user:***@h:6380/2"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("unix:///tmp/r.sock?db=1", "unix:///tmp/r.sock?db=1"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# --- bwp worker refuses to start -------------------------------------------------------------
def _has_command(name: str) -> bool:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return name in sub.choices


@pytest.mark.parametrize(
    "env,name",
    [
        ({"BWP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "BWP_KAFKA_SASL_MECHANISM": "PLAIN",
          "BWP_KAFKA_SASL_USERNAME": "u"}, "BWP_KAFKA_SASL_PASSWORD"),
        ({"BWP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "BWP_KAFKA_SASL_MECHANISM": "PLAIN",
          "BWP_KAFKA_SASL_PASSWORD": SECRET}, "BWP_KAFKA_SASL_USERNAME"),
        ({"BWP_KAFKA_SECURITY_PROTOCOL": "SSL", "BWP_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
         "BWP_KAFKA_SSL_CAFILE"),
    ],
)  # fmt: skip
def test_worker_refuses_incomplete_security_config(env: dict[str, str], name: str, tmp_path: Path) -> None:
    if not _has_command("worker"):
        pytest.skip("`bwp worker` is not registered yet (stream/commands.py)")
    # Unroutable bootstrap/Redis: if the worker tried to connect it would hang, not exit 2.
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BWP_")},
        "BWP_KAFKA_BOOTSTRAP": "10.255.255.1:9092",
        "BWP_REDIS_URL": "redis://10.255.255.1:6379/0",
        "BWP_STATE_DIR": str(tmp_path / "state"),
        "BWP_MODEL_DIR": str(tmp_path / "models"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "worker", "--metrics-port", "0"],
        env=full, cwd=REPO, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert name in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


# --- docs/settings.md is the generated table ---------------------------------------------------
def test_settings_doc_is_current() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == render_table(), "docs/settings.md is stale: run `.venv/bin/python -m stream.core.settings_doc`"
    for name in Settings.model_fields:
        assert f"`BWP_{name.upper()}`" in table
