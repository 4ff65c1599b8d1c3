"""Kafka security settings translated for the two Python Kafka clients bwp uses.

:class:`stream.core.settings.Settings` already validates the security configuration and
builds the librdkafka (confluent-kafka) config and the Redis keyword arguments. This
module builds the same configuration for Faust (``faust.App(..., **faust_broker_kwargs(s))``)
and for aiokafka producers/consumers (``AIOKafkaProducer(..., **aiokafka_kwargs(s))``).

Secrets leave their :class:`pydantic.SecretStr` only here, at the last moment, and the
objects returned are never logged by bwp (``faust.SASLCredentials.__repr__`` shows the
username only).
"""

from __future__ import annotations

import ssl
from typing import Any

from stream.core.errors import ConfigError
from stream.core.settings import Settings


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for Kafka, or None when the protocol is not SSL/SASL_SSL.

    Server certificates are verified against ``BWP_KAFKA_SSL_CAFILE`` (system CAs when
    unset); ``BWP_KAFKA_SSL_CERTFILE``/``BWP_KAFKA_SSL_KEYFILE`` add a client
    certificate for mutual TLS.
    """
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"BWP_KAFKA_SSL_CAFILE={cafile} is not a usable PEM CA bundle: {exc}") from None
    if settings.kafka_ssl_certfile is not None:
        try:
            ctx.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile))
        except (ssl.SSLError, OSError) as exc:
            # The exception text can quote file paths but never key material.
            raise ConfigError(
                "BWP_KAFKA_SSL_CERTFILE/BWP_KAFKA_SSL_KEYFILE "
                f"({settings.kafka_ssl_certfile}, {settings.kafka_ssl_keyfile}) are not a matching PEM "
                f"certificate and key: {exc}"
            ) from None
    return ctx


def _sasl_password(settings: Settings) -> str | None:
    return settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None


def faust_broker_url(settings: Settings) -> str:
    """Faust's ``broker=`` value: ``kafka://host1:port1;host2:port2``."""
    hosts = [h.strip() for h in settings.kafka_bootstrap.split(",") if h.strip()]
    if not hosts:
        raise ConfigError("BWP_KAFKA_BOOTSTRAP is empty; expected host:port[,host:port...]")
    return "kafka://" + ";".join(hosts)


def faust_broker_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: ``broker`` and, when secured, ``broker_credentials``.

    PLAINTEXT gives no credentials; SSL gives :class:`faust.SSLCredentials`; SASL_* gives
    :class:`faust.SASLCredentials` (with an SSL context for SASL_SSL, which is what makes
    Faust pick SASL_SSL over SASL_PLAINTEXT).
    """
    import faust  # Faust: only the worker's Kafka intake needs it

    kw: dict[str, Any] = {"broker": faust_broker_url(settings)}
    proto = settings.kafka_security_protocol
    ctx = kafka_ssl_context(settings)
    if proto == "SSL":
        assert ctx is not None
        kw["broker_credentials"] = faust.SSLCredentials(ctx)
    elif proto in ("SASL_PLAINTEXT", "SASL_SSL"):
        kw["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=_sasl_password(settings),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ctx,
        )
    return kw


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``aiokafka.AIOKafkaProducer``/``AIOKafkaConsumer``, bootstrap included."""
    kw: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    ctx = kafka_ssl_context(settings)
    if ctx is not None:
        kw["ssl_context"] = ctx
    if settings.kafka_security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kw["sasl_plain_username"] = settings.kafka_sasl_username
        kw["sasl_plain_password"] = _sasl_password(settings)
    return kw
