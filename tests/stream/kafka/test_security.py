"""Kafka/Redis security wiring: SASL_SSL, SSL and PLAINTEXT reach confluent-kafka, aiokafka,
Faust and redis; unusable TLS files and an empty bootstrap are config errors."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from stream.core.errors import ConfigError
from stream.core.settings import load_settings
from stream.kafka.security import aiokafka_kwargs, faust_broker_kwargs, faust_broker_url, kafka_ssl_context
from tests.helpers.security import REDIS_SECRET, SECRET, sasl_ssl_env


# --- SASL_SSL reaches every client ---------------------------------------------------------
def test_sasl_ssl_reaches_confluent_and_redis(pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in sasl_ssl_env(pki).items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    cfg = s.confluent_config()
    assert cfg["bootstrap.servers"] == "k1.example:9093,k2.example:9094"
    assert cfg["security.protocol"] == "SASL_SSL"
    assert (cfg["sasl.mechanism"], cfg["sasl.username"], cfg["sasl.password"]) == (
        "SCRAM-SHA-512",
        "bwp-worker",
        SECRET,
    )
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
    for k, v in sasl_ssl_env(pki).items():
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

    for k, v in sasl_ssl_env(pki).items():
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

    from stream.pipeline.app import make_app

    for k, v in sasl_ssl_env(pki).items():
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
