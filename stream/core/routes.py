"""Route groups: the ranking score and the ``bwp.routes`` wire record (docs/wire.md, "Routes").

Links of one ``route_group`` are alternative paths between the same endpoints. The worker
ranks the members of a group by :func:`route_score` of their latest forecast and publishes
a :class:`RouteRanking` (topic ``bwp.routes``, key = the group) when the order changes.

This module imports nothing of :mod:`stream.core.records` (``records`` uses
:func:`bad_name` to validate ``route_group``), so the two cannot import each other in a loop.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

from stream.core.errors import TelemetryDecodeError

#: ``(h, p10, p50, p90)`` rows sorted by ``h``: :data:`stream.core.records.Forecast` (not imported: see above).
Forecast = tuple[tuple[int, float, float, float], ...]
ROUTES_SCHEMA_VERSION = 1
#: Target horizon (steps) of the score: the ``h = 10`` forecast, else the largest one below.
SCORE_HORIZON = 10
#: What :func:`route_score` computes, as written in every ranking (``score_rule``).
SCORE_RULE = "p10(h) * (1 - packet_loss)"
#: Why a ranking was published: its order changed, or the interval since the last one passed.
REASONS: tuple[str, ...] = ("order", "interval")
#: Same characters as ``link_id`` (so a group name is also a valid Kafka key and Redis hash tag part).
NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TOP_KEYS = frozenset(("schema_version", "route_group", "published_at_ms", "reason", "score_rule", "score_horizon",
                       "members"))  # fmt: skip
_MEMBER_KEYS = frozenset(("rank", "link_id", "score", "horizon", "seq", "ts_ms", "age_ms", "latency_ms", "packet_loss",
                          "forecast"))  # fmt: skip


def bad_name(name: str, value: Any, obj: Mapping[str, Any]) -> NoReturn:
    """Raise the :class:`TelemetryDecodeError` for an invalid ``link_id`` / ``route_group`` ``value``.

    Called by the telemetry decoder only once its fast check failed (so the hot path pays
    no call): ``missing_field`` for a missing value, ``wrong_type`` for a non-string, else
    ``invalid_<name>``.
    """
    if value is None:
        raise TelemetryDecodeError("missing_field", f"field {name!r} is required, record has {sorted(obj)}")
    if not isinstance(value, str):
        raise TelemetryDecodeError("wrong_type", f"{name} must be a string, got {type(value).__name__}")
    raise TelemetryDecodeError(f"invalid_{name}", f"{name} must be 1..128 chars of [A-Za-z0-9._:-], got {value[:40]!r}")


def score_horizon(forecast: Forecast, target: int = SCORE_HORIZON) -> int:
    """The horizon the score reads: ``target`` if forecast, else the largest one below it, else h=1."""
    below = [h for h, *_ in forecast if h <= target]
    return max(below) if below else forecast[0][0]


def route_score(forecast: Forecast, packet_loss: float, target: int = SCORE_HORIZON) -> tuple[float, int]:
    """``(score, horizon)``: the p10 of the :func:`score_horizon` forecast times ``1 - packet_loss``.

    A risk-adjusted "bandwidth this path delivers with 90 % confidence" in Mbit/s: the lower
    quantile punishes uncertain links, the loss factor the share of packets lost. A point
    model's degenerate forecast ``(p, p, p)`` makes it the prediction times ``1 - loss``.
    """
    h = score_horizon(forecast, target)
    p10 = next(a for k, a, _, _ in forecast if k == h)
    return p10 * (1.0 - packet_loss), h


def rank_key(score: float, latency_ms: float, link_id: str) -> tuple[float, float, str]:
    """Sort key of a member: higher score first, then lower latency, then ``link_id``."""
    return (-score, latency_ms, link_id)


@dataclass(frozen=True, slots=True)
class RouteMember:
    """One ranked link of a group: its latest decided state and forecast."""

    rank: int
    link_id: str
    score: float
    horizon: int  # the forecast horizon the score used
    seq: int
    ts_ms: int
    age_ms: int  # published_at_ms - ts_ms, at least 0 (probe clock vs worker clock)
    latency_ms: float
    packet_loss: float
    forecast: Forecast

    def to_dict(self) -> dict[str, Any]:
        """The member as its JSON object."""
        return {
            "rank": self.rank, "link_id": self.link_id, "score": self.score, "horizon": self.horizon,
            "seq": self.seq, "ts_ms": self.ts_ms, "age_ms": self.age_ms, "latency_ms": self.latency_ms,
            "packet_loss": self.packet_loss,
            "forecast": {str(h): {"p10": a, "p50": b, "p90": c} for h, a, b, c in self.forecast},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, obj: Any) -> RouteMember:
        """Parse one member object; raises :class:`ValueError` saying what was expected."""
        if not isinstance(obj, dict) or set(obj) != _MEMBER_KEYS:
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"route member must be an object of exactly {sorted(_MEMBER_KEYS)}, got {got}")
        fc = obj["forecast"]
        if not isinstance(fc, dict) or not fc:
            raise ValueError(f"route member forecast must be a non-empty object keyed by horizon, got {fc!r:.60}")
        rows = []
        for k, q in fc.items():
            if not (isinstance(k, str) and k.isdigit() and isinstance(q, dict) and set(q) == {"p10", "p50", "p90"}):
                raise ValueError(f'forecast["{k}"] must be {{"p10", "p50", "p90"}} under a horizon key, got {q!r:.60}')
            rows.append((int(k), _finite(q["p10"], "p10"), _finite(q["p50"], "p50"), _finite(q["p90"], "p90")))
        return cls(
            rank=_count(obj["rank"], "rank", 1), link_id=_name(obj["link_id"], "link_id"),
            score=_finite(obj["score"], "score"), horizon=_count(obj["horizon"], "horizon", 1),
            seq=_count(obj["seq"], "seq", 0), ts_ms=_count(obj["ts_ms"], "ts_ms", 0),
            age_ms=_count(obj["age_ms"], "age_ms", 0), latency_ms=_finite(obj["latency_ms"], "latency_ms"),
            packet_loss=_finite(obj["packet_loss"], "packet_loss"), forecast=tuple(sorted(rows)),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RouteRanking:
    """The ranking of one route group (topic ``bwp.routes``, key = ``route_group``). See docs/wire.md."""

    route_group: str
    published_at_ms: int
    reason: str  # one of REASONS
    members: tuple[RouteMember, ...]
    score_horizon: int = SCORE_HORIZON
    score_rule: str = SCORE_RULE
    schema_version: int = ROUTES_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The ranking as a JSON-ready dict (the routes schema's fields)."""
        return {
            "schema_version": self.schema_version, "route_group": self.route_group,
            "published_at_ms": self.published_at_ms, "reason": self.reason, "score_rule": self.score_rule,
            "score_horizon": self.score_horizon, "members": [m.to_dict() for m in self.members],
        }  # fmt: skip

    def to_bytes(self) -> bytes:
        """Compact JSON bytes, as published; refuses non-finite numbers (the schema wants numbers)."""
        for m in self.members:
            if not all(math.isfinite(v) for v in (m.score, m.latency_ms, m.packet_loss, *_flat(m.forecast))):
                raise ValueError(f"ranking {self.route_group}: member {m.link_id} has a non-finite number")
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> RouteRanking:
        """Parse a published ranking; raises :class:`ValueError` saying what was expected and what came."""
        obj = json.loads(raw)
        if not isinstance(obj, dict) or set(obj) != _TOP_KEYS:
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"route ranking must be an object of exactly {sorted(_TOP_KEYS)}, got {got}")
        if obj["schema_version"] != ROUTES_SCHEMA_VERSION or type(obj["schema_version"]) is not int:
            raise ValueError(
                f"route ranking schema_version must be {ROUTES_SCHEMA_VERSION}, got {obj['schema_version']!r}"
            )
        if obj["reason"] not in REASONS:
            raise ValueError(f"route ranking reason must be one of {REASONS}, got {obj['reason']!r:.40}")
        if not isinstance(obj["members"], list) or not isinstance(obj["score_rule"], str):
            raise ValueError("route ranking members must be a list and score_rule a string")
        members = tuple(RouteMember.from_dict(m) for m in obj["members"])
        if [m.rank for m in members] != list(range(1, len(members) + 1)):
            raise ValueError(f"route members must be ranked 1..n in order, got ranks {[m.rank for m in members]}")
        return cls(
            route_group=_name(obj["route_group"], "route_group"),
            published_at_ms=_count(obj["published_at_ms"], "published_at_ms", 0), reason=obj["reason"],
            members=members, score_horizon=_count(obj["score_horizon"], "score_horizon", 1),
            score_rule=obj["score_rule"],
        )  # fmt: skip


def rank_members(group: str, entries: Iterable[Mapping[str, Any]], now_ms: int, reason: str) -> RouteRanking:
    """A ranking from member entries (dicts of ``link_id, seq, ts_ms, latency_ms, packet_loss,
    score, horizon, forecast``), sorted by :func:`rank_key`."""
    ordered = sorted(entries, key=lambda e: rank_key(e["score"], e["latency_ms"], e["link_id"]))
    members = tuple(
        RouteMember(
            rank=i, link_id=e["link_id"], score=float(e["score"]), horizon=int(e["horizon"]), seq=int(e["seq"]),
            ts_ms=int(e["ts_ms"]), age_ms=max(0, now_ms - int(e["ts_ms"])), latency_ms=float(e["latency_ms"]),
            packet_loss=float(e["packet_loss"]), forecast=tuple((int(h), float(a), float(b), float(c)) for h, a, b, c in e["forecast"]),
        )
        for i, e in enumerate(ordered, 1)
    )  # fmt: skip
    return RouteRanking(route_group=group, published_at_ms=now_ms, reason=reason, members=members)


def _flat(forecast: Forecast) -> list[float]:
    return [v for _, a, b, c in forecast for v in (a, b, c)]


def _finite(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r:.40}")
    return float(v)


def _count(v: Any, name: str, lo: int) -> int:
    if type(v) is not int or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r:.40}")
    return v


def _name(v: Any, name: str) -> str:
    if not isinstance(v, str) or not NAME.fullmatch(v):
        raise ValueError(f"{name} must be 1..128 chars of [A-Za-z0-9._:-], got {v!r:.40}")
    return v
