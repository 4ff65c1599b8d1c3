"""What ``/openapi.json`` says of the predict route: the request body and the answers.

The handlers read raw bytes (so that every refusal gets bwp's error codes, not a generic
validation error), so the body schema is written here by hand; docs/openapi.json is the
served document, checked in (a test keeps them equal).
"""

from __future__ import annotations

from typing import Any

from stream.core.records import FEATURES, WINDOW
from stream.serve.requests import BOUNDS

_NUMBER = {"type": "number"}
_UNITS = {"latency_ms": "round-trip latency, ms", "bandwidth_mbps": "measured bandwidth, Mbit/s",
          "packet_loss": "loss ratio", "reliability": "delivery ratio"}  # fmt: skip
# the limits parse_predict enforces (BOUNDS, one definition): a value outside is a 422 out_of_range
_STATE = {
    "type": "object",
    "required": list(FEATURES),
    "properties": {
        f: {"type": "number", "minimum": lo, "maximum": hi, "description": _UNITS[f]}
        for f, (lo, hi) in zip(FEATURES, BOUNDS)
    },
    "description": "One state of a link; other keys (link_id, seq, ts_ms, ...) are ignored.",
}
_QUANTILES = {
    "type": "object",
    "required": ["p10", "p50", "p90"],
    "properties": {"p10": _NUMBER, "p50": _NUMBER, "p90": _NUMBER},
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, see docs/integration.md"},
                "message": {"type": "string"},
            },
        }
    },
}
_PREDICTION = {
    "type": "object",
    "description": "The decision record's fields (docs/wire.md) without link_id, seq, ts_ms, decided_at_ms, "
    "profile; the v2 fields from decisions schema v2 on, compression from v3 (BWP_DECISIONS_SCHEMA_VERSION).",
    "properties": {
        "schema_version": {"type": "integer"},
        "predicted_bandwidth_mbps": _NUMBER,
        "action": {"type": "integer", "minimum": 0, "maximum": 9},
        "allocation_pct": {"type": "integer", "minimum": 10, "maximum": 100},
        "reference_bandwidth_mbps": _NUMBER,
        "allocated_bandwidth_mbps": _NUMBER,
        "model_version": {"type": "string"},
        "forecast": {"type": "object", "additionalProperties": _QUANTILES, "description": "keyed by horizon (steps)"},
        "safe_bandwidth_mbps": _NUMBER,
        "forecast_source": {"type": "string"},
        "policy": {"type": "string"},
        "compression": {
            "type": "object",
            "description": 'v3: {"codec": "zstd", "level": 1..19} or {"codec": "none"} (docs/compression.md)',
            "properties": {"codec": {"enum": ["zstd", "none"]}, "level": {"type": "integer"}},
        },
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


#: The name of the bearer scheme in ``components.securitySchemes``.
BEARER = "bearer"
#: The security scheme the document declares (a token is asked for only when BWP_SERVE_TOKEN is set).
SECURITY_SCHEMES = {
    BEARER: {"type": "http", "scheme": "bearer", "description": "BWP_SERVE_TOKEN, when the server sets one"}
}
#: What the server answers on any route: an unknown path, a method the route does not take, a bug.
COMMON: dict[int | str, dict[str, Any]] = {
    405: _error_response("method_not_allowed: the route takes other methods (the Allow header lists them)"),
    500: _error_response("internal: an unexpected error (a bug); the message names it"),
}
#: The readiness route's refusal (it takes no token).
NOT_READY: dict[int | str, dict[str, Any]] = {503: _error_response("not_ready: no model is loaded yet"), **COMMON}
#: The refusals every authenticated route can give.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error_response("unauthorized: BWP_SERVE_TOKEN is set and the bearer token is missing or wrong"),
    **NOT_READY,
}
#: ``openapi_extra`` of an authenticated route.
AUTHENTICATED: dict[str, Any] = {"security": [{BEARER: []}]}


def predict_doc(max_windows: int) -> dict[str, Any]:
    """Keyword arguments of the ``POST /v1/predict`` route: summary, body schema (at most
    ``max_windows`` windows, ``BWP_SERVE_MAX_WINDOWS``), answers."""
    return {
        "summary": "Forecast and allocation for one or many 10-state windows, exactly as the worker decides them",
        "openapi_extra": {
            **AUTHENTICATED,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["windows"],
                            "additionalProperties": False,
                            "properties": {
                                "windows": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": max_windows,
                                    "items": {"type": "array", "minItems": WINDOW, "maxItems": WINDOW, "items": _STATE},
                                    "description": f"windows of {WINDOW} states each, oldest first, raw units",
                                },
                                "profiles": {
                                    "type": "array",
                                    "maxItems": max_windows,
                                    "items": {"type": ["string", "null"], "enum": ["datacenter", "internet", None]},
                                    "description": "optional: one link profile (or null) per window",
                                },
                            },
                        }
                    }
                },
            },
        },
        "responses": {
            200: {
                "description": "one prediction per window, in order",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model_version", "predictions"],
                            "properties": {
                                "model_version": {"type": "string"},
                                "predictions": {"type": "array", "items": _PREDICTION},
                            },
                        }
                    }
                },
            },
            400: _error_response("invalid_json"),
            413: _error_response("body_too_large"),
            415: _error_response("unsupported_media_type"),
            422: _error_response(
                "wrong_shape, wrong_type, not_finite, out_of_range, too_many_windows, invalid_profile, unknown_field"
            ),
            401: ERRORS[401],
            503: _error_response("not_ready (no model yet) or predict_failed (the model failed; retry)"),
            **COMMON,
        },
    }
