"""Settings from env and flags, Kafka/Redis security wiring, and secrets never leaking."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import _SETTINGS_FLAGS, add_settings_flags, build_parser, settings_from_args
from stream.errors import ConfigError
from stream.security import aiokafka_kwargs, faust_broker_kwargs, faust_broker_url, kafka_ssl_context
from stream.settings import Settings, load_settings, redact_url
from stream.settings_doc import BEGIN, DOC, END, render_table

# Distinctive, so a grep for it cannot match anything by accident.
SECRET = "Zq8-not-a-real-pw-71x"
REDIS_SECRET = "Rd5-not-a-real-pw-33k"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BWP_* from the developer's shell leaks into these tests."""
    for k in list(os.environ):
        if k.startswith("BWP_"):
            monkeypatch.delenv(k)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a client certificate/key signed by it (PEM files)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*cmd: str) -> None:
        subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bwp-test-ca")
    run("req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=bwp-test-client")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.pem", "-days", "2")  # fmt: skip
    run("req", *ec, "-keyout", "other.key", "-out", "other.csr", "-subj", "/CN=other")
    (d / "garbage.pem").write_text("this is not a certificate\n")
    return {p.stem if p.suffix == ".pem" else p.name: p for p in d.iterdir()}


def _sasl_ssl_env(pki: dict[str, Path]) -> dict[str, str]:
    return {
        "BWP_KAFKA_BOOTSTRAP": "k1.example:9093,k2.example:9094",
        "BWP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "BWP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "BWP_KAFKA_SASL_USERNAME": "bwp-worker",
        "BWP_KAFKA_SASL_PASSWORD": SECRET,
        "BWP_KAFKA_SSL_CAFILE": str(pki["ca"]),
        "BWP_KAFKA_SSL_CERTFILE": str(pki["client"]),
        "BWP_KAFKA_SSL_KEYFILE": str(pki["client.key"]),
        "BWP_REDIS_URL": "rediss://redis.example:6380/0",  # db 0: valid with BWP_REDIS_CLUSTER too
        "BWP_REDIS_PASSWORD": REDIS_SECRET,
        "BWP_REDIS_SSL_CAFILE": str(pki["ca"]),
    }


# --- every setting has a working env var ----------------------------------------------------
def _env_values(pki: dict[str, Path]) -> dict[str, tuple[str, object]]:
    """field -> (env string, expected parsed value), all non-default, consistent together."""
    sec = _sasl_ssl_env(pki)
    return {
        "kafka_bootstrap": (sec["BWP_KAFKA_BOOTSTRAP"], sec["BWP_KAFKA_BOOTSTRAP"]),
        "telemetry_topic": ("x.tel", "x.tel"),
        "decisions_topic": ("x.dec", "x.dec"),
        "dlq_topic": ("x.dlq", "x.dlq"),
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
    }.get(dest, ("env-value", "flag-value"))
    monkeypatch.setenv(f"BWP_{dest.upper()}", from_env)
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    assert str(getattr(settings_from_args(parser.parse_args([])), dest)) == from_env
    assert str(getattr(settings_from_args(parser.parse_args([flag, from_flag])), dest)) == from_flag


# --- SASL_SSL reaches every client ---------------------------------------------------------
def test_sasl_ssl_reaches_confluent_and_redis(pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in _sasl_ssl_env(pki).items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    cfg = s.confluent_config()
    assert cfg["bootstrap.servers"] == "k1.example:9093,k2.example:9094"
    assert cfg["security.protocol"] == "SASL_SSL"
    assert (cfg["sasl.mechanism"], cfg["sasl.username"], cfg["sasl.password"]) == ("SCRAM-SHA-512", "bwp-worker", SECRET)
    assert cfg["ssl.ca.location"] == str(pki["ca"])
    assert (cfg["ssl.certificate.location"], cfg["ssl.key.location"]) == (str(pki["client"]), str(pki["client.key"]))
    # librdkafka accepts the config (it validates keys and values at construction).
    from confluent_kafka import Producer

    Producer(cfg)

    kw = s.redis_kwargs()
    assert kw == {"password": REDIS_SECRET, "ssl_ca_certs": str(pki["ca"])}
    import redis

    client = redis.Redis.from_url(s.redis_url, **kw)  # builds the pool, does not connect
    ckw = client.connection_pool.connection_kwargs
    assert ckw["password"] == REDIS_SECRET and ckw["ssl_ca_certs"] == str(pki["ca"])
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    client.close()


def _check_tls_context(ctx: ssl.SSLContext | None) -> None:
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in ctx.get_ca_certs()]
    assert {"commonName": "bwp-test-ca"} in subjects


def test_sasl_ssl_reaches_aiokafka(pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in _sasl_ssl_env(pki).items():
        monkeypatch.setenv(k, v)
    kw = aiokafka_kwargs(load_settings())
    assert kw["security_protocol"] == "SASL_SSL"
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "bwp-worker",
        SECRET,
    )
    _check_tls_context(kw["ssl_context"])

    async def build() -> dict[str, object]:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**kw)  # validates the combination; connects only on start()
        try:
            return dict(vars(producer.client))
        finally:
            await producer.stop()

    client = asyncio.run(build())
    assert client["_security_protocol"] == "SASL_SSL" and client["_sasl_plain_password"] == SECRET
    assert client["_ssl_context"] is kw["ssl_context"]


def test_sasl_ssl_reaches_faust(pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    for k, v in _sasl_ssl_env(pki).items():
        monkeypatch.setenv(k, v)
    kw = faust_broker_kwargs(load_settings())
    assert kw["broker"] == "kafka://k1.example:9093;k2.example:9094"
    app = faust.App("bwp-security-test", **kw)  # no connection until the worker starts
    assert [str(u) for u in app.conf.broker] == ["kafka://k1.example:9093", "kafka://k2.example:9094"]
    # What Faust's aiokafka driver will hand to its consumers and producers:
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert (auth["sasl_mechanism"], auth["sasl_plain_username"], auth["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "bwp-worker",
        SECRET,
    )
    _check_tls_context(auth["ssl_context"])
    assert SECRET not in repr(app.conf.broker_credentials)


def test_worker_faust_app_gets_kafka_security(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The worker's real Faust app carries the SASL_SSL credentials and every broker."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stream.worker import make_app

    for k, v in _sasl_ssl_env(pki).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BWP_STATE_DIR", str(tmp_path / "state"))
    app = make_app(load_settings())
    assert sorted(str(u) for u in app.conf.broker) == ["kafka://k1.example:9093", "kafka://k2.example:9094"]
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert (auth["sasl_mechanism"], auth["sasl_plain_username"], auth["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "bwp-worker",
        SECRET,
    )
    _check_tls_context(auth["ssl_context"])


def test_ssl_only_and_plaintext(pki: dict[str, Path]) -> None:
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    s = load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"])
    kw = faust_broker_kwargs(s)
    assert isinstance(kw["broker_credentials"], faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(kw["broker_credentials"])
    assert auth["security_protocol"] == "SSL"
    _check_tls_context(auth["ssl_context"])
    a = aiokafka_kwargs(s)
    assert a["security_protocol"] == "SSL" and "sasl_mechanism" not in a
    _check_tls_context(a["ssl_context"])

    plain = load_settings()
    assert faust_broker_kwargs(plain) == {"broker": "kafka://127.0.0.1:9092"}
    assert aiokafka_kwargs(plain) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert kafka_ssl_context(plain) is None


def test_sasl_plaintext_has_no_tls() -> None:
    s = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET,
    )
    a = aiokafka_kwargs(s)
    assert a["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in a
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(faust_broker_kwargs(s)["broker_credentials"])
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None


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
            {"BWP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "BWP_KAFKA_SASL_USERNAME": "u",
             "BWP_KAFKA_SASL_PASSWORD": SECRET},
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


@pytest.mark.parametrize(
    "env,name",
    [
        ({"BWP_KAFKA_SSL_CAFILE": "garbage"}, "BWP_KAFKA_SSL_CAFILE"),
        ({"BWP_KAFKA_SSL_CERTFILE": "client", "BWP_KAFKA_SSL_KEYFILE": "other.key"}, "BWP_KAFKA_SSL_KEYFILE"),
    ],
)
def test_unusable_tls_files_are_config_errors(env: dict[str, str], name: str, pki: dict[str, Path]) -> None:
    s = load_settings(kafka_security_protocol="SSL", **{k[4:].lower(): pki[v] for k, v in env.items()})
    with pytest.raises(ConfigError, match=name):
        faust_broker_kwargs(s)
    with pytest.raises(ConfigError, match=name):
        aiokafka_kwargs(s)


def test_empty_bootstrap_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BWP_KAFKA_BOOTSTRAP"):
        faust_broker_url(load_settings(kafka_bootstrap=" , "))


# --- secrets never printed or logged -------------------------------------------------------
def test_secrets_absent_from_repr_str_logs_and_dumps(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    env = _sasl_ssl_env(pki)
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
    assert table == render_table(), "docs/settings.md is stale: run `.venv/bin/python -m stream.settings_doc`"
    for name in Settings.model_fields:
        assert f"`BWP_{name.upper()}`" in table
