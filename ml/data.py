"""Per-link series from the simulator, telemetry files and real traces, and how they are split.

Everything downstream works on :class:`LinkSeries` (one link's (T, 4) array in
FEATURES order, oldest first). Splits are always by whole link (or whole trace),
never by shuffled windows, so no link contributes to both training and testing.

Simulator seeds (documented in docs/models.md): a training run with ``--seed S``
draws its training links from seed ``1000*S + 1``, its validation links from
``1000*S + 2`` and the held-out test links whose metrics go into metadata from
``1000*S + 3``. ``bwp evaluate --profile P`` defaults to seed 7, which no training
run ever uses (7 is not 1, 2 or 3 mod 1000).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.generator import FleetSimulator
from simulator.traces.datasets import load_dataset
from stream.core.errors import DataError
from stream.core.jsonl import read_jsonl
from stream.core.records import BW, FEATURES, WINDOW, Telemetry

#: The default seed of held-out synthetic evaluation; never a training seed.
EVAL_SEED = 7


def simulator_seeds(seed: int) -> dict[str, int]:
    """Train / validation / test simulator seeds of a training run with ``seed``."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return {"train": 1000 * seed + 1, "val": 1000 * seed + 2, "test": 1000 * seed + 3}


def is_training_seed(sim_seed: int) -> bool:
    """True if some ``bwp train --seed S`` run draws links from simulator seed ``sim_seed``."""
    return sim_seed % 1000 in (1, 2, 3)


@dataclass
class LinkSeries:
    """One link's telemetry as an array."""

    link_id: str
    profile: str | None
    data: np.ndarray  # (T, 4) FEATURES order, oldest first
    source: str = ""
    ts_range_ms: tuple[int, int] | None = None  # first and last ts_ms, when known
    #: (T, len(STATE)) long-memory state after each step (ml.forecast.context), when computed
    states: np.ndarray | None = None

    @property
    def steps(self) -> int:
        """Number of time steps (rows of ``data``)."""
        return int(self.data.shape[0])


def simulator_links(profile: str, links: int, steps: int, seed: int) -> list[LinkSeries]:
    """``links`` synthetic links of ``steps`` steps (``mixed`` = alternating datacenter/internet)."""
    sim = FleetSimulator(profile, links, seed, start_ms=0)
    arr = np.stack([sim.step() for _ in range(steps)], axis=1)  # (links, steps, 4)
    return [
        LinkSeries(lid, prof, arr[i], source=f"simulator:{profile}:seed={seed}")
        for i, (lid, prof) in enumerate(zip(sim.link_ids, sim.profiles))
    ]


def records_to_links(records: Iterable[Telemetry], source: str = "") -> list[LinkSeries]:
    """Group records by link and order each link by ``seq`` (duplicates of a seq keep the last)."""
    by_link: dict[str, dict[int, Telemetry]] = defaultdict(dict)
    for r in records:
        by_link[r.link_id][r.seq] = r
    out = []
    for lid in sorted(by_link):
        recs = [by_link[lid][s] for s in sorted(by_link[lid])]
        data = np.array([r.features() for r in recs], dtype=np.float64)
        out.append(LinkSeries(lid, recs[-1].profile, data, source=source, ts_range_ms=(recs[0].ts_ms, recs[-1].ts_ms)))
    return out


def file_links(paths: Sequence[Path | str]) -> list[LinkSeries]:
    """Links of one or more telemetry JSON-lines files (plain or .gz)."""
    links = records_to_links(read_jsonl(paths), source=",".join(str(p) for p in paths))
    if not links:
        raise DataError(f"no telemetry records in {', '.join(map(str, paths))}")
    return links


def trace_links(name: str, root: Path | str | None = None) -> list[LinkSeries]:
    """Links (one per trace) of a real-trace dataset, via ``simulator.traces``."""
    ds = load_dataset(name, root=root)
    links = records_to_links((r for recs in ds.values() for r in recs), source=f"traces:{name}")
    for ls in links:
        ls.profile = ls.profile or name
    return links


def split_links(links: Sequence[LinkSeries], fractions: Sequence[float], seed: int) -> list[list[LinkSeries]]:
    """Shuffle whole links with ``seed`` and cut them into len(fractions) groups.

    Every group gets at least one link when there are enough links; the last group
    takes the remainder. Order inside each group follows the input order.
    """
    n = len(links)
    order = np.random.default_rng(seed).permutation(n)
    cuts, acc = [], 0.0
    for f in fractions[:-1]:
        acc += f
        cuts.append(int(round(acc * n)))
    # keep every group non-empty when possible (tiny datasets)
    for i in range(len(cuts)):
        lo = (cuts[i - 1] if i else 0) + 1
        cuts[i] = min(max(cuts[i], lo), n - (len(cuts) - i))
    groups = np.split(order, cuts)
    return [[links[j] for j in sorted(g)] for g in groups]


def split_by_time(links: Sequence[LinkSeries], fractions: Sequence[float]) -> list[list[LinkSeries]]:
    """Cut every link's series into consecutive parts (oldest first) of the given shares.

    Part k of link ``L`` keeps ``L``'s id and profile; parts shorter than one window plus
    a step are dropped. No window of a later part overlaps an earlier one, so a model
    fitted on the first part never saw a target of the last.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f <= 0 for f in fractions):
        raise ValueError(f"fractions must be positive and sum to 1, got {list(fractions)}")
    out: list[list[LinkSeries]] = [[] for _ in fractions]
    for ls in links:
        cuts = np.round(np.cumsum(fractions)[:-1] * ls.steps).astype(int)
        # the long-memory states run on from the earlier parts, as a worker's would
        states = np.split(ls.states, cuts) if ls.states is not None else [None] * len(fractions)
        for k, (part, st) in enumerate(zip(np.split(ls.data, cuts), states)):
            if part.shape[0] > WINDOW:
                out[k].append(LinkSeries(ls.link_id, ls.profile, part, source=f"{ls.source}#part{k}", states=st))
    return out


def windows_of(links: Sequence[LinkSeries]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All windows of all links: (N, 10, 4), next bandwidth (N,), index of the link (N,)."""
    ws, ys, idx = [], [], []
    for i, ls in enumerate(links):
        w, y = make_windows(ls.data, WINDOW)
        if len(y):
            ws.append(w)
            ys.append(y)
            idx.append(np.full(len(y), i, dtype=np.int64))
    if not ws:
        return np.zeros((0, WINDOW, 4)), np.zeros((0,)), np.zeros((0,), np.int64)
    return np.concatenate(ws), np.concatenate(ys), np.concatenate(idx)


def describe(links: Sequence[LinkSeries]) -> dict:
    """A JSON-able summary (for metadata): links, steps, sources, profiles."""
    profiles: dict[str, int] = defaultdict(int)
    for ls in links:
        profiles[ls.profile or "unknown"] += 1
    ts = [ls.ts_range_ms for ls in links if ls.ts_range_ms is not None]
    return {
        "links": len(links),
        "ts_range_ms": [min(t[0] for t in ts), max(t[1] for t in ts)] if ts else None,
        "steps": int(sum(ls.steps for ls in links)),
        "sources": sorted({ls.source for ls in links}),
        "profiles": dict(profiles),
    }


def make_windows(series: np.ndarray, window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Every full window of one link's series and the bandwidth that follows it.

    ``series`` is (T, 4) in FEATURES order, oldest first. Returns
    ``windows`` (T - window, window, 4) and ``next_bw`` (T - window,): window i is
    rows i..i+window-1 and its target is row i+window's bandwidth. A series of
    ``window`` rows or fewer gives empty arrays.
    """
    s = np.asarray(series, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != len(FEATURES):
        raise ValueError(f"series must be (T, {len(FEATURES)}), got {s.shape}")
    n = s.shape[0] - window
    if n <= 0:
        return np.zeros((0, window, len(FEATURES))), np.zeros((0,))
    # (n, window, 4) view without copying, then materialised once
    idx = np.arange(window)[None, :] + np.arange(n)[:, None]
    return s[idx], s[window:, BW].copy()
