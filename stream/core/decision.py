"""The decisions record (topic ``bwp.decisions``): :class:`Decision`, schema versions 1, 2 and 3.

Kept apart from :mod:`stream.core.records` (which re-exports everything here) so that both
stay readable; docs/wire.md is the contract. Decoding is hand-written, as for telemetry.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from stream.core.compression import Compression, choose, default_profile, hint_bandwidth

DECISION_SCHEMA_V1 = 1
DECISION_SCHEMA_V2 = 2
DECISION_SCHEMA_V3 = 3
#: The decisions schema version published unless ``BWP_DECISIONS_SCHEMA_VERSION`` says otherwise.
DECISION_SCHEMA_VERSION = DECISION_SCHEMA_V3
DECISION_SCHEMA_VERSIONS: tuple[int, ...] = (DECISION_SCHEMA_V1, DECISION_SCHEMA_V2, DECISION_SCHEMA_V3)
#: Forecast horizon (steps) whose p50 feeds the compression hint unless ``BWP_COMPRESSION_HORIZON`` says otherwise.
COMPRESSION_HORIZON = 10
FORECAST_SOURCES: tuple[str, ...] = ("lstm", "last_value", "ewma", "moving_average")
POLICIES: tuple[str, ...] = ("ddqn", "quantile_rule", "ewma_rule", "fixed", "predict_then_allocate")
#: Horizons (steps) of a full v2 forecast; only h=1 is required.
FORECAST_HORIZONS: tuple[int, ...] = (1, 10, 60)
#: A v2 forecast as a :class:`Decision` holds it: one ``(h, p10, p50, p90)`` per horizon, sorted by ``h``.
Forecast = tuple[tuple[int, float, float, float], ...]
N_ACTIONS = 10
_HORIZON = re.compile(r"[1-9][0-9]{0,3}")
_V1_KEYS = frozenset(
    ("schema_version", "link_id", "seq", "ts_ms", "predicted_bandwidth_mbps", "action", "allocation_pct",
     "reference_bandwidth_mbps", "allocated_bandwidth_mbps", "model_version", "decided_at_ms")
)  # fmt: skip
_V2_KEYS = _V1_KEYS | {"forecast", "safe_bandwidth_mbps", "forecast_source", "policy"}
_KEYS = {DECISION_SCHEMA_V1: _V1_KEYS, DECISION_SCHEMA_V2: _V2_KEYS, DECISION_SCHEMA_V3: _V2_KEYS | {"compression"}}


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

    The v2 fields are ``None`` on a v1 decision, ``compression`` (v3) on a v1 or v2 one. ``forecast`` is a :data:`Forecast`: a tuple of
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
    compression: Compression | None = None

    @classmethod
    def make(
        cls, link_id: str, seq: int, ts_ms: int, predicted_bandwidth_mbps: float, action: int,
        reference_bandwidth_mbps: float, model_version: str, decided_at_ms: int, profile: str | None = None, *,
        forecast: Mapping[int | str, Sequence[float]] | Iterable[Sequence[float]] | None = None,
        safe_bandwidth_mbps: float | None = None, forecast_source: str | None = None, policy: str | None = None,
        schema_version: int = DECISION_SCHEMA_VERSION, compression: Compression | None = None,
    ) -> Decision:  # fmt: skip
        """Build a decision, deriving ``allocation_pct`` and ``allocated_bandwidth_mbps`` from ``action``.

        ``forecast`` maps a horizon (int or decimal string) to ``(p10, p50, p90)``, or is an
        iterable of ``(h, p10, p50, p90)``; it must hold h=1. Quantiles below 0 are raised to 0,
        like the prediction; crossing or non-finite ones raise :class:`ValueError`. A v2 field
        left out takes the degenerate form of a point-forecast model: forecast
        ``{1: (p, p, p)}`` with ``p`` = the prediction, safe = the h=1 p10, source ``lstm``,
        policy ``ddqn``; ``compression`` (v3) left out is the shipped profile's hint for the
        forecast's :data:`COMPRESSION_HORIZON` p50 (stream.core.compression). With
        ``schema_version=1`` the v2 and v3 fields are dropped (``None``), with 2 the v3 one, so a
        decision always equals what :meth:`from_bytes` reads back from its :meth:`to_bytes`.
        """
        if not 0 <= action < N_ACTIONS:
            raise ValueError(f"action must be in 0..{N_ACTIONS - 1}, got {action}")
        if schema_version not in DECISION_SCHEMA_VERSIONS:
            raise ValueError(f"schema_version must be one of {DECISION_SCHEMA_VERSIONS}, got {schema_version!r}")
        pct = (action + 1) * 10
        pred = max(0.0, float(predicted_bandwidth_mbps))
        fc: Forecast | None = None
        safe = source = pol = comp = None
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
            if schema_version == DECISION_SCHEMA_V3:
                comp = (
                    choose(hint_bandwidth(fc, COMPRESSION_HORIZON), default_profile())
                    if compression is None
                    else compression
                )
        ref = float(reference_bandwidth_mbps)
        return cls(
            link_id=link_id, seq=seq, ts_ms=ts_ms, predicted_bandwidth_mbps=pred, action=int(action),
            allocation_pct=pct, reference_bandwidth_mbps=ref, allocated_bandwidth_mbps=ref * pct / 100.0,
            model_version=model_version, decided_at_ms=decided_at_ms, profile=profile, schema_version=schema_version,
            forecast=fc, safe_bandwidth_mbps=safe, forecast_source=source, policy=pol, compression=comp,
        )  # fmt: skip

    def quantiles(self, h: int = 1) -> tuple[float, float, float] | None:
        """``(p10, p50, p90)`` of horizon ``h``; ``None`` on a v1 decision or a horizon not forecast."""
        return next(((a, b, c) for k, a, b, c in self.forecast or () if k == h), None)

    def to_dict(self) -> dict[str, Any]:
        """The decision as a JSON-ready dict: exactly the fields of its ``schema_version``."""
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
            if self.schema_version not in DECISION_SCHEMA_VERSIONS:
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
            if self.schema_version == DECISION_SCHEMA_V3:
                if self.compression is None:
                    raise ValueError(f"decision {self.link_id}/{self.seq} is v3 but lacks compression "
                                     "(build it with Decision.make)")  # fmt: skip
                d["compression"] = self.compression.to_dict()
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
        """Parse a published v1, v2 or v3 decision; raises :class:`ValueError` saying what was expected and what came."""
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError(f"decision must be a JSON object, got {type(obj).__name__}")
        version = obj.get("schema_version")
        if type(version) is not int or version not in DECISION_SCHEMA_VERSIONS:
            raise ValueError(f"decision schema_version must be one of {DECISION_SCHEMA_VERSIONS}, got {version!r:.40}")
        keys = _KEYS[version]
        missing, extra = sorted(keys - obj.keys()), sorted(obj.keys() - keys - {"profile"})
        if missing or extra:
            raise ValueError(f"decision v{version} needs its schema's fields: missing {missing}, unexpected {extra}")
        if version == DECISION_SCHEMA_V1:
            return cls(**obj)
        if version == DECISION_SCHEMA_V2:
            return cls(**{**obj, **_decode_v2(obj)})
        return cls(**{**obj, **_decode_v2(obj), "compression": Compression.from_dict(obj["compression"])})
