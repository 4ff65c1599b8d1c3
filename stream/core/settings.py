"""One frozen settings object, read from the environment once.

Every setting has an env var (``BWP_`` + upper-case field name), a type and a default,
documented in ``docs/settings.md``. CLI flags override env values by passing keyword
arguments to :func:`load_settings`. Secrets are :class:`pydantic.SecretStr` and are
never logged: ``repr(settings)`` shows ``'**********'``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.core.errors import ConfigError
from stream.core.records import COMPRESSION_HORIZON, DECISION_SCHEMA_VERSION, DECISION_SCHEMA_VERSIONS

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """All bwp configuration. Construct through :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix="BWP_", frozen=True, extra="forbid")

    # --- Kafka -----------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port.")
    telemetry_topic: str = Field("bwp.telemetry", description="Topic the probes / simulator publish telemetry to.")
    decisions_topic: str = Field("bwp.decisions", description="Topic the worker publishes decisions to.")
    dlq_topic: str = Field("bwp.telemetry.dlq", description="Dead-letter topic for invalid telemetry.")
    routes_topic: str = Field("bwp.routes", description="Topic the worker publishes route-group rankings to.")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions used when bwp creates the topics.")
    consumer_group: str = Field("bwp-worker", description="Consumer group (Faust app id) of the workers.")
    kafka_security_protocol: KafkaSecurityProtocol = Field("PLAINTEXT", description="Kafka security.protocol.")
    kafka_sasl_mechanism: SaslMechanism | None = Field(None, description="SASL mechanism when the protocol is SASL_*.")
    kafka_sasl_username: str | None = Field(None, description="SASL username.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for Kafka TLS.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate for Kafka mTLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client key for Kafka mTLS.")
    broker_rebalance_timeout_s: float = Field(6.0, gt=0, description="Faust broker_rebalance_timeout (seconds).")
    broker_session_timeout_s: float = Field(10.0, gt=0, description="Faust broker_session_timeout (seconds).")

    # --- Redis -----------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (redis:// or rediss:// for TLS).")
    redis_password: SecretStr | None = Field(None, description="Redis password (secret); overrides one in the URL.")
    redis_ssl_cafile: Path | None = Field(None, description="CA bundle for Redis TLS (rediss://).")
    redis_cluster: bool = Field(
        False,
        description="Redis is a Redis Cluster: connect with the cluster client (BWP_REDIS_URL names any one "
        "node, database 0). The embedded stack never starts one.",
    )  # fmt: skip
    window_ttl_s: int = Field(
        86_400,
        ge=1,
        description="TTL of a link's window (and of a route group's hash) in Redis, refreshed on every update.",
    )
    key_prefix: str = Field("bwp", description="Prefix of every Redis key (namespaces for replay use another).")

    # --- Worker ----------------------------------------------------------------------
    batch_max: int = Field(2048, ge=1, description="Largest micro-batch of records the worker processes at once.")
    fetch_max_wait_ms: int = Field(
        50, ge=1, le=60_000,
        description="Longest time the broker may hold a worker's fetch when no data is there (ms).",
    )  # fmt: skip
    pipeline_depth: int = Field(
        2, ge=1, le=8,
        description="Chunks a worker has between window update and confirmation (1 = no overlap of Redis and model).",
    )  # fmt: skip
    gc_freeze: bool = Field(
        True,
        description="Freeze the worker's heap after start-up, so full garbage collections (about 0.25 s "
        "pauses of every thread otherwise) skip the model and libraries.",
    )
    decisions_schema_version: int = Field(
        DECISION_SCHEMA_VERSION,
        description="Schema version of the decisions the worker publishes: 3 (quantile forecast and compression "
        "hint, docs/wire.md), or 2 / 1 for consumers that validate an older version strictly until they upgrade.",
    )
    compression_profile: Path | None = Field(
        None,
        description="Codec profile file (`bwp bench compression --out`) the v3 compression hint is chosen with; "
        "unset = the profile shipped with bwp (docs/compression.md).",
    )
    compression_horizon: int = Field(
        COMPRESSION_HORIZON, ge=1, le=9999,
        description="Forecast horizon (steps) whose p50 feeds the compression hint; a forecast without it "
        "uses its largest horizon (h=1 for a point model).",
    )  # fmt: skip
    aci_gamma: float = Field(
        0.005, ge=0, le=1,
        description="Step size of the per-link online calibration of the published h=1 p10/p90 (adaptive "
        "conformal inference, docs/models.md); 0 = off (the model's split-conformal quantiles as they are).",
    )  # fmt: skip
    routes_interval_s: float = Field(
        5.0, ge=0,
        description="Least time between two rankings of one route group whose order did not change (s).",
    )  # fmt: skip
    routes_stale_s: float = Field(
        30.0, gt=0, description="A route-group member without a new decided state for this long is dropped (s)."
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="Port of the worker's /metrics endpoint (0 = off).")

    # --- Prediction API (bwp serve, docs/integration.md) -----------------------------
    serve_host: str = Field("127.0.0.1", description="Address `bwp serve` binds to (loopback unless you mean it).")
    serve_port: int = Field(8501, ge=0, le=65535, description="Port of `bwp serve` (0 = a free one, printed).")
    serve_token: SecretStr | None = Field(
        None, description="Bearer token `/v1/*` requests must send (secret; unset = no authentication)."
    )
    serve_batching: bool = Field(
        True, description="Batch concurrent predict requests into one forward pass (off: one pass per request)."
    )
    serve_batch_delay_ms: float = Field(
        1.0, ge=0, le=1000, description="Longest wait for more requests before a batch runs (ms, batching on)."
    )
    serve_max_batch: int = Field(1024, ge=1, description="Most windows one batched forward pass takes.")
    serve_max_windows: int = Field(1024, ge=1, description="Most windows one predict request may carry (422 above).")
    serve_max_body_bytes: int = Field(
        4_194_304, ge=1024, description="Largest predict request body in bytes (413 above)."
    )

    # --- TensorFlow (serving and training) -------------------------------------------
    tf_xla: bool = Field(
        True, description="Run the serving graph's batch buckets of 16 and more XLA-compiled (docs/models.md)."
    )
    tf_threads: int = Field(
        0, ge=0, description="Threads TensorFlow may use; 0 = the CPU count capped at 2 (the cores are shared)."
    )

    # --- Files -----------------------------------------------------------------------
    state_dir: Path = Field(Path(".bwp"), description="Embedded stack logs, pid files and data.")
    model_dir: Path = Field(Path("models"), description="Model registry directory.")
    embedded: Literal["auto", "always", "never"] = Field(
        "auto", description="Start embedded broker/Redis: auto = only when the URLs point at loopback."
    )

    @field_validator("decisions_schema_version")
    @classmethod
    def _check_decisions_schema_version(cls, v: int) -> int:
        if v not in DECISION_SCHEMA_VERSIONS:
            raise ValueError(
                f"BWP_DECISIONS_SCHEMA_VERSION must be one of {', '.join(map(str, DECISION_SCHEMA_VERSIONS))} "
                f"(the decisions schema versions this release writes), got {v}"
            )
        return v

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        proto = self.kafka_security_protocol
        if proto.startswith("SASL"):
            missing = [
                n
                for n, v in (
                    ("BWP_KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                    ("BWP_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                    ("BWP_KAFKA_SASL_PASSWORD", self.kafka_sasl_password),
                )
                if not v
            ]
            if missing:
                raise ValueError(f"security protocol {proto} needs {', '.join(missing)}; they are not set")
        elif self.kafka_sasl_mechanism or self.kafka_sasl_username or self.kafka_sasl_password:
            raise ValueError(f"SASL credentials are set but BWP_KAFKA_SECURITY_PROTOCOL is {proto}, not SASL_*")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("BWP_KAFKA_SSL_CERTFILE and BWP_KAFKA_SSL_KEYFILE must be set together")
        for name in (
            "kafka_ssl_cafile",
            "kafka_ssl_certfile",
            "kafka_ssl_keyfile",
            "redis_ssl_cafile",
            "compression_profile",
        ):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                raise ValueError(f"BWP_{name.upper()} points at {p}, which is not a readable file")
        scheme = urlparse(self.redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"BWP_REDIS_URL must start with redis://, rediss:// or unix://, got {redact_url(self.redis_url)!r}"
            )
        if self.redis_cluster:
            db = urlparse(self.redis_url).path.strip("/") or "0"
            if scheme == "unix" or db != "0":
                raise ValueError(
                    "BWP_REDIS_CLUSTER needs a redis:// or rediss:// URL of a cluster node with database 0 "
                    f"(a cluster has no other), got {redact_url(self.redis_url)!r}"
                )
        return self

    @field_serializer("redis_url", when_used="json")
    def _redact_redis_url(self, url: str) -> str:
        # JSON dumps go to files and logs; like SecretStr, a URL password is masked there.
        return redact_url(url)

    def __repr_args__(self) -> Any:
        # A password embedded in BWP_REDIS_URL must not reach logs through repr()/str().
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name == "redis_url" and isinstance(value, str) else value)

    # --- derived -----------------------------------------------------------------------
    @property
    def kafka_is_local(self) -> bool:
        """True when every bootstrap server is on loopback."""
        return all(_is_loopback(hp.rsplit(":", 1)[0]) for hp in self.kafka_bootstrap.split(","))

    @property
    def redis_is_local(self) -> bool:
        """True when Redis is on loopback (or a unix socket)."""
        u = urlparse(self.redis_url)
        return u.scheme == "unix" or _is_loopback(u.hostname or "")

    def confluent_config(self, **extra: Any) -> dict[str, Any]:
        """Librdkafka config for confluent-kafka producers/consumers, security included."""
        cfg: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            cfg["sasl.mechanism"] = self.kafka_sasl_mechanism
            cfg["sasl.username"] = self.kafka_sasl_username
            cfg["sasl.password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
        if self.kafka_ssl_cafile:
            cfg["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            cfg["ssl.certificate.location"] = str(self.kafka_ssl_certfile)
            cfg["ssl.key.location"] = str(self.kafka_ssl_keyfile)
        cfg.update(extra)
        return cfg

    def redis_client(self, *, asyncio: bool = False, timeout_s: float = 5.0, connect_timeout_s: float = 2.0) -> Any:
        """A client for ``redis_url`` with password and TLS applied. The caller closes it.

        ``redis.Redis``, or ``redis.RedisCluster`` when ``redis_cluster`` (the ``redis.asyncio``
        classes when ``asyncio``). They connect on first use, except the synchronous
        ``RedisCluster``, which discovers the nodes while it is built and may raise there.
        """
        # redis-py: only code that talks to Redis
        import redis
        import redis.asyncio  # redis-py: only code that talks to Redis

        lib: Any = redis.asyncio if asyncio else redis
        cls = lib.RedisCluster if self.redis_cluster else lib.Redis
        return cls.from_url(
            self.redis_url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s, **self.redis_kwargs()
        )

    def redis_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis.from_url`` / ``redis.asyncio.from_url``."""
        kw: dict[str, Any] = {}
        if self.redis_password is not None:
            kw["password"] = self.redis_password.get_secret_value()
        if self.redis_ssl_cafile is not None:
            kw["ssl_ca_certs"] = str(self.redis_ssl_cafile)
        return kw


def redact_url(url: str) -> str:
    """``url`` with the password of its user-info replaced by ``***`` (for logs and errors)."""
    u = urlparse(url)
    if u.password is None:
        return url
    userinfo = (u.username or "") + ":***"
    host = u.netloc.rsplit("@", 1)[1]
    return u._replace(netloc=f"{userinfo}@{host}").geturl()


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: Any) -> Settings:
    """Read settings from env, with non-None ``overrides`` (CLI flags) taking priority.

    Raises :class:`ConfigError` with every problem listed, secrets never echoed.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid bwp settings: {problems}") from None


_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def namespaced(settings: Settings, name: str | None) -> Settings:
    """Settings whose topics, consumer group and Redis keys live in namespace ``name``.

    ``None`` or ``""`` returns ``settings`` unchanged. Topics become
    ``<name>.<topic>``, the group ``<name>.<group>``, the key prefix
    ``<name>:<prefix>`` (``replay1:bwp``).
    """
    if not name:
        return settings
    if not _NAMESPACE_RE.fullmatch(name):
        raise ConfigError(f"namespace must be 1..64 characters of [A-Za-z0-9_-], got {name!r}")
    return settings.model_copy(
        update={
            "telemetry_topic": f"{name}.{settings.telemetry_topic}",
            "decisions_topic": f"{name}.{settings.decisions_topic}",
            "dlq_topic": f"{name}.{settings.dlq_topic}",
            "routes_topic": f"{name}.{settings.routes_topic}",
            "consumer_group": f"{name}.{settings.consumer_group}",
            "key_prefix": f"{name}:{settings.key_prefix}",
        }
    )
