"""Parse and check one ``POST /v1/predict`` body: JSON -> (N, WINDOW, 4) raw-unit windows + profiles.

Every refusal is an :class:`~stream.core.errors.ApiError` with a machine-readable code
(docs/integration.md lists them), naming the window, state and field that is wrong.
The limits match the telemetry record's (``stream.core.records``), so a window the API
accepts is one the worker could have built from valid telemetry.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from stream.core.errors import ApiError
from stream.core.records import FEATURES, MAX_BANDWIDTH_MBPS, MAX_LATENCY_MS, PROFILES, WINDOW

#: Accepted range of each feature, in FEATURES order (the telemetry record's bounds).
BOUNDS: tuple[tuple[float, float], ...] = ((0.0, MAX_LATENCY_MS), (0.0, MAX_BANDWIDTH_MBPS), (0.0, 1.0), (0.0, 1.0))
BODY_KEYS = frozenset({"windows", "profiles"})


def _unprocessable(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


def _reject_constant(token: str) -> Any:
    raise _unprocessable("not_finite", f"numbers must be finite, got {token}")


def load_json(body: bytes) -> Any:
    """The decoded body; ``invalid_json`` (400) or ``not_finite`` (422, NaN/Infinity literals)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses NaN/Infinity like any syntax error; the stdlib parser tells them apart.
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except ApiError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"body must be a JSON object: {exc}") from exc


def _rows(windows: list[Any]) -> list[list[Any]]:
    """The states of every window as rows of FEATURES values, checked for shape and type."""
    rows: list[list[Any]] = []
    for i, w in enumerate(windows):
        if not isinstance(w, list) or len(w) != WINDOW:
            got = f"a list of {len(w)}" if isinstance(w, list) else type(w).__name__
            raise _unprocessable("wrong_shape", f"windows[{i}] must be a list of {WINDOW} states, got {got}")
        for j, s in enumerate(w):
            if not isinstance(s, dict):
                raise _unprocessable("wrong_shape", f"windows[{i}][{j}] must be a state object, got {type(s).__name__}")
            try:
                row = [s[f] for f in FEATURES]
            except KeyError as exc:
                raise _unprocessable(
                    "wrong_shape", f"windows[{i}][{j}] lacks {exc.args[0]!r}; a state needs {list(FEATURES)}"
                ) from None
            for f, v in zip(FEATURES, row):
                if type(v) is not float and type(v) is not int:  # bool is not a number here
                    raise _unprocessable("wrong_type", f"windows[{i}][{j}].{f} must be a number, got {v!r:.40}")
            rows.append(row)
    return rows


def _check_values(x: np.ndarray) -> None:
    """Raise ``not_finite`` / ``out_of_range`` for the first bad value of (N, WINDOW, 4) ``x``."""
    bad = ~np.isfinite(x)
    if bad.any():
        i, j, k = (int(v) for v in np.argwhere(bad)[0])
        raise _unprocessable("not_finite", f"windows[{i}][{j}].{FEATURES[k]} must be finite, got {x[i, j, k]}")
    lo = np.array([b[0] for b in BOUNDS])
    hi = np.array([b[1] for b in BOUNDS])
    bad = (x < lo) | (x > hi)
    if bad.any():
        i, j, k = (int(v) for v in np.argwhere(bad)[0])
        raise _unprocessable(
            "out_of_range",
            f"windows[{i}][{j}].{FEATURES[k]} must be in [{BOUNDS[k][0]:g}, {BOUNDS[k][1]:g}], got {x[i, j, k]:g}",
        )


def _profiles(obj: dict[str, Any], n: int) -> list[str | None] | None:
    profiles = obj.get("profiles")
    if profiles is None:
        return None
    if not isinstance(profiles, list) or len(profiles) != n:
        got = f"a list of {len(profiles)}" if isinstance(profiles, list) else type(profiles).__name__
        raise _unprocessable("wrong_shape", f"profiles must be a list of {n} (one per window), got {got}")
    for i, p in enumerate(profiles):
        if p is not None and p not in PROFILES:
            raise _unprocessable("invalid_profile", f"profiles[{i}] must be one of {PROFILES} or null, got {p!r:.40}")
    return profiles


def parse_predict(body: bytes, max_windows: int) -> tuple[np.ndarray, list[str | None] | None]:
    """``(windows, profiles)`` of a predict body: (N, WINDOW, 4) float64 in FEATURES order, oldest
    state first, and one profile (or None) per window, or None when the body gives none."""
    obj = load_json(body)
    if not isinstance(obj, dict):
        raise _unprocessable("wrong_shape", f'body must be an object {{"windows": [...]}}, got {type(obj).__name__}')
    extra = sorted(obj.keys() - BODY_KEYS)
    if extra:
        raise _unprocessable("unknown_field", f"body may hold only {sorted(BODY_KEYS)}, got also {extra}")
    windows = obj.get("windows")
    if not isinstance(windows, list) or not windows:
        got = "an empty list" if windows == [] else type(windows).__name__
        raise _unprocessable("wrong_shape", f"windows must be a non-empty list of windows, got {got}")
    if len(windows) > max_windows:
        raise _unprocessable(
            "too_many_windows", f"a request may carry at most {max_windows} windows, got {len(windows)}"
        )
    x = np.array(_rows(windows), dtype=np.float64).reshape(len(windows), WINDOW, len(FEATURES))  # (N, 10, 4)
    _check_values(x)
    return x, _profiles(obj, len(windows))
