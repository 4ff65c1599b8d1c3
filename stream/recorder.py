"""``bwp record``: the telemetry topic to hourly gzip JSON-lines files, restart-safe.

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

Restart safety (no record lost, none duplicated):

1. Consumed records are buffered in memory; the consumer never auto-commits.
2. A flush (every ``flush_records`` records or ``flush_interval_s`` seconds, on
   shutdown and before partitions are revoked) writes, per hour touched, a data
   part and its manifest to temporary names, ``fsync``s them, renames the data part
   and then the manifest into place, and ``fsync``s the folder.
3. Only then are the consumed offsets committed (synchronously).

Compaction: once records more than ``compact_grace_ms`` (10 min) past the end of an
hour have arrived, that hour's parts are merged (streamed) into one new part whose
manifest lists the parts it ``replaces``; the old parts are removed after the merged
manifest is in place. A crash in between is finished at the next start, and readers
(:func:`recording_files`) skip replaced parts meanwhile. So a closed hour is one file.

A crash before 3 leaves parts whose offsets are not committed: after a restart the
consumer re-reads them, and every message whose offset is at or below the highest
offset any manifest records for its partition is skipped (counted as
``duplicates_skipped``). A data part without a manifest (crash between the two
renames) is an unfinished flush and is deleted at start-up; its records were not
committed either, so they are consumed again. One recorder per output directory
(an ``flock`` on ``.recorder.lock`` enforces it).
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import gzip
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from stream.errors import BwpError, DataError, StackError, TelemetryDecodeError
from stream.records import Telemetry
from stream.settings import Settings

_ANY_PART_RE = re.compile(r"^(\d{2})\.part-(\d{4,})\.(jsonl\.gz|invalid\.jsonl\.gz|manifest\.json)$")
MANIFEST_SUFFIX = ".manifest.json"
INVALID_SUFFIX = ".invalid.jsonl.gz"
LOCK_FILE = ".recorder.lock"


def hour_of(ts_ms: int) -> tuple[str, str]:
    """(``YYYY-MM-DD``, ``HH``) of a UTC epoch-millisecond timestamp."""
    t = dt.datetime.fromtimestamp(ts_ms / 1000.0, dt.timezone.utc)
    return t.strftime("%Y-%m-%d"), t.strftime("%H")


def manifest_path(part: Path) -> Path:
    """The manifest next to a data part ``HH.part-NNNN.jsonl.gz``."""
    return part.with_name(part.name[: -len(".jsonl.gz")] + MANIFEST_SUFFIX)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, lines: list[bytes], gz: bool) -> Path:
    """Write to a temporary file in the same folder, fsync it; returns the temp path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as raw:
        if gz:
            # mtime=0: identical content gives identical bytes (reproducible files)
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as fh:
                for line in lines:
                    fh.write(line)
                    fh.write(b"\n")
        else:
            raw.write(b"".join(lines))
        raw.flush()
        os.fsync(raw.fileno())
    return Path(tmp)


def _concat_durable(path: Path, sources: list[Path]) -> Path:
    """Gzip the concatenated (decompressed) ``sources`` to a fsynced temp file next to ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as out:
            for src in sources:
                with gzip.open(src, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    return Path(tmp)


def _merge_runs(runs: list[list[int]]) -> list[list[int]]:
    """Inclusive offset runs -> sorted, merged runs (adjacent ones joined)."""
    out: list[list[int]] = []
    for a, b in sorted(runs):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _remove_part(day: Path, stem: str) -> None:
    """Delete one part: manifest first (so a crash never leaves a manifest without data)."""
    (day / f"{stem}{MANIFEST_SUFFIX}").unlink(missing_ok=True)
    (day / f"{stem}.jsonl.gz").unlink(missing_ok=True)
    (day / f"{stem}{INVALID_SUFFIX}").unlink(missing_ok=True)


def replaced_stems(day: Path) -> set[str]:
    """Parts (``HH.part-NNNN``) in folder ``day`` that a committed compaction replaces."""
    out: set[str] = set()
    for man in day.glob(f"*{MANIFEST_SUFFIX}"):
        try:
            out.update(json.loads(man.read_text(encoding="utf-8")).get("replaces") or [])
        except (OSError, ValueError, AttributeError):
            continue  # being replaced right now, or not ours: readers must not fail on it
    return out


@dataclass
class _Bucket:
    """Records of one hour waiting for the next flush."""

    lines: list[bytes] = field(default_factory=list)
    invalid: list[bytes] = field(default_factory=list)
    # (topic, partition) -> offsets, in consumption (= offset) order
    offsets: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    ts_min: int | None = None
    ts_max: int | None = None


def _ranges(offsets: list[int]) -> list[list[int]]:
    """Sorted offsets -> inclusive runs ``[[first, last], ...]``."""
    out: list[list[int]] = []
    for o in sorted(offsets):
        if out and o == out[-1][1] + 1:
            out[-1][1] = o
        else:
            out.append([o, o])
    return out


@dataclass
class RecorderStats:
    """Counters shown in the progress line and returned by :meth:`Recorder.run`."""

    consumed: int = 0
    recorded: int = 0
    invalid: int = 0
    duplicates_skipped: int = 0
    parts_written: int = 0
    orphans_removed: int = 0
    commits: int = 0
    compactions: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Recorder:
    """Consume ``settings.telemetry_topic`` in its own group and write hourly parts under ``out_dir``."""

    def __init__(
        self,
        settings: Settings,
        out_dir: Path | str,
        group: str = "bwp-recorder",
        max_records: int | None = None,
        idle_exit_s: float | None = None,
        flush_records: int = 50_000,
        flush_interval_s: float = 30.0,
        progress: TextIO | None = sys.stderr,
        consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
        compact_grace_ms: int | None = 600_000,
    ) -> None:
        self.settings = settings
        self.out = Path(out_dir)
        self.group = group
        self.max_records = max_records
        self.idle_exit_s = idle_exit_s
        self.flush_records = flush_records
        self.flush_interval_s = flush_interval_s
        self.progress = progress
        self._consumer_factory = consumer_factory
        self.stats = RecorderStats()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._buffered = 0
        self._next: dict[tuple[str, int], int] = {}  # offsets to commit at the next flush
        self._recorded_hw: dict[tuple[str, int], int] = {}  # highest offset in any manifest
        self._part_no: dict[tuple[str, str], int] = {}
        self._live: dict[tuple[str, str], int] = {}  # parts (manifests) per hour on disk
        self._max_ts: int | None = None  # newest valid ts_ms recorded or buffered
        self.compact_grace_ms = compact_grace_ms
        self._stop = False
        self._lock_fh: Any = None
        self._consumer: Any = None
        self._assigned_at: float | None = None

    # --- start-up: lock, orphans, what is already recorded ---------------------------------
    def _lock(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.out / LOCK_FILE, "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            raise BwpError(f"another `bwp record` is already writing to {self.out} (lock {self.out / LOCK_FILE})")

    def scan(self) -> None:
        """Finish interrupted compactions, delete unfinished parts, read every manifest
        (offset high-water marks, part numbers, parts per hour, newest ts)."""
        for day in sorted(p for p in self.out.iterdir() if p.is_dir()):
            for tmp in day.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)  # a flush that never reached its rename
            for stem in replaced_stems(day):
                # a compaction committed (its manifest exists) but died before removing its inputs
                _remove_part(day, stem)
            for f in sorted(day.iterdir()):
                m = _ANY_PART_RE.match(f.name)
                if not m:
                    continue
                key = (day.name, m.group(1))
                self._part_no[key] = max(self._part_no.get(key, 0), int(m.group(2)))
                if f.name.endswith(MANIFEST_SUFFIX):
                    self._live[key] = self._live.get(key, 0) + 1
                    continue
                if not (day / f"{m.group(1)}.part-{m.group(2)}{MANIFEST_SUFFIX}").is_file():
                    # renamed before its manifest: offsets never committed, records come again
                    f.unlink()
                    self.stats.orphans_removed += 1
            for man in sorted(day.glob(f"*{MANIFEST_SUFFIX}")):
                try:
                    meta = json.loads(man.read_text(encoding="utf-8"))
                    for topic, parts in meta["offsets"].items():
                        for p, ranges in parts.items():
                            tp = (topic, int(p))
                            hi = max(r[1] for r in ranges)
                            self._recorded_hw[tp] = max(self._recorded_hw.get(tp, -1), hi)
                    if meta.get("records") and meta["ts_ms"][1] is not None:
                        self._max_ts = max(self._max_ts or 0, int(meta["ts_ms"][1]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise DataError(f"recording manifest {man} is not valid: {exc}") from exc

    # --- consuming ---------------------------------------------------------------------------
    def _make_consumer(self) -> Any:
        cfg = self.settings.confluent_config(
            **{
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "session.timeout.ms": int(self.settings.broker_session_timeout_s * 1000),
                "heartbeat.interval.ms": int(min(3.0, self.settings.broker_session_timeout_s / 3) * 1000),
            }
        )
        if self._consumer_factory is not None:
            return self._consumer_factory(cfg)
        from confluent_kafka import Consumer

        return Consumer(cfg)

    def _on_assign(self, consumer: Any, partitions: Any) -> None:
        self._assigned_at = time.monotonic()

    def _on_revoke(self, consumer: Any, partitions: Any) -> None:
        # our buffered records of these partitions must be on disk and committed before another
        # member of the group takes over, or it would record them a second time
        self.flush()

    def _add(self, msg: Any) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        tp = (topic, partition)
        self.stats.consumed += 1
        self._next[tp] = offset + 1
        if offset <= self._recorded_hw.get(tp, -1):
            self.stats.duplicates_skipped += 1
            return
        raw = msg.value()
        try:
            rec = Telemetry.from_bytes(raw)
            ts = rec.ts_ms
            self._max_ts = ts if self._max_ts is None else max(self._max_ts, ts)
            line = raw if b"\n" not in raw and b"\r" not in raw else rec.to_bytes()
            invalid = None
        except TelemetryDecodeError as exc:
            kts = msg.timestamp()[1] if msg.timestamp() and msg.timestamp()[0] else -1
            ts = kts if kts and kts > 0 else int(time.time() * 1000)
            line = None
            invalid = json.dumps(
                {
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "timestamp_ms": kts if kts and kts > 0 else None,
                    "error": str(exc),
                    "value_b64": base64.b64encode(raw or b"").decode(),
                },
                separators=(",", ":"),
            ).encode()
        b = self._buckets.get(hour_of(ts))
        if b is None:
            b = self._buckets[hour_of(ts)] = _Bucket()
        if line is not None:
            b.lines.append(line)
            self.stats.recorded += 1
        else:
            b.invalid.append(invalid)  # type: ignore[arg-type]
            self.stats.invalid += 1
        b.offsets[tp].append(offset)
        b.ts_min = ts if b.ts_min is None else min(b.ts_min, ts)
        b.ts_max = ts if b.ts_max is None else max(b.ts_max, ts)
        self._buffered += 1

    def flush(self) -> None:
        """Write every buffered hour as a durable part + manifest, then commit the offsets."""
        for (day, hour), b in sorted(self._buckets.items()):
            d = self.out / day
            d.mkdir(parents=True, exist_ok=True)
            n = self._part_no.get((day, hour), 0) + 1
            self._part_no[(day, hour)] = n
            stem = f"{hour}.part-{n:04d}"
            part = d / f"{stem}.jsonl.gz"
            offsets: dict[str, dict[str, list[list[int]]]] = defaultdict(dict)
            for (topic, p), offs in sorted(b.offsets.items()):
                offsets[topic][str(p)] = _ranges(offs)
            manifest = {
                "file": part.name if b.lines else None,
                "invalid_file": f"{stem}{INVALID_SUFFIX}" if b.invalid else None,
                "hour_utc": f"{day}T{hour}:00:00Z",
                "records": len(b.lines),
                "invalid": len(b.invalid),
                "ts_ms": [b.ts_min, b.ts_max],
                "offsets": offsets,
                "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            tmp_data = _write_durable(part, b.lines, gz=True) if b.lines else None
            tmp_inv = _write_durable(d / f"{stem}{INVALID_SUFFIX}", b.invalid, gz=True) if b.invalid else None
            tmp_man = _write_durable(
                manifest_path(part), [json.dumps(manifest, indent=2).encode()], gz=False
            )
            # data first, manifest last: a part without a manifest is an unfinished flush
            if tmp_data is not None:
                os.replace(tmp_data, part)
            if tmp_inv is not None:
                os.replace(tmp_inv, d / f"{stem}{INVALID_SUFFIX}")
            os.replace(tmp_man, manifest_path(part))
            _fsync_dir(d)
            _fsync_dir(self.out)
            for tp, offs in b.offsets.items():
                self._recorded_hw[tp] = max(self._recorded_hw.get(tp, -1), max(offs))
            self._live[(day, hour)] = self._live.get((day, hour), 0) + 1
            self.stats.parts_written += 1
        self._buckets.clear()
        self._buffered = 0
        self._commit()
        if self.compact_grace_ms is not None:
            self._compact_closed()

    def _compact_closed(self) -> None:
        """Merge the parts of every hour that ended ``compact_grace_ms`` before the newest record."""
        if self._max_ts is None:
            return
        for (day, hour), n in sorted(self._live.items()):
            end = int(dt.datetime.fromisoformat(f"{day}T{hour}:00:00+00:00").timestamp() * 1000) + 3_600_000
            if n >= 2 and end + self.compact_grace_ms <= self._max_ts:
                self.compact(day, hour)

    def compact(self, day: str, hour: str) -> str | None:
        """Merge every part of one hour into a single new part; returns its name (None: nothing to do).

        Crash-safe: the merged part and its manifest (which lists the parts it
        ``replaces``) are written and renamed like any part; only then are the old
        parts removed. A crash in between leaves both; :meth:`scan` (and
        :func:`recording_files`, for readers) then ignore the replaced parts.
        Streams the data, so memory stays small whatever the hour's size.
        """
        d = self.out / day
        mans = sorted(d.glob(f"{hour}.part-*{MANIFEST_SUFFIX}"))
        if len(mans) < 2:
            return None
        metas = [json.loads(m.read_text(encoding="utf-8")) for m in mans]
        replaces = [m.name[: -len(MANIFEST_SUFFIX)] for m in mans]
        n = self._part_no.get((day, hour), 0) + 1
        self._part_no[(day, hour)] = n
        stem = f"{hour}.part-{n:04d}"
        part = d / f"{stem}.jsonl.gz"
        records = sum(int(m.get("records") or 0) for m in metas)
        invalid = sum(int(m.get("invalid") or 0) for m in metas)
        tmp_data = _concat_durable(part, [d / m["file"] for m in metas if m.get("file")]) if records else None
        inv_files = [d / m["invalid_file"] for m in metas if m.get("invalid_file")]
        tmp_inv = _concat_durable(d / f"{stem}{INVALID_SUFFIX}", inv_files) if invalid else None
        offsets: dict[str, dict[str, list[list[int]]]] = defaultdict(dict)
        runs: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
        for m in metas:
            for topic, parts in m["offsets"].items():
                for p, ranges in parts.items():
                    runs[(topic, p)].extend([list(r) for r in ranges])
        for (topic, p), rs in sorted(runs.items()):
            offsets[topic][p] = _merge_runs(rs)
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
            "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        tmp_man = _write_durable(manifest_path(part), [json.dumps(manifest, indent=2).encode()], gz=False)
        if tmp_data is not None:
            os.replace(tmp_data, part)
        if tmp_inv is not None:
            os.replace(tmp_inv, d / f"{stem}{INVALID_SUFFIX}")
        os.replace(tmp_man, manifest_path(part))  # the commit point of the compaction
        _fsync_dir(d)
        self._after_compaction_commit()
        for old in replaces:
            _remove_part(d, old)
        _fsync_dir(d)
        self._live[(day, hour)] = 1
        self.stats.compactions += 1
        return part.name

    def _after_compaction_commit(self) -> None:
        """Test hook: a crash here leaves merged and replaced parts side by side."""

    def _commit(self) -> None:
        if not self._next or self._consumer is None:
            return
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(self._next.items())]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            # the files are durable; an uncommitted offset only means re-reading (and skipping) later
            print(f"bwp record: warning: offset commit failed, will retry at the next flush: {exc}", file=sys.stderr)
            return
        self.stats.commits += 1
        self._next.clear()

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish: flush, commit and close (signal-handler safe)."""
        self._stop = True

    def _say(self, started: float, final: bool = False) -> None:
        if self.progress is None:
            return
        s = self.stats
        rate = s.consumed / max(1e-9, time.monotonic() - started)
        self.progress.write(
            f"\rbwp record: {s.recorded} recorded, {s.invalid} invalid, {s.duplicates_skipped} duplicates skipped, "
            f"{s.parts_written} parts, {rate:,.0f} rec/s" + ("\n" if final else "")
        )
        self.progress.flush()

    def run(self, install_signals: bool = True) -> RecorderStats:
        """Consume until stopped (signal, ``max_records`` or ``idle_exit_s``); returns the counters."""
        self._lock()
        old_handlers = {}
        try:
            self.scan()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    old_handlers[sig] = signal.signal(sig, self.stop)
            self._consumer = self._make_consumer()
            self._consumer.subscribe(
                [self.settings.telemetry_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
            )
            started = last_msg = last_flush = last_say = time.monotonic()
            while not self._stop:
                msgs = self._consumer.consume(num_messages=1000, timeout=0.2)
                now = time.monotonic()
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise StackError(f"Kafka consumer failed: {err}")
                        continue  # transient (e.g. partition EOF / rebalance notices)
                    self._add(msg)
                    last_msg = now
                    if self.max_records is not None and self.stats.recorded + self.stats.invalid >= self.max_records:
                        self._stop = True
                        break
                if self._buffered >= self.flush_records or (
                    self._buffered and now - last_flush >= self.flush_interval_s
                ):
                    self.flush()
                    last_flush = now
                # idle time counts from the assignment: joining the group can take seconds
                if (
                    self.idle_exit_s is not None
                    and self._assigned_at is not None
                    and now - max(last_msg, self._assigned_at) >= self.idle_exit_s
                ):
                    break
                if now - last_say >= 2.0:
                    self._say(started)
                    last_say = now
            self.flush()
            self._say(started, final=True)
            return self.stats
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            if self._lock_fh is not None:
                self._lock_fh.close()
                self._lock_fh = None


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
