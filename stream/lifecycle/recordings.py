"""Recordings on disk: part naming, manifests, and reading files back in time order
(shared by the recorder, replay, backtest and retraining).

Layout under the output directory::

    YYYY-MM-DD/HH.part-0001.jsonl.gz            valid records, one JSON object per line
    YYYY-MM-DD/HH.part-0001.manifest.json       topic, partition offset ranges, counts, ts range
    YYYY-MM-DD/HH.part-0001.invalid.jsonl.gz    records that failed validation (only if any)

The hour is the UTC hour of the record's ``ts_ms`` (what replay, retraining and
backtests filter on); a record that fails validation has no trustworthy ``ts_ms``
and is filed under its Kafka message timestamp (else the wall clock). A valid
record's line is the value exactly as received when it is one line, else its
canonical re-serialisation. An invalid record is kept, never silently dropped, as
``{"topic", "partition", "offset", "timestamp_ms", "error", "value_b64"}`` in the
``.invalid`` file (base64 because it may not even be UTF-8).

Compaction: once records more than ``compact_grace_ms`` (10 min) past the end of an
hour have arrived, that hour's parts are merged (streamed) into one new part whose
manifest lists the parts it ``replaces``; the old parts are removed after the merged
manifest is in place. A crash in between is finished at the next start, and readers
(:func:`recording_files`) skip replaced parts meanwhile. So a closed hour is one file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.core.errors import DataError
from stream.core.fileio import fsync_dir, gzip_concat_temp, lines_temp
from stream.core.jsonl import read_jsonl
from stream.core.records import Telemetry

_ANY_PART_RE = re.compile(r"^(\d{2})\.part-(\d{4,})\.(jsonl\.gz|invalid\.jsonl\.gz|manifest\.json)$")

MANIFEST_SUFFIX = ".manifest.json"

INVALID_SUFFIX = ".invalid.jsonl.gz"


def hour_of(ts_ms: int) -> tuple[str, str]:
    """(``YYYY-MM-DD``, ``HH``) of a UTC epoch-millisecond timestamp."""
    t = dt.datetime.fromtimestamp(ts_ms / 1000.0, dt.UTC)
    return t.strftime("%Y-%m-%d"), t.strftime("%H")


def manifest_path(part: Path) -> Path:
    """The manifest next to a data part ``HH.part-NNNN.jsonl.gz``."""
    return part.with_name(part.name[: -len(".jsonl.gz")] + MANIFEST_SUFFIX)


def replaced_stems(day: Path) -> set[str]:
    """Parts (``HH.part-NNNN``) in folder ``day`` that a committed compaction replaces."""
    out: set[str] = set()
    for man in day.glob(f"*{MANIFEST_SUFFIX}"):
        try:
            out.update(json.loads(man.read_text(encoding="utf-8")).get("replaces") or [])
        except (OSError, ValueError, AttributeError):
            continue  # being replaced right now, or not ours: readers must not fail on it
    return out


def recording_files(paths: Path | str | list[Path | str]) -> list[Path]:
    """Telemetry files under ``paths`` (files or folders, recursive): ``*.jsonl`` and ``*.jsonl.gz``,
    without manifests and ``.invalid`` parts, sorted by path."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [f for f in p.rglob("*") if f.is_file() and f.name.endswith((".jsonl", ".jsonl.gz"))]
            replaced: dict[Path, set[str]] = {}
            for f in sorted(found):
                if f.name.endswith(INVALID_SUFFIX) or f.name.startswith("."):
                    continue
                if _ANY_PART_RE.match(f.name):
                    if f.parent not in replaced:
                        replaced[f.parent] = replaced_stems(f.parent)
                    if f.name[: -len(".jsonl.gz")] in replaced[f.parent]:
                        continue  # merged into a compacted part whose clean-up was interrupted
                out.append(f)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"telemetry path {p} does not exist")
    return out


def read_manifest(part: Path) -> dict[str, Any] | None:
    """The manifest of a recorded part, or None for a plain file."""
    man = manifest_path(part) if part.name.endswith(".jsonl.gz") else None
    if man is None or not man.is_file():
        return None
    try:
        return json.loads(man.read_text(encoding="utf-8"))
    except ValueError:
        return None


@dataclass
class FileInfo:
    """One telemetry file's record count and ts_ms range."""

    path: Path
    records: int
    ts_min: int
    ts_max: int


def scan_files(paths: list[Path | str] | Path | str) -> list[FileInfo]:
    """Count records and ts range of every telemetry file under ``paths`` (manifests when present)."""
    infos = []
    for f in recording_files(paths):
        man = read_manifest(f)
        if man is not None and man.get("records") is not None and man.get("ts_ms") and None not in man["ts_ms"]:
            infos.append(FileInfo(f, int(man["records"]), int(man["ts_ms"][0]), int(man["ts_ms"][1])))
            continue
        if man is not None and man.get("records") == 0:
            continue  # a part with only invalid records
        n, lo, hi = 0, None, None
        for r in read_jsonl(f):
            n += 1
            lo = r.ts_ms if lo is None else min(lo, r.ts_ms)
            hi = r.ts_ms if hi is None else max(hi, r.ts_ms)
        if n:
            infos.append(FileInfo(f, n, lo, hi))  # type: ignore[arg-type]
    return infos


def _groups(infos: list[FileInfo]) -> list[list[FileInfo]]:
    """Files grouped so that groups' ts ranges do not overlap, in time order."""
    groups: list[list[FileInfo]] = []
    hi = None
    for fi in sorted(infos, key=lambda f: (f.ts_min, f.ts_max, str(f.path))):
        if groups and hi is not None and fi.ts_min <= hi:
            groups[-1].append(fi)
            hi = max(hi, fi.ts_max)
        else:
            groups.append([fi])
            hi = fi.ts_max
    return groups


def iter_sorted(
    paths: list[Path | str] | Path | str, t_from: int | None = None, t_to: int | None = None
) -> tuple[int, Iterator[Telemetry]]:
    """(upper bound of the record count, records sorted by (ts_ms, seq), within [t_from, t_to])."""
    infos = [
        fi
        for fi in scan_files(paths)
        if (t_from is None or fi.ts_max >= t_from) and (t_to is None or fi.ts_min <= t_to)
    ]
    total = sum(fi.records for fi in infos)

    def gen() -> Iterator[Telemetry]:
        for group in _groups(infos):
            # path order inside a group, so the stable sort keeps file order for equal keys
            recs = [
                r
                for r in read_jsonl(sorted(fi.path for fi in group))
                if (t_from is None or r.ts_ms >= t_from) and (t_to is None or r.ts_ms <= t_to)
            ]
            recs.sort(key=lambda r: (r.ts_ms, r.seq))
            yield from recs

    return total, gen()


def merge_runs(runs: list[list[int]]) -> list[list[int]]:
    """Inclusive offset runs -> sorted, merged runs (adjacent ones joined)."""
    out: list[list[int]] = []
    for a, b in sorted(runs):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def remove_part(day: Path, stem: str) -> None:
    """Delete one part: manifest first (so a crash never leaves a manifest without data)."""
    (day / f"{stem}{MANIFEST_SUFFIX}").unlink(missing_ok=True)
    (day / f"{stem}.jsonl.gz").unlink(missing_ok=True)
    (day / f"{stem}{INVALID_SUFFIX}").unlink(missing_ok=True)


def commit_part(part: Path, tmp_data: Path | None, tmp_inv: Path | None, tmp_man: Path) -> None:
    """Rename a part's fsynced temporary files into place, data first and the manifest last (a
    part without a manifest is an unfinished write), then fsync the folder."""
    d = part.parent
    stem = part.name.removesuffix(".jsonl.gz")
    if tmp_data is not None:
        os.replace(tmp_data, part)
    if tmp_inv is not None:
        os.replace(tmp_inv, d / f"{stem}{INVALID_SUFFIX}")
    os.replace(tmp_man, manifest_path(part))
    fsync_dir(d)


def write_merged_part(d: Path, day: str, hour: str, stem: str, mans: list[Path]) -> tuple[Path, list[str]]:
    """Merge the parts whose manifests are ``mans`` into one new part ``stem`` of ``d`` and commit
    it (its manifest lists the parts it ``replaces``); returns (the part, the replaced stems).

    The replaced parts stay until the caller removes them: a crash in between leaves both,
    and readers skip replaced parts. Streams the data, so memory stays small.
    """
    part = d / f"{stem}.jsonl.gz"
    metas = [json.loads(m.read_text(encoding="utf-8")) for m in mans]
    replaces = [m.name[: -len(MANIFEST_SUFFIX)] for m in mans]
    records = sum(int(m.get("records") or 0) for m in metas)
    invalid = sum(int(m.get("invalid") or 0) for m in metas)
    tmp_data = gzip_concat_temp(part, [d / m["file"] for m in metas if m.get("file")]) if records else None
    inv_files = [d / m["invalid_file"] for m in metas if m.get("invalid_file")]
    tmp_inv = gzip_concat_temp(d / f"{stem}{INVALID_SUFFIX}", inv_files) if invalid else None
    offsets: dict[str, dict[str, list[list[int]]]] = defaultdict(dict)
    runs: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
    for m in metas:
        for topic, parts in m["offsets"].items():
            for p, ranges in parts.items():
                runs[(topic, p)].extend([list(r) for r in ranges])
    for (topic, p), rs in sorted(runs.items()):
        offsets[topic][p] = merge_runs(rs)
    ts = [t for m in metas for t in (m.get("ts_ms") or []) if t is not None]
    manifest = {
        "file": part.name if records else None,
        "invalid_file": f"{stem}{INVALID_SUFFIX}" if invalid else None,
        "hour_utc": f"{day}T{hour}:00:00Z",
        "records": records,
        "invalid": invalid,
        "ts_ms": [min(ts), max(ts)] if ts else [None, None],
        "offsets": offsets,
        "replaces": replaces,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    tmp_man = lines_temp(manifest_path(part), [json.dumps(manifest, indent=2).encode()], gz=False)
    commit_part(part, tmp_data, tmp_inv, tmp_man)  # the commit point of the compaction
    return part, replaces


def offset_runs(offsets: list[int]) -> list[list[int]]:
    """Sorted offsets -> inclusive runs ``[[first, last], ...]``."""
    out: list[list[int]] = []
    for o in sorted(offsets):
        if out and o == out[-1][1] + 1:
            out[-1][1] = o
        else:
            out.append([o, o])
    return out
