"""Wire records: one frozen dataclass per topic, with explicit ``to_bytes`` / ``from_bytes``.

The JSON Schemas in ``stream/core/schemas/`` are the public contract; tests check that
these classes accept exactly what the schemas accept. Decoding is hand-written (not
jsonschema) because it runs for every record on the hot path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

# Re-exported: the decisions record lives in stream.core.decision (this module grew past 400 lines).
from stream.core.decision import (
    COMPRESSION_HORIZON as COMPRESSION_HORIZON,
)
from stream.core.decision import (
    DECISION_SCHEMA_V1 as DECISION_SCHEMA_V1,
)
from stream.core.decision import (
    DECISION_SCHEMA_V2 as DECISION_SCHEMA_V2,
)
from stream.core.decision import (
    DECISION_SCHEMA_V3 as DECISION_SCHEMA_V3,
)
from stream.core.decision import (
    DECISION_SCHEMA_VERSION as DECISION_SCHEMA_VERSION,
)
from stream.core.decision import (
    DECISION_SCHEMA_VERSIONS as DECISION_SCHEMA_VERSIONS,
)
from stream.core.decision import (
    FORECAST_HORIZONS as FORECAST_HORIZONS,
)
from stream.core.decision import (
    FORECAST_SOURCES as FORECAST_SOURCES,
)
from stream.core.decision import (
    N_ACTIONS as N_ACTIONS,
)
from stream.core.decision import (
    POLICIES as POLICIES,
)
from stream.core.decision import (
    Decision as Decision,
)
from stream.core.decision import (
    Forecast as Forecast,
)
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


MAX_RECORD_BYTES = 16_384
MAX_BANDWIDTH_MBPS = 1.0e7  # 10 Tbit/s: anything above is a unit error, not a link
MAX_LATENCY_MS = 3.6e6  # one hour
MAX_INT64 = 2**63 - 1
_LINK_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

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


def dlq_headers(code: str, message: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead letter: error code, human message, and where the record came from."""
    return [
        (H_ERROR_CODE, code.encode()),
        (H_ERROR_MESSAGE, message[:1000].encode("utf-8", "replace")),
        (H_SOURCE_TOPIC, topic.encode()),
        (H_SOURCE_PARTITION, str(partition).encode()),
        (H_SOURCE_OFFSET, str(offset).encode()),
    ]
