"""``bwp retrain``: train a candidate on recent recorded telemetry; promote it only through a gate.

Data (all by record ``ts_ms``, relative to the newest record ``T``):

* window  = ``(T - window, T]``; older records are ignored;
* holdout = ``(T - holdout, T]``: never trained on (nor used for early stopping);
  each link's holdout series is prefixed with its last 10 pre-holdout states as
  *inputs* only, so every holdout state is a scored target;
* the rest is the training period. Its links are split 85 / 15 by whole link into
  training and validation (EarlyStopping / ReduceLROnPlateau) links.

Each link's states are first cut into runs of consecutive ``seq`` (a gap = lost
states or an unread file), so no window spans a gap. Above ``max_records`` (5 M) in
the window, whole files are thinned evenly in time (:func:`select_files`; manifests
give the counts without reading): the LSTM uses at most 60 k windows anyway, and 14
days of 1000 links at 1 Hz would be 1.2 G records.

Recency weighting: ``ml.train`` has no per-sample weights, so recent data is
*oversampled*: each training link is cut into one-day chunks (each chunk keeps the
9 states before it so no window is lost at a cut) and a chunk whose newest state
is ``a`` old appears ``1 + round(3 * 0.5 ** (a / half_life))`` times (4 copies for
the newest day, 3 at one half-life, 2 at two, 1 from about 2.6 half-lives on). The LSTM subsamples
windows uniformly, so copies act as weights; the DDQN draws its episodes from the
same chunks.

Gate (:func:`decide`): the candidate is promoted only if its holdout MAE is at
least ``margin`` (relative) below the current model's MAE **and** below every naive
baseline's MAE on the same holdout. With no current model only the baselines count.
Otherwise the candidate stays registered, not current. Every run (failures too)
writes ``<model_dir>/retrain-reports/<UTC timestamp>.json`` and returns the same
report. A non-blocking ``flock`` on ``<model_dir>/.retrain.lock`` keeps two runs
from training and promoting at the same time.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from stream.errors import BwpError, ConfigError, DataError
from stream.records import WINDOW, Telemetry

LOCK_FILE = ".retrain.lock"
REPORTS_DIR = "retrain-reports"
DAY_MS = 86_400_000
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}
Progress = Callable[[str], None]


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``6h``, ``14d``, ``2w`` (or plain milliseconds) -> milliseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", str(text))
    if not m:
        raise ConfigError(f"duration must look like 30m, 6h, 14d or 2w, got {text!r}")
    ms = float(m.group(1)) * _UNITS[m.group(2) or "ms"]
    if ms <= 0:
        raise ConfigError(f"duration must be > 0, got {text!r}")
    return int(ms)


# --- the gate ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """Whether to promote, and why (one sentence for humans, the numbers in the report)."""

    promote: bool
    reason: str


def _mae(metrics: dict[str, Any], name: str) -> float:
    try:
        return float(metrics["predictors"][name]["mae"])
    except (KeyError, TypeError, ValueError):
        return math.nan


def decide(candidate_metrics: dict[str, Any], current_metrics: dict[str, Any] | None, margin: float) -> Decision:
    """The promotion gate.

    ``candidate_metrics`` / ``current_metrics`` are ``ml.evaluate`` reports on the same
    holdout (``{"predictors": {"lstm": {"mae"}, "last_value": {...}, ...}}``); the
    baselines are taken from the candidate's report. Promote iff the candidate's MAE
    is finite and ``<= (1 - margin) * ref`` for every reference: the current model's
    MAE (if there is a current model) and every baseline's MAE.
    """
    if not 0.0 <= margin < 1.0:
        raise ConfigError(f"margin must be in [0, 1), got {margin}")
    cand = _mae(candidate_metrics, "lstm")
    if not math.isfinite(cand):
        return Decision(False, f"candidate MAE is not a number ({cand}); nothing was scored")
    refs: dict[str, float] = {}
    if current_metrics is not None:
        refs["current model"] = _mae(current_metrics, "lstm")
    for name in candidate_metrics.get("predictors", {}):
        if name != "lstm":
            refs[name] = _mae(candidate_metrics, name)
    if not any(n != "current model" for n in refs):
        return Decision(False, "the candidate report has no baseline predictors to compare with")
    losing = []
    for name, ref in refs.items():
        if not math.isfinite(ref):
            if name == "current model":
                return Decision(False, f"the current model's MAE is not a number ({ref}); refusing to compare")
            continue
        if not cand <= (1.0 - margin) * ref:
            losing.append(f"{name} {ref:.4g}")
    bar = f"by {margin:.1%}" if margin else ""
    if losing:
        return Decision(False, f"candidate MAE {cand:.4g} does not beat {', '.join(losing)} {bar}".rstrip())
    best = min(v for v in refs.values() if math.isfinite(v))
    vs = "the current model and every baseline" if current_metrics is not None else "every baseline (no current model)"
    return Decision(True, f"candidate MAE {cand:.4g} beats {vs} {bar} (best reference {best:.4g})".replace("  ", " "))


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


def load_data(cfg: RetrainConfig, say: Progress = lambda s: None) -> RetrainData:
    """Read the recording, cut window / training period / holdout by time, oversample recent chunks.

    Each link's states are cut into runs of consecutive seqs first, so no window spans a
    gap. Windows never cross the holdout cut except as the holdout's input context.
    """
    from ml.data import LinkSeries, split_links
    from stream.jsonl import read_jsonl
    from stream.replay import scan_files

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
    if len(period) < 2:
        raise DataError(
            f"need at least 2 links with more than {WINDOW} consecutive states in the training period "
            f"({_iso(start)} .. {_iso(cut)}), got {len(period)}; record longer or shorten --holdout"
        )
    if not holdout:
        raise DataError(f"no link has more than {WINDOW} consecutive states in the holdout {_iso(cut)} .. {_iso(newest)}")
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
    from ml.data import LinkSeries

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


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the run -------------------------------------------------------------------------------
class RetrainLock:
    """Non-blocking exclusive ``flock`` on ``<model_dir>/.retrain.lock``."""

    def __init__(self, model_dir: Path | str) -> None:
        self.path = Path(model_dir) / LOCK_FILE
        self._fh: Any = None

    def __enter__(self) -> "RetrainLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise BwpError(
                f"another `bwp retrain` holds {self.path}; two runs must not train and promote at once "
                "(wait for it, or remove nothing: the lock is released when that process exits)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the flock
            self._fh = None


def write_report(model_dir: Path | str, report: dict[str, Any]) -> Path:
    """Atomically write the report to ``<model_dir>/retrain-reports/<timestamp>.json``."""
    d = Path(model_dir) / REPORTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = d / f"{stamp}.json"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".report.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path


def _default_progress(msg: str) -> None:
    import sys

    print(f"[bwp retrain {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_retrain(cfg: RetrainConfig, settings: Any = None) -> dict[str, Any]:
    """Train, evaluate, gate, maybe promote; returns the report (also written to the registry).

    ``settings`` (optional) locates the "retrain requested" flag (Redis key and file in
    the model dir); it is read at the start and cleared after a run that reached a
    decision. Raises :class:`BwpError` subclasses on failure (a report with the error
    is written first).
    """
    from ml import registry

    say = cfg.progress or _default_progress
    model_dir = Path(cfg.model_dir)
    report: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "data": [str(p) for p in cfg.data],
            "model_dir": str(model_dir),
            "window_ms": cfg.window_ms,
            "holdout_ms": cfg.holdout_ms,
            "margin": cfg.margin,
            "half_life_ms": cfg.half_life_ms,
            "quick": cfg.quick,
            "seed": cfg.seed,
            "max_records": cfg.max_records,
        },
    }
    flag = None
    with RetrainLock(model_dir):
        try:
            if settings is not None:
                from stream.drift import RetrainFlag

                # an unreachable Redis is tolerated by read/clear: the file flag still works
                flag = RetrainFlag.from_settings(settings, model_dir=model_dir)
                report["requested"] = flag.read()
            started = time.monotonic()
            data = load_data(cfg, say)
            report["data"] = data.info
            current = registry.current_version(model_dir)
            report["current"] = {"version": current}

            from ml.train import TrainConfig, train

            tcfg = TrainConfig(
                model_dir=model_dir,
                quick=cfg.quick,
                promote=False,
                seed=cfg.seed,
                progress=say,
                splits=(data.train, data.val, data.holdout),
                splits_info={"retrain": {k: v for k, v in data.info.items() if not k.endswith("_links")}},
                **cfg.train_overrides,
            )
            t0 = time.monotonic()
            try:
                cand = train(tcfg)
            except BwpError:
                raise
            except Exception as exc:  # keras/TF raise many types
                raise BwpError(f"training the candidate failed: {type(exc).__name__}: {exc}") from exc
            report["candidate"] = {"version": cand, "train_seconds": round(time.monotonic() - t0, 1)}

            from ml.evaluate import evaluate_links

            cand_rep = evaluate_links(model_dir, cand, data.holdout)
            report["candidate"]["metrics"] = cand_rep
            cur_rep = None
            if current is not None:
                try:
                    cur_rep = evaluate_links(model_dir, current, data.holdout)
                except BwpError as exc:
                    # a current model that cannot be loaded is no reason to keep it
                    report["current"]["error"] = str(exc)
                    say(f"current model {current} cannot be evaluated: {exc}")
                report["current"]["metrics"] = cur_rep
            decision = decide(cand_rep, cur_rep, cfg.margin)
            if current is not None and cur_rep is None and decision.promote:
                decision = Decision(True, decision.reason + f"; current model {current} failed to load")
            if decision.promote:
                registry.promote(model_dir, cand)
            report["decision"] = asdict(decision)
            report["seconds"] = round(time.monotonic() - started, 1)
            say(("PROMOTED " + cand if decision.promote else f"not promoted, current stays {current}") + ": " + decision.reason)
            report["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            report["report_path"] = str(write_report(model_dir, report))
            if flag is not None:
                flag.clear()  # only after a run that reached a decision: a failed run leaves it for the next
        except BwpError as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
            report["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            report["report_path"] = str(write_report(model_dir, report))
            raise
        finally:
            if flag is not None and flag.redis is not None:
                flag.redis.close()
    return report
