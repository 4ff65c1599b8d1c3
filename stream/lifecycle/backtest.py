"""``bwp backtest``: the worker's own pipeline over telemetry files, without Kafka or Redis.

Records are read and ordered exactly as ``bwp replay`` publishes them (sorted by
``(ts_ms, seq)``; per-link order is what Kafka preserves), cut into micro-batches of
``batch_max`` and fed to the worker's :class:`stream.pipeline.core.PipelineCore` with
:class:`MemoryWindowStore` in place of Redis. That store mirrors the Redis update and
ack scripts of :mod:`stream.pipeline.redis_window` operation by operation (a test runs random
record streams through both and compares every outcome and window); the one thing
it leaves out is the key TTL, which is wall-clock time in Redis and means nothing
in an offline run. Every batch's decisions are "acknowledged" right away, as the
worker does once the broker has them.

Output: the ``bwp evaluate`` report (LSTM and naive baselines scored on every
decision whose next state is in the files; the baselines see the very windows the
model saw) plus ``policy``: the mean ``ml.policy.reward.reward`` of the allocated
bandwidth against the next actual bandwidth, next to always-50 %, the best fixed level
(chosen on these same decisions: optimistic), the oracle (best action knowing the next
state) and both rules (``ml.policy.rules``, with the model's tuned parameters), plus
how often each policy served (``served_policies``). ``--decisions-out`` writes every
decision as JSON lines (``decided_at_ms`` = the decision's own ``ts_ms``: simulated
time, so the file is the same whatever the batch size).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np

from ml.eval.forecast import MAPE_ABS_FLOOR_MBPS, MAPE_REL_FLOOR, report
from ml.eval.probabilistic import score_quantiles
from ml.forecast.baselines import baseline_forecasters
from ml.forecast.quantiles import QUANTILES, quantile_at
from ml.policy.observation import reference_bandwidth
from ml.policy.reward import reward
from ml.policy.rules import ewma_rule_actions, quantile_rule_actions
from ml.serving.predictor import load_predictor
from stream.core.errors import DataError
from stream.core.records import N_ACTIONS, WINDOW, Decision, Telemetry
from stream.lifecycle.recordings import iter_sorted
from stream.pipeline.aci import AciParams
from stream.pipeline.core import InRecord, PipelineCore
from stream.pipeline.memory_window import MemoryWindowStore


class _Capture:
    """Wraps a predictor and keeps every window batch it is asked about (in call order)."""

    def __init__(self, predictor: Any) -> None:
        self.inner = predictor
        self.version = predictor.version
        self.context = bool(getattr(predictor, "context", False))  # passes the link states on, as the worker does
        self.windows: list[np.ndarray] = []

    def predict(self, windows: np.ndarray, profiles: Any = None, states: Any = None) -> Any:
        self.windows.append(np.array(windows, dtype=np.float64))
        if states is not None:
            return self.inner.predict(windows, profiles, states)
        return self.inner.predict(windows, profiles)


async def _run_core(
    records: Iterable[Telemetry], predictor: Any, batch_max: int, aci: AciParams
) -> tuple[list[Decision], np.ndarray, dict]:

    cap = _Capture(predictor)
    batch_ts = [0]
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bwp-backtest")
    core = PipelineCore(MemoryWindowStore(), cap, executor=executor, clock_ms=lambda: batch_ts[0], aci=aci)
    decisions: list[Decision] = []
    counts = defaultdict(int)
    batch: list[Telemetry] = []

    async def flush() -> None:
        if not batch:
            return
        batch_ts[0] = max(r.ts_ms for r in batch)
        n_before = len(cap.windows)
        out = await core.process([InRecord(r.to_bytes(), r.link_id.encode()) for r in batch])
        # the core predicts once per batch with a full window, in decision order
        assert len(cap.windows) - n_before == (1 if out.decisions else 0)
        await core.confirm(out)
        # simulated time: decided when its state was observed (independent of batch cuts)
        decisions.extend(dc_replace(d, decided_at_ms=d.ts_ms) for d in out.decisions)
        for k in ("valid", "duplicates", "stale", "filling"):
            counts[k] += getattr(out, k)
        counts["dead_letters"] += len(out.dead_letters)
        batch.clear()

    try:
        for r in records:
            batch.append(r)
            counts["records"] += 1
            if len(batch) >= batch_max:
                await flush()
        await flush()
    finally:
        executor.shutdown(wait=True)
    windows = np.concatenate(cap.windows) if cap.windows else np.zeros((0, WINDOW, 4))
    if len(windows) != len(decisions):
        raise AssertionError(f"{len(windows)} windows for {len(decisions)} decisions")
    return decisions, windows, dict(counts)


def run_pipeline(
    paths: Sequence[Path | str],
    predictor: Any,
    batch_max: int = 2048,
    t_from: int | None = None,
    t_to: int | None = None,
    aci: AciParams | None = None,
) -> tuple[list[Decision], np.ndarray, list[Telemetry], dict]:
    """Decisions, their windows (N, 10, 4), the ordered records and counters of one offline run.

    ``aci``: the worker's online calibration (default: ``BWP_ACI_GAMMA``'s default; gamma 0 = off).
    """
    _, it = iter_sorted(list(paths), t_from, t_to)
    records = list(it)
    if not records:
        raise DataError(f"no telemetry records in {[str(p) for p in paths]}")
    decisions, windows, counts = asyncio.run(_run_core(records, predictor, batch_max, aci or AciParams()))
    return decisions, windows, records, counts


def _next_actual(records: Sequence[Telemetry]) -> dict[tuple[str, int], float]:
    """(link, seq) -> bandwidth of that link's next state in seq order (the forecast target)."""
    by_link: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        by_link[r.link_id][r.seq] = r.bandwidth_mbps  # a re-sent seq: last copy, as the evaluator does
    out = {}
    for lid, m in by_link.items():
        seqs = sorted(m)
        for a, b in zip(seqs, seqs[1:]):
            out[(lid, a)] = m[b]
    return out


def _policy_block(
    alloc: np.ndarray, ref: np.ndarray, actual: np.ndarray, rules: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Mean rewards of the served allocations, always-50 %, the best fixed level, the oracle and
    each rule's actions (``rules``: name -> (n,) actions on the same decisions)."""
    if len(actual) == 0:
        return {"n": 0, "mean_reward": None, "fixed_50_mean_reward": None, "oracle_mean_reward": None}
    levels = (np.arange(N_ACTIONS) + 1) / N_ACTIONS  # (10,) 10 % .. 100 %
    all_r = reward(ref[:, None] * levels[None, :], actual[:, None])  # (n, 10)
    out: dict[str, Any] = {
        "n": int(len(actual)),
        "mean_reward": float(np.mean(reward(alloc, actual))),
        "fixed_50_mean_reward": float(np.mean(all_r[:, 4])),
        "best_fixed_mean_reward": float(all_r.mean(axis=0).max()),
        "oracle_mean_reward": float(np.mean(all_r.max(axis=1))),
    }
    for name, act in (rules or {}).items():
        out[f"{name}_mean_reward"] = float(np.mean(np.take_along_axis(all_r, act[:, None], axis=1)))
    return out


def _rule_actions(ds: Sequence[Decision], w: np.ndarray, policy_meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The EWMA rule's and (for v2 decisions with quantiles) the quantile rule's actions on the
    decisions' windows, with the model's tuned parameters (defaults when it has none)."""
    if not len(ds):
        return {}
    rule = policy_meta.get("ewma_rule") or {"alpha": 0.5, "k": 0.8}
    out = {"ewma_rule": ewma_rule_actions(w, float(rule["alpha"]), float(rule["k"]))}
    qr = policy_meta.get("quantile_rule")
    if qr and all(d.forecast for d in ds):
        q1 = np.array([d.forecast[0][1:] for d in ds], dtype=np.float64)  # (n, 3) h = 1 p10/p50/p90
        q_tau = quantile_at(w, q1, (0.1, 0.5, 0.9), float(qr["tau"]))
        out["quantile_rule"] = quantile_rule_actions(q_tau, reference_bandwidth(w))
    return out


def backtest_report(
    decisions: Sequence[Decision],
    windows: np.ndarray,
    records: Sequence[Telemetry],
    ewma_alpha: float,
    policy_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``bwp evaluate`` JSON of the decisions' forecasts, plus ``policy`` rewards (the served
    allocations against fixed levels, the oracle and both rules, on the same decisions)."""
    nxt = _next_actual(records)
    keep = np.array([(d.link_id, d.seq) in nxt for d in decisions], dtype=bool)
    ds = [d for d, k in zip(decisions, keep) if k]
    w = windows[keep] if len(windows) else windows  # (n, 10, 4)
    y = np.array([nxt[(d.link_id, d.seq)] for d in ds], dtype=np.float64)
    med: dict[str, list[float]] = defaultdict(list)
    for r in records:
        med[r.link_id].append(r.bandwidth_mbps)
    link_med = {k: float(np.median(v)) for k, v in med.items()}
    fc = {
        "y_true": y,
        "y_pred": {"lstm": np.array([d.predicted_bandwidth_mbps for d in ds], dtype=np.float64)},
        "link_ids": np.array([d.link_id for d in ds], dtype=object),
        "profiles": np.array([d.profile or "unknown" for d in ds], dtype=object),
        "mape_floor": np.array([max(MAPE_ABS_FLOOR_MBPS, MAPE_REL_FLOOR * link_med[d.link_id]) for d in ds]),
    }
    for name, f in baseline_forecasters(ewma_alpha).items():
        fc["y_pred"][name] = f(w) if len(ds) else np.zeros(0)
    rep = report(fc)
    if ds and all(d.forecast and d.forecast[0][0] == 1 for d in ds):
        q1 = np.array([d.forecast[0][1:] for d in ds], dtype=np.float64)  # (n, 3) published h = 1 p10/p50/p90
        rep["quantiles_h1"] = score_quantiles(y, q1, QUANTILES)
    alloc = np.array([d.allocated_bandwidth_mbps for d in ds], dtype=np.float64)
    ref = np.array([d.reference_bandwidth_mbps for d in ds], dtype=np.float64)
    profs = fc["profiles"]
    rules = _rule_actions(ds, w, policy_meta or {})
    rep["policy"] = _policy_block(alloc, ref, y, rules)
    rep["policy"]["by_profile"] = {
        p: _policy_block(
            alloc[profs == p], ref[profs == p], y[profs == p], {k: a[profs == p] for k, a in rules.items()}
        )
        for p in sorted(set(profs.tolist()))
    }
    served = defaultdict(int)
    for d in ds:
        served[d.policy or "ddqn"] += 1
    rep["policy"]["served_policies"] = dict(served)
    return rep


def write_decisions(path: Path | str, decisions: Iterable[Decision]) -> int:
    """Decisions as JSON lines (the decisions topic's wire format); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for d in decisions:
            fh.write(json.dumps(d.to_dict(), separators=(",", ":")) + "\n")
            n += 1
    return n


def backtest(
    paths: Sequence[Path | str],
    model_dir: Path | str,
    version: str | None = None,
    decisions_out: Path | str | None = None,
    predictor: Any = None,
    batch_max: int = 2048,
    aci: AciParams | None = None,
) -> dict[str, Any]:
    """Offline run of the worker pipeline over ``paths``; returns the report.

    ``predictor`` (tests) replaces the registry model; otherwise ``version`` (default
    current) is loaded from ``model_dir``. ``aci`` as in :func:`run_pipeline`.
    """
    if predictor is None:
        predictor = load_predictor(model_dir, version)
    aci = aci or AciParams()
    decisions, windows, records, counts = run_pipeline(paths, predictor, batch_max, aci=aci)
    meta = getattr(predictor, "metadata", {})
    alpha = float(meta.get("ewma_alpha", 0.5))
    rep = backtest_report(decisions, windows, records, alpha, meta.get("policy"))
    rep["version"] = predictor.version
    rep["pipeline"] = {**counts, "decisions": len(decisions), "batch_max": batch_max, "aci_gamma": aci.gamma}
    if decisions_out is not None:
        write_decisions(decisions_out, decisions)
        rep["decisions_out"] = str(decisions_out)
    return rep
