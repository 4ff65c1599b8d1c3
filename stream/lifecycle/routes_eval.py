"""``bwp evaluate-routes``: how well the route score picks the best path of a group, offline.

The telemetry files run through the worker's own pipeline (:func:`stream.lifecycle.backtest.run_pipeline`:
in-memory windows, the served model). For every route group and every step ``seq`` at
which at least two members have a decision and a complete future of ``horizon`` states,
the members are ranked by :func:`stream.core.routes.route_score` of their decision's
forecast (ties: lower latency, then link id). The realised value of a member is its mean
bandwidth over the next ``horizon`` states (seq+1 .. seq+horizon). Reported, next to the
same for "pick the best last value" (highest bandwidth of the current state):

* ``hit_rate`` - share of steps whose pick has the best realised value of the group;
* ``mean_regret_mbps`` - mean of (best realised value - the pick's realised value);
* ``oracle_mean_mbps`` / ``pick_mean_mbps`` - the mean realised values themselves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.serving.predictor import load_predictor
from stream.core.errors import DataError
from stream.core.records import Decision, Telemetry
from stream.core.routes import SCORE_HORIZON, SCORE_RULE, rank_key, route_score
from stream.lifecycle.backtest import run_pipeline


def _future_means(records: Sequence[Telemetry], horizon: int) -> dict[tuple[str, int], float]:
    """(link, seq) -> mean bandwidth of the link's states seq+1 .. seq+horizon (only when all exist)."""
    by_link: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        by_link[r.link_id][r.seq] = r.bandwidth_mbps
    out = {}
    for lid, m in by_link.items():
        for s in m:
            fut = [m.get(s + k) for k in range(1, horizon + 1)]
            if all(v is not None for v in fut):
                out[(lid, s)] = float(np.mean(fut))  # type: ignore[arg-type]
    return out


def _block(picks: list[float], best: list[float]) -> dict[str, float]:
    p, b = np.asarray(picks), np.asarray(best)
    return {
        "hit_rate": float(np.mean(p >= b)),
        "mean_regret_mbps": float(np.mean(b - p)),
        "pick_mean_mbps": float(np.mean(p)),
        "oracle_mean_mbps": float(np.mean(b)),
    }


def route_report(decisions: Sequence[Decision], records: Sequence[Telemetry], horizon: int) -> dict[str, Any]:
    """The evaluate-routes report of one offline run (see the module docstring)."""
    state = {(r.link_id, r.seq): r for r in records}
    future = _future_means(records, horizon)
    steps: dict[tuple[str, int], list[tuple[Decision, Telemetry, float]]] = defaultdict(list)
    for d in decisions:
        r = state.get((d.link_id, d.seq))
        fut = future.get((d.link_id, d.seq))
        if r is not None and r.route_group is not None and fut is not None:
            steps[(r.route_group, d.seq)].append((d, r, fut))
    per_group: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (group, _), members in sorted(steps.items()):
        if len(members) < 2:
            continue
        scored = []
        for d, r, fut in members:
            p = d.predicted_bandwidth_mbps
            score, _ = route_score(d.forecast or ((1, p, p, p),), r.packet_loss)
            scored.append((rank_key(score, r.latency_ms, r.link_id), r, fut))
        top = min(scored, key=lambda s: s[0])
        last = max(scored, key=lambda s: (s[1].bandwidth_mbps, -s[1].latency_ms))
        g = per_group[group]
        g["score"].append(top[2])
        g["last_value"].append(last[2])
        g["best"].append(max(s[2] for s in scored))
    if not per_group:
        raise DataError(
            "no step with two or more grouped members with a decision and "
            f"{horizon} future states (do the records carry route_group?)"
        )
    groups = {
        name: {"steps": len(g["best"]), "score": _block(g["score"], g["best"]),
               "last_value": _block(g["last_value"], g["best"])}
        for name, g in sorted(per_group.items())
    }  # fmt: skip
    allg = {k: [v for g in per_group.values() for v in g[k]] for k in ("score", "last_value", "best")}
    return {
        "horizon": horizon,
        "score_rule": SCORE_RULE,
        "score_horizon": SCORE_HORIZON,
        "steps": len(allg["best"]),
        "score": _block(allg["score"], allg["best"]),
        "last_value": _block(allg["last_value"], allg["best"]),
        "groups": groups,
    }


def evaluate_routes(
    paths: Sequence[Path | str],
    model_dir: Path | str,
    version: str | None = None,
    horizon: int = SCORE_HORIZON,
    predictor: Any = None,
) -> dict[str, Any]:
    """Run the pipeline over ``paths`` and score its route rankings; ``predictor`` (tests) replaces the registry's."""
    if horizon < 1:
        raise DataError(f"horizon must be >= 1 step, got {horizon}")
    if predictor is None:
        predictor = load_predictor(model_dir, version)
    decisions, _, records, _ = run_pipeline(paths, predictor)
    rep = route_report(decisions, records, horizon)
    rep["version"] = predictor.version
    return rep


def format_table(rep: dict[str, Any]) -> str:
    """A readable table of a report: one row per group and one for all, score vs last value."""
    head = f"{'group':<16}{'steps':>7}  {'hit score':>9} {'hit last':>9}  {'regret score':>12} {'regret last':>12}"
    rows = [f"route ranking, realised mean bandwidth over the next {rep['horizon']} steps; regret in Mbit/s", head]
    items = [*rep["groups"].items(), ("ALL", rep)]
    for name, g in items:
        s, lv = g["score"], g["last_value"]
        rows.append(
            f"{name:<16}{g['steps']:>7}  {s['hit_rate']:>9.3f} {lv['hit_rate']:>9.3f}  "
            f"{s['mean_regret_mbps']:>12.4g} {lv['mean_regret_mbps']:>12.4g}"
        )
    return "\n".join(rows)
