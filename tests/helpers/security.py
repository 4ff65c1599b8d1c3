"""Helpers of the settings and security tests (tests/stream/kafka/): the secrets and a
complete SASL_SSL environment."""

from __future__ import annotations

from pathlib import Path

# Distinctive, so a grep for it cannot match anything by accident.
SECRET = "Zq8-not-a-real-pw-71x"
REDIS_SECRET = "Rd5-not-a-real-pw-33k"


def sasl_ssl_env(pki: dict[str, Path]) -> dict[str, str]:
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
