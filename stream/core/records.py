"""Wire records: one frozen dataclass per topic, with explicit ``to_bytes`` / ``from_bytes``.

The JSON Schemas in ``stream/core/schemas/`` are the public contract; tests check that
these classes accept exactly what the schemas accept. Decoding is hand-written (not
jsonschema) because it runs for every record on the hot path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.core.errors import TelemetryDecodeError
from stream.core.routes import bad_name

#: Feature order of a window row: every model input uses exactly this order.
FEATURES: tuple[str, ...] = ("latency_ms", "bandwidth_mbps", "packet_loss", "reliability")
#: Column of each feature in a (..., 4) window array.
LAT, BW, LOSS, REL = (FEATURES.index(f) for f in ("latency_ms", "bandwidth_mbps", "packet_loss", "reliability"))
#: States per window (the design's (10, 4) input).
WINDOW = 10
PROFILES: tuple[str, ...] = ("datacenter", "internet")
IMPUTABLE: tuple[str, ...] = ("latency_ms", "packet_loss", "reliability")
DECISION_SCHEMA_V1 = 1
DECISION_SCHEMA_V2 = 2
#: The decisions schema version published unless ``BWP_DECISIONS_SCHEMA_VERSION`` says otherwise.
DECISION_SCHEMA_VERSION = DECISION_SCHEMA_V2
DECISION_SCHEMA_VERSIONS: tuple[int, ...] = (DECISION_SCHEMA_V1, DECISION_SCHEMA_V2)
FORECAST_SOURCES: tuple[str, ...] = ("lstm", "last_value", "ewma", "moving_average")
POLICIES: tuple[str, ...] = ("ddqn", "quantile_rule", "ewma_rule", "fixed", "predict_then_allocate")
#: Horizons (steps) of a full v2 forecast; only h=1 is required.
FORECAST_HORIZONS: tuple[int, ...] = (1, 10, 60)
#: A v2 forecast as a :class:`Decision` holds it: one ``(h, p10, p50, p90)`` per horizon, sorted by ``h``.
Forecast = tuple[tuple[int, float, float, float], ...]
N_ACTIONS = 10

MAX_RECORD_BYTES = 16_384
MAX_BANDWIDTH_MBPS = 1.0e7  # 10 Tbit/s: anything above is a unit error, not a link
MAX_LATENCY_MS = 3.6e6  # one hour
MAX_INT64 = 2**63 - 1
_LINK_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HORIZON = re.compile(r"[1-9][0-9]{0,3}")
_V1_KEYS = frozenset(
    ("schema_version", "link_id", "seq", "ts_ms", "predicted_bandwidth_mbps", "action", "allocation_pct",
     "reference_bandwidth_mbps", "allocated_bandwidth_mbps", "model_version", "decided_at_ms")
)  # fmt: skip
_V2_KEYS = _V1_KEYS | {"forecast", "safe_bandwidth_mbps", "forecast_source", "policy"}

# DLQ header names (bytes values, UTF-8).
H_ERROR_CODE = "bwp-error-code"
H_ERROR_MESSAGE = "bwp-error-message"
H_SOURCE_TOPIC = "bwp-source-topic"
H_SOURCE_PARTITION = "bwp-source-partition"
H_SOURCE_OFFSET = "bwp-source-offset"


def _num(obj: Mapping[str, Any], name: str, lo: float, hi: float) -> float:
    if name not in obj:
        raise TelemetryDecodeError("missing_field", f"field {name!r} is required, record has {sorted(obj)}")
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TelemetryDecodeError("wrong_type", f"{name} must be a number, got {type(v).__name__} {v!r:.40}")
    v = float(v)
    if not math.isfinite(v):
        raise TelemetryDecodeError("not_finite", f"{name} must be finite, got {v}")
    if not lo <= v <= hi:
        raise TelemetryDecodeError("out_of_range", f"{name} must be in [{lo:g}, {hi:g}], got {v:g}")
    return v


def _int(obj: Mapping[str, Any], name: str, lo: int) -> int:
    if name not in obj:
        raise TelemetryDecodeError("missing_field", f"field {name!r} is required, record has {sorted(obj)}")
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, int):
        # JSON "5.0" is a float in Python; accept integral floats written by some producers.
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            v = int(v)
        else:
            raise TelemetryDecodeError("wrong_type", f"{name} must be an integer, got {type(v).__name__} {v!r:.40}")
    if not lo <= v <= MAX_INT64:
        raise TelemetryDecodeError("out_of_range", f"{name} must be in [{lo}, 2^63-1], got {v}")
    return v


def _reject_constant(token: str) -> float:
    raise TelemetryDecodeError("not_finite", f"JSON numbers must be finite, got {token}")


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One state of one link (topic ``bwp.telemetry``, key = ``link_id``)."""

    link_id: str
    seq: int
    ts_ms: int
    latency_ms: float
    bandwidth_mbps: float
    packet_loss: float
    reliability: float
    profile: str | None = None
    imputed: tuple[str, ...] = field(default=())
    route_group: str | None = None  # links of one group are alternative paths (stream/core/routes.py)

    def features(self) -> tuple[float, float, float, float]:
        """The state as one window row, in :data:`FEATURES` order."""
        return (self.latency_ms, self.bandwidth_mbps, self.packet_loss, self.reliability)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (the telemetry schema's fields)."""
        # Built by hand: dataclasses.asdict deep-copies and costs ~10x more on the hot path.
        d: dict[str, Any] = {
            "link_id": self.link_id,
            "seq": self.seq,
            "ts_ms": self.ts_ms,
            "latency_ms": self.latency_ms,
            "bandwidth_mbps": self.bandwidth_mbps,
            "packet_loss": self.packet_loss,
            "reliability": self.reliability,
        }
        if self.profile is not None:
            d["profile"] = self.profile
        if self.imputed:
            d["imputed"] = list(self.imputed)
        if self.route_group is not None:
            d["route_group"] = self.route_group
        return d

    def to_bytes(self) -> bytes:
        """Compact JSON bytes, as published to the telemetry topic."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_dict(cls, obj: Any) -> Telemetry:
        """Validate a decoded JSON object; raises :class:`TelemetryDecodeError`."""
        if not isinstance(obj, dict):
            raise TelemetryDecodeError("not_object", f"record must be a JSON object, got {type(obj).__name__}")
        link_id, group = obj.get("link_id"), obj.get("route_group")
        if type(link_id) is not str or not _LINK_ID.fullmatch(link_id):
            bad_name("link_id", link_id, obj)  # raises, with the reason's code
        if group is not None and (type(group) is not str or not _LINK_ID.fullmatch(group)):
            bad_name("route_group", group, obj)
        profile = obj.get("profile")
        if profile is not None and profile not in PROFILES:
            raise TelemetryDecodeError("unknown_profile", f"profile must be one of {PROFILES}, got {profile!r:.40}")
        imputed = obj.get("imputed", ())
        if not isinstance(imputed, (list, tuple)) or any(f not in IMPUTABLE for f in imputed):
            raise TelemetryDecodeError("wrong_type", f"imputed must be a list of {IMPUTABLE}, got {imputed!r:.60}")
        return cls(
            link_id=link_id,
            seq=_int(obj, "seq", 0),
            ts_ms=_int(obj, "ts_ms", 0),
            latency_ms=_num(obj, "latency_ms", 0.0, MAX_LATENCY_MS),
            bandwidth_mbps=_num(obj, "bandwidth_mbps", 0.0, MAX_BANDWIDTH_MBPS),
            packet_loss=_num(obj, "packet_loss", 0.0, 1.0),
            reliability=_num(obj, "reliability", 0.0, 1.0),
            profile=profile,
            imputed=tuple(imputed),
            route_group=group,
        )

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Telemetry:
        """Decode and validate one Kafka value; raises :class:`TelemetryDecodeError`."""
        if not raw:
            raise TelemetryDecodeError("empty", "record value is empty")
        if len(raw) > MAX_RECORD_BYTES:
            raise TelemetryDecodeError("too_large", f"record must be <= {MAX_RECORD_BYTES} bytes, got {len(raw)}")
        try:
            # Fast path (orjson parses a record in about a sixth of json.loads's time). It
            # accepts no more than json.loads does; whatever it rejects takes the path
            # below, which names the exact reason (NaN vs bad UTF-8 vs syntax, ...).
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            return cls.from_dict(obj)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TelemetryDecodeError("invalid_utf8", f"record must be UTF-8 JSON: {exc}") from exc
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except TelemetryDecodeError:
            raise
        except (ValueError, RecursionError) as exc:
            raise TelemetryDecodeError("invalid_json", f"record must be JSON: {exc}") from exc
        return cls.from_dict(obj)


def _quantiles(h: Any, p10: Any, p50: Any, p90: Any, clamp: bool = False) -> tuple[float, float, float]:
    """``(p10, p50, p90)`` checked: finite numbers (negatives raised to 0 when ``clamp``), 0 <= p10 <= p50 <= p90."""
    ok = (float, int)  # bool is not a number here
    if not (type(p10) in ok and type(p50) in ok and type(p90) in ok and math.isfinite(p10 + p50 + p90)):
        for name, v in (("p10", p10), ("p50", p50), ("p90", p90)):
            if type(v) not in ok or not math.isfinite(v):
                raise ValueError(f'forecast["{h}"].{name} must be a finite number >= 0, got {v!r:.40}')
    if clamp:
        p10, p50, p90 = max(0.0, p10), max(0.0, p50), max(0.0, p90)
    if not 0.0 <= p10 <= p50 <= p90:
        raise ValueError(f'forecast["{h}"] must have 0 <= p10 <= p50 <= p90, got p10={p10:g}, p50={p50:g}, p90={p90:g}')
    return float(p10), float(p50), float(p90)


def _horizon(key: Any) -> int:
    if type(key) is int and 1 <= key <= 9999:
        return key
    if isinstance(key, str) and _HORIZON.fullmatch(key):
        return int(key)
    raise ValueError(f"forecast horizon must be 1..9999 steps (key pattern ^[1-9][0-9]{{0,3}}$), got {key!r:.20}")


def _sorted_forecast(rows: list[tuple[int, float, float, float]]) -> Forecast:
    rows.sort()
    hs = [r[0] for r in rows]
    if len(set(hs)) != len(hs) or not hs or hs[0] != 1:
        raise ValueError(f"forecast must hold horizon 1 and each horizon once, got horizons {hs}")
    return tuple(rows)


def _make_forecast(value: Mapping[int | str, Sequence[float]] | Iterable[Sequence[float]]) -> Forecast:
    items = value.items() if isinstance(value, Mapping) else ((r[0], r[1:]) for r in value)
    out = []
    for k, q in items:
        if len(q) != 3:
            raise ValueError(f"forecast entries must be h: (p10, p50, p90) or (h, p10, p50, p90), got {k!r}: {q!r:.80}")
        h = _horizon(k)
        out.append((h, *_quantiles(h, float(q[0]), float(q[1]), float(q[2]), clamp=True)))
    return _sorted_forecast(out)


def _decode_v2(obj: dict[str, Any]) -> dict[str, Any]:
    """The v2 fields of a decoded v2 record, checked, as :class:`Decision` keyword arguments."""
    fc = obj["forecast"]
    if not isinstance(fc, dict):
        raise ValueError(f"decision forecast must be an object keyed by horizon, got {type(fc).__name__}")
    rows = []
    for k, q in fc.items():
        h = _horizon(k)
        if not isinstance(q, dict) or set(q) != {"p10", "p50", "p90"}:
            raise ValueError(f'forecast["{k}"] must be an object of exactly p10, p50, p90, got {q!r:.80}')
        rows.append((h, *_quantiles(k, q["p10"], q["p50"], q["p90"])))
    safe = obj["safe_bandwidth_mbps"]
    if isinstance(safe, bool) or not isinstance(safe, (int, float)) or not (math.isfinite(safe) and safe >= 0):
        raise ValueError(f"safe_bandwidth_mbps must be a finite number >= 0, got {safe!r:.40}")
    for name, allowed in (("forecast_source", FORECAST_SOURCES), ("policy", POLICIES)):
        if obj[name] not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {obj[name]!r:.40}")
    return {"forecast": _sorted_forecast(rows), "safe_bandwidth_mbps": float(safe)}


@dataclass(frozen=True, slots=True)
class Decision:
    """One allocation decision (topic ``bwp.decisions``, key = ``link_id``). See docs/wire.md.

    The v2 fields are ``None`` on a v1 decision. ``forecast`` is a :data:`Forecast`: a tuple of
    ``(h, p10, p50, p90)`` sorted by horizon ``h`` (steps), e.g. ``((1, 9.0, 10.0, 11.0), (10, ...))``;
    it is written as ``{"1": {"p10": 9.0, "p50": 10.0, "p90": 11.0}, ...}``.
    """

    link_id: str
    seq: int
    ts_ms: int
    predicted_bandwidth_mbps: float
    action: int
    allocation_pct: int
    reference_bandwidth_mbps: float
    allocated_bandwidth_mbps: float
    model_version: str
    decided_at_ms: int
    profile: str | None = None
    schema_version: int = DECISION_SCHEMA_VERSION
    forecast: Forecast | None = None
    safe_bandwidth_mbps: float | None = None
    forecast_source: str | None = None
    policy: str | None = None

    @classmethod
    def make(
        cls, link_id: str, seq: int, ts_ms: int, predicted_bandwidth_mbps: float, action: int,
        reference_bandwidth_mbps: float, model_version: str, decided_at_ms: int, profile: str | None = None, *,
        forecast: Mapping[int | str, Sequence[float]] | Iterable[Sequence[float]] | None = None,
        safe_bandwidth_mbps: float | None = None, forecast_source: str | None = None, policy: str | None = None,
        schema_version: int = DECISION_SCHEMA_VERSION,
    ) -> Decision:  # fmt: skip
        """Build a decision, deriving ``allocation_pct`` and ``allocated_bandwidth_mbps`` from ``action``.

        ``forecast`` maps a horizon (int or decimal string) to ``(p10, p50, p90)``, or is an
        iterable of ``(h, p10, p50, p90)``; it must hold h=1. Quantiles below 0 are raised to 0,
        like the prediction; crossing or non-finite ones raise :class:`ValueError`. A v2 field
        left out takes the degenerate form of a point-forecast model: forecast
        ``{1: (p, p, p)}`` with ``p`` = the prediction, safe = the h=1 p10, source ``lstm``,
        policy ``ddqn``. With ``schema_version=1`` the v2 fields are dropped (``None``), so a
        decision always equals what :meth:`from_bytes` reads back from its :meth:`to_bytes`.
        """
        if not 0 <= action < N_ACTIONS:
            raise ValueError(f"action must be in 0..{N_ACTIONS - 1}, got {action}")
        if schema_version not in DECISION_SCHEMA_VERSIONS:
            raise ValueError(f"schema_version must be one of {DECISION_SCHEMA_VERSIONS}, got {schema_version!r}")
        pct = (action + 1) * 10
        pred = max(0.0, float(predicted_bandwidth_mbps))
        fc: Forecast | None = None
        safe = source = pol = None
        if schema_version != DECISION_SCHEMA_V1:
            fc = ((1, pred, pred, pred),) if forecast is None else _make_forecast(forecast)
            safe = fc[0][1] if safe_bandwidth_mbps is None else max(float(safe_bandwidth_mbps), 0.0)  # NaN stays NaN
            if not math.isfinite(safe):
                raise ValueError(f"safe_bandwidth_mbps must be a finite number >= 0, got {safe_bandwidth_mbps}")
            source = "lstm" if forecast_source is None else forecast_source
            pol = "ddqn" if policy is None else policy
            if source not in FORECAST_SOURCES or pol not in POLICIES:
                raise ValueError(f"forecast_source must be in {FORECAST_SOURCES} and policy in {POLICIES}, "
                                 f"got {source!r:.40} and {pol!r:.40}")  # fmt: skip
        ref = float(reference_bandwidth_mbps)
        return cls(
            link_id=link_id, seq=seq, ts_ms=ts_ms, predicted_bandwidth_mbps=pred, action=int(action),
            allocation_pct=pct, reference_bandwidth_mbps=ref, allocated_bandwidth_mbps=ref * pct / 100.0,
            model_version=model_version, decided_at_ms=decided_at_ms, profile=profile, schema_version=schema_version,
            forecast=fc, safe_bandwidth_mbps=safe, forecast_source=source, policy=pol,
        )  # fmt: skip

    def quantiles(self, h: int = 1) -> tuple[float, float, float] | None:
        """``(p10, p50, p90)`` of horizon ``h``; ``None`` on a v1 decision or a horizon not forecast."""
        return next(((a, b, c) for k, a, b, c in self.forecast or () if k == h), None)

    def to_dict(self) -> dict[str, Any]:
        """The decision as a JSON-ready dict: exactly the v1 fields when ``schema_version == 1``, else v2's."""
        d: dict[str, Any] = {
            "schema_version": self.schema_version,
            "link_id": self.link_id,
            "seq": self.seq,
            "ts_ms": self.ts_ms,
            "predicted_bandwidth_mbps": self.predicted_bandwidth_mbps,
            "action": self.action,
            "allocation_pct": self.allocation_pct,
            "reference_bandwidth_mbps": self.reference_bandwidth_mbps,
            "allocated_bandwidth_mbps": self.allocated_bandwidth_mbps,
            "model_version": self.model_version,
            "decided_at_ms": self.decided_at_ms,
        }
        if self.schema_version != DECISION_SCHEMA_V1:
            if self.schema_version != DECISION_SCHEMA_V2:
                raise ValueError(
                    f"schema_version must be one of {DECISION_SCHEMA_VERSIONS}, got {self.schema_version!r}"
                )
            if self.forecast is None or self.safe_bandwidth_mbps is None or not self.forecast_source or not self.policy:
                raise ValueError(f"decision {self.link_id}/{self.seq} is v2 but lacks forecast, safe_bandwidth_mbps, "
                                 "forecast_source or policy (build it with Decision.make)")  # fmt: skip
            d["forecast"] = {str(h): {"p10": a, "p50": b, "p90": c} for h, a, b, c in self.forecast}
            d["safe_bandwidth_mbps"] = self.safe_bandwidth_mbps
            d["forecast_source"] = self.forecast_source
            d["policy"] = self.policy
        if self.profile is not None:
            d["profile"] = self.profile
        return d

    def to_bytes(self) -> bytes:
        """Compact JSON bytes, as published to the decisions topic; refuses non-finite numbers."""
        d = self.to_dict()
        nums = [self.predicted_bandwidth_mbps, self.reference_bandwidth_mbps, self.allocated_bandwidth_mbps]
        if self.schema_version != DECISION_SCHEMA_V1:
            nums.append(d["safe_bandwidth_mbps"])
            for _, a, b, c in self.forecast or ():
                nums += (a, b, c)
        for v in nums:
            if not math.isfinite(v):  # orjson would write null; the schema wants a number
                raise ValueError(f"decision {self.link_id}/{self.seq} has a non-finite number: {v}")
        return orjson.dumps(d)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Decision:
        """Parse a published v1 or v2 decision; raises :class:`ValueError` saying what was expected and what came."""
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError(f"decision must be a JSON object, got {type(obj).__name__}")
        version = obj.get("schema_version")
        if type(version) is not int or version not in DECISION_SCHEMA_VERSIONS:
            raise ValueError(f"decision schema_version must be one of {DECISION_SCHEMA_VERSIONS}, got {version!r:.40}")
        keys = _V1_KEYS if version == DECISION_SCHEMA_V1 else _V2_KEYS
        missing, extra = sorted(keys - obj.keys()), sorted(obj.keys() - keys - {"profile"})
        if missing or extra:
            raise ValueError(f"decision v{version} needs its schema's fields: missing {missing}, unexpected {extra}")
        return cls(**obj) if version == DECISION_SCHEMA_V1 else cls(**{**obj, **_decode_v2(obj)})


def dlq_headers(code: str, message: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead letter: error code, human message, and where the record came from."""
    return [
        (H_ERROR_CODE, code.encode()),
        (H_ERROR_MESSAGE, message[:1000].encode("utf-8", "replace")),
        (H_SOURCE_TOPIC, topic.encode()),
        (H_SOURCE_PARTITION, str(partition).encode()),
        (H_SOURCE_OFFSET, str(offset).encode()),
    ]
