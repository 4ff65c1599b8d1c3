"""What retraining trains and tests on: recorded files selected by time, a training period and
a later holdout, recent data oversampled by age.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import LinkSeries, split_links
from stream.core.errors import ConfigError, DataError
from stream.core.jsonl import read_jsonl
from stream.core.progress import Progress
from stream.core.records import WINDOW, Telemetry
from stream.lifecycle.recordings import scan_files

DAY_MS = 86_400_000

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``6h``, ``14d``, ``2w`` (or plain milliseconds) -> milliseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", str(text))
    if not m:
        raise ConfigError(f"duration must look like 30m, 6h, 14d or 2w, got {text!r}")
    ms = float(m.group(1)) * _UNITS[m.group(2) or "ms"]
    if ms <= 0:
        raise ConfigError(f"duration must be > 0, got {text!r}")
    return int(ms)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class RetrainData:
    """Link series of the three parts and where they came from."""

    train: list  # LinkSeries (oversampled chunks)
    val: list
    holdout: list
    info: dict[str, Any]


def _series(recs: list[Telemetry]) -> tuple[np.ndarray, np.ndarray]:
    """(T, 4) features and (T,) ts_ms of one link's records, already in seq order."""
    return np.array([r.features() for r in recs], dtype=np.float64), np.array([r.ts_ms for r in recs], dtype=np.int64)


def copies_for_age(age_ms: float, half_life_ms: float) -> int:
    """How many times a chunk whose newest state is ``age_ms`` old is used (1..4)."""
    return 1 + int(round(3.0 * 0.5 ** (max(0.0, age_ms) / half_life_ms)))


def select_files(infos: list, start: int, cut: int, newest: int, max_records: int | None) -> tuple[list, float]:
    """Files overlapping ``(start, newest]``; over ``max_records`` in all, an evenly spread subset.

    Training-period files (all before ``cut``) and holdout files (all after) are thinned
    with the same keep fraction; a file that straddles ``cut`` is always kept. Returns
    (files, keep fraction).
    """
    inside = [fi for fi in infos if fi.ts_max > start]
    total = sum(fi.records for fi in inside)
    if not max_records or total <= max_records:
        return inside, 1.0
    frac = max_records / total
    out = [fi for fi in inside if fi.ts_min <= cut < fi.ts_max]
    for group in ([fi for fi in inside if fi.ts_max <= cut], [fi for fi in inside if fi.ts_min > cut]):
        group.sort(key=lambda fi: (fi.ts_min, str(fi.path)))
        # file i is kept when the running quota crosses an integer: evenly spread over time
        kept = [fi for i, fi in enumerate(group) if math.floor((i + 1) * frac) > math.floor(i * frac)]
        out += kept or group[-1:]  # never thin a part away completely: keep its newest file
    return sorted(out, key=lambda fi: (fi.ts_min, str(fi.path))), frac


def _segments(seqs: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) index runs of consecutive seqs (a gap = lost states or an unread file)."""
    cuts = np.flatnonzero(np.diff(seqs) != 1) + 1
    bounds = [0, *cuts.tolist(), len(seqs)]
    return list(zip(bounds[:-1], bounds[1:]))


def _cut_at(by_link: dict[str, dict[int, Telemetry]], cut: int) -> tuple[dict[str, list], list, int, int]:
    """Cut every link's runs of consecutive seqs at ``cut`` (ms): (training-period segments by link
    as (LinkSeries, ts (T,)) pairs, holdout series, training-period states, holdout states)."""
    period: dict[str, list] = {}  # link -> training-period segments: (LinkSeries, ts (T,))
    holdout: list = []
    n_train = n_hold = 0
    for lid in sorted(by_link):
        seqs = np.array(sorted(by_link[lid]), dtype=np.int64)
        for lo, hi in _segments(seqs):
            recs = [by_link[lid][int(q)] for q in seqs[lo:hi]]
            data, ts = _series(recs)
            profile = recs[-1].profile
            after = np.flatnonzero(ts > cut)
            k = int(after[0]) if len(after) else len(ts)  # rows [:k] training period, [k:] holdout
            n_train += k
            n_hold += len(ts) - k
            if len(ts) - k and len(ts) - max(0, k - WINDOW) > WINDOW:
                # the 10 states before the cut are inputs only: every holdout state is a target
                holdout.append(LinkSeries(lid, profile, data[max(0, k - WINDOW):], source="holdout",
                                          ts_range_ms=(int(ts[k]), int(ts[-1]))))  # fmt: skip
            if k > WINDOW:
                seg = LinkSeries(lid, profile, data[:k], source="window", ts_range_ms=(int(ts[0]), int(ts[k - 1])))
                period.setdefault(lid, []).append((seg, ts[:k]))
    return period, holdout, n_train, n_hold


def load_data(cfg: RetrainConfig, say: Progress = lambda s: None) -> RetrainData:
    """Read the recording, cut window / training period / holdout by time, oversample recent chunks.

    Each link's states are cut into runs of consecutive seqs first, so no window spans a
    gap. Windows never cross the holdout cut except as the holdout's input context.
    """
    if cfg.holdout_ms >= cfg.window_ms:
        raise ConfigError(f"holdout ({cfg.holdout_ms} ms) must be shorter than the window ({cfg.window_ms} ms)")
    infos = scan_files([Path(p) for p in cfg.data])
    if not infos:
        raise DataError(f"no telemetry records under {[str(p) for p in cfg.data]}")
    newest = max(fi.ts_max for fi in infos)
    start = newest - cfg.window_ms
    cut = newest - cfg.holdout_ms
    chosen, frac = select_files(infos, start, cut, newest, cfg.max_records)
    by_link: dict[str, dict[int, Telemetry]] = {}
    n_read = 0
    for r in read_jsonl([fi.path for fi in chosen]):
        if r.ts_ms <= start:
            continue
        n_read += 1
        by_link.setdefault(r.link_id, {})[r.seq] = r  # a re-sent seq keeps the last copy

    period, holdout, n_train, n_hold = _cut_at(by_link, cut)
    if len(period) < 2:
        raise DataError(
            f"need at least 2 links with more than {WINDOW} consecutive states in the training period "
            f"({_iso(start)} .. {_iso(cut)}), got {len(period)}; record longer or shorten --holdout"
        )
    if not holdout:
        raise DataError(
            f"no link has more than {WINDOW} consecutive states in the holdout {_iso(cut)} .. {_iso(newest)}"
        )
    # split by whole link: every segment of a link goes to the same side
    reps = [segs[0][0] for segs in period.values()]
    tr_reps, val_reps = split_links(reps, (0.85, 0.15), cfg.seed)
    val = [seg for rep in val_reps for seg, _ in period[rep.link_id]]
    train: list = []
    copies_seen: set[int] = set()
    for rep in tr_reps:
        for seg, seg_ts in period[rep.link_id]:
            train += _oversample(seg, seg_ts, start, cut, cfg, copies_seen)
    info = {
        "files": len(chosen),
        "files_in_window": len([fi for fi in infos if fi.ts_max > start]),
        "file_keep_fraction": round(frac, 6),
        "records_read": n_read,
        "newest_ts_ms": int(newest),
        "window": [_iso(start), _iso(newest)],
        "training_period": [_iso(start), _iso(cut)],
        "holdout": [_iso(cut), _iso(newest)],
        "training_period_records": n_train,
        "holdout_records": n_hold,
        "train_links": [r.link_id for r in tr_reps],
        "val_links": [r.link_id for r in val_reps],
        "holdout_links": len({ls.link_id for ls in holdout}),
        "recency": {
            "method": "oversampling of chunks",
            "chunk_ms": cfg.chunk_ms,
            "half_life_ms": cfg.half_life_ms,
            "train_series": len(train),
            "copies": sorted(copies_seen),
        },
    }
    say(
        f"data: {n_read} records from {len(chosen)} files (keep fraction {frac:.3g}); training period "
        f"{info['training_period']} ({n_train} states, {len(tr_reps)} train + {len(val_reps)} val links), "
        f"holdout {info['holdout']} ({n_hold} states, {info['holdout_links']} links)"
    )
    return RetrainData(train, val, holdout, info)


def _oversample(seg: Any, ts: np.ndarray, start: int, cut: int, cfg: RetrainConfig, seen: set) -> list:
    """One training segment cut into chunks of ``chunk_ms``, each repeated by its recency."""
    day = (ts - start) // cfg.chunk_ms  # (T,) chunk index of every state
    out = []
    for c in np.unique(day):
        idx = np.flatnonzero(day == c)
        lo, hi = max(0, int(idx[0]) - (WINDOW - 1)), int(idx[-1]) + 1  # keep the 9 states before the cut
        if hi - lo <= WINDOW:
            continue
        n = copies_for_age(cut - int(ts[hi - 1]), cfg.half_life_ms)
        seen.add(n)
        out += [LinkSeries(seg.link_id, seg.profile, seg.data[lo:hi], source=f"chunk{int(c)}x{n}",
                           ts_range_ms=(int(ts[lo]), int(ts[hi - 1])))] * n  # fmt: skip
    return out


# --- data ----------------------------------------------------------------------------------
@dataclass
class RetrainConfig:
    """One retraining run."""

    data: Sequence[str | Path]
    model_dir: Path = Path("models")
    window_ms: int = 14 * DAY_MS
    holdout_ms: int = DAY_MS
    margin: float = 0.02
    half_life_ms: int = 3 * DAY_MS
    quick: bool = False
    seed: int = 0
    chunk_ms: int = DAY_MS
    #: read at most about this many records: over it, whole files are thinned evenly in time
    max_records: int | None = 5_000_000
    progress: Progress | None = None
    #: extra fields for ml.train.TrainConfig (tests: smaller LSTM/DDQN configs)
    train_overrides: dict[str, Any] = field(default_factory=dict)
