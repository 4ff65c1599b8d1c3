"""Importers that turn real bandwidth traces into :class:`~stream.records.Telemetry` links.

Formats (details, units and every fill rule in ``docs/traces.md``):

* ``pensieve``: ``time_s<TAB>value`` lines (norway-hsdpa-3g, puffer-subset); ``unit`` option.
* ``mahimahi``: one packet-delivery opportunity (1500 B) per line, ms timestamps; binned
  into ``bin_ms`` intervals: ``Mbps[k] = count * 1500 * 8 / (bin_ms / 1000) / 1e6``.
* ``ucc5g``: G-NetTrack CSV; ``DL_bitrate`` kbit/s, ``PINGAVG`` ms, ``PINGLOSS`` %.
* ``5gophers``: the All-Carriers throughput CSV (one link per run), the walking trace and
  the driving traces (one link per carrier column); RTT medians from the RTT CSV.

Every trace file (or run) becomes one link: ``link_id = "<dataset>:<name>"`` sanitised to
``[A-Za-z0-9._:-]``, seq 0.., profile ``internet``. Fields a trace does not measure are filled
by a documented rule and named in ``Telemetry.imputed``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from stream.errors import DataError
from stream.records import MAX_BANDWIDTH_MBPS, Telemetry

#: Dataset folder name -> importer format.
DATASETS: dict[str, str] = {
    "norway-hsdpa-3g": "pensieve",
    "puffer-subset": "pensieve",
    "mahimahi-cellular": "mahimahi",
    "ucc-5g-irish": "ucc5g",
    "5gophers-umn": "5gophers",
}
FORMATS: tuple[str, ...] = ("pensieve", "mahimahi", "ucc5g", "5gophers")

#: Bandwidth units of the pensieve format: name -> factor to Mbit/s.
UNITS: dict[str, float] = {"mbit": 1.0, "mbyte": 8.0, "kbit": 1e-3}
#: Default pensieve unit per dataset (puffer's delivery_rate is bytes/s -> MB/s; see docs/traces.md).
DEFAULT_UNIT: dict[str, str] = {"puffer-subset": "mbyte"}

#: Latency used when a trace has no RTT data at all (imputed; override with latency_ms=).
DEFAULT_LATENCY_MS = 50.0
#: EWMA weight of the "data got through" indicator for traces without probes.
DELIVERY_ALPHA = 0.1
#: EWMA weight of the ping-success ratio (ucc5g, one ping burst every ~14 s).
PING_ALPHA = 0.2
MTU_BITS = 1500 * 8

_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")
_OPTIONS = {"unit", "bin_ms", "latency_ms", "start_ms", "dataset", "root"}


@dataclass
class _Link:
    """One imported link before it becomes records (columns of equal length)."""

    name: str
    ts_ms: list[int]
    bandwidth: list[float]
    latency: list[float | None] = field(default_factory=list)  # None = not measured at this row
    loss: list[float | None] = field(default_factory=list)
    reliability: list[float | None] = field(default_factory=list)
    #: Used where no latency was measured before (or at all).
    latency_default: float = DEFAULT_LATENCY_MS


# ---------------------------------------------------------------------------------------
# helpers


def default_traces_root() -> Path:
    """``<repo>/../shared/data/traces``: where the real traces live next to the checkout."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"


def _sanitise(raw: str, limit: int = 128) -> str:
    s = _UNSAFE.sub("_", raw)
    if len(s) > limit:
        s = s[: limit - 9] + "-" + hashlib.blake2s(raw.encode(), digest_size=4).hexdigest()
    return s


def _float(value: str, path: Path, lineno: int, what: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {what} must be a number, got {value[:40]!r}") from None
    if not math.isfinite(v):
        raise DataError(f"{path}:{lineno}: {what} must be finite, got {value[:40]!r}")
    return v


def _bandwidth(v: float, path: Path, lineno: int) -> float:
    if not 0.0 <= v <= MAX_BANDWIDTH_MBPS:
        raise DataError(f"{path}:{lineno}: bandwidth must be in [0, {MAX_BANDWIDTH_MBPS:g}] Mbit/s, got {v:g}")
    return v


def _dataset_of(path: Path) -> tuple[str | None, Path | None]:
    """The dataset folder a file lies in (by folder name), and that folder."""
    for parent in path.resolve().parents:
        if parent.name in DATASETS:
            return parent.name, parent
    return None, None


def _read_csv(path: Path, required: Iterable[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, row) pairs; every row must have the header's column count."""
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read trace file {path}: {exc}") from exc
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a CSV header") from None
        except csv.Error as exc:
            raise DataError(f"{path}:1: not CSV ({exc})") from exc
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}:1: CSV header lacks {missing}; got {header[:12]}")
        rows = []
        try:
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{reader.line_num}: expected {len(header)} columns like the header, got {len(row)}"
                    )
                rows.append((reader.line_num, row))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not CSV ({exc})") from exc
    return header, rows


# ---------------------------------------------------------------------------------------
# format readers: each yields _Link objects


def _read_pensieve(path: Path, name: str, factor: float, start_ms: int) -> _Link:
    ts: list[int] = []
    bw: list[float] = []
    prev = -math.inf
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read trace file {path}: {exc}") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 2 columns 'time_s<TAB>value', got {len(parts)}: {line[:60]!r}")
        t = _float(parts[0], path, lineno, "time_s")
        v = _float(parts[1], path, lineno, "throughput")
        if t < 0 or t < prev:
            raise DataError(f"{path}:{lineno}: time_s must be >= 0 and non-decreasing, got {t:g} after {prev:g}")
        prev = t
        ts.append(start_ms + round(t * 1000))
        bw.append(_bandwidth(v * factor, path, lineno))
    if not ts:
        raise DataError(f"{path}: no samples")
    return _Link(name, ts, bw)


def _read_mahimahi(path: Path, name: str, bin_ms: int, start_ms: int) -> _Link:
    try:
        lines = path.read_text(encoding="ascii").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read trace file {path}: {exc}") from exc
    lines = [ln.strip() for ln in lines]
    while lines and not lines[-1]:
        lines.pop()
    try:
        t = np.array(lines, dtype=np.int64)  # (packets,)
    except ValueError:
        for lineno, ln in enumerate(lines, 1):
            if not re.fullmatch(r"\d+", ln):
                raise DataError(
                    f"{path}:{lineno}: expected one integer millisecond timestamp per line, got {ln[:40]!r}"
                ) from None
        raise
    if t.size == 0:
        raise DataError(f"{path}: no delivery opportunities")
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise DataError(f"{path}:{i + 1}: timestamps must be non-decreasing, got {t[i]} after {t[i - 1]}")
    # The trace lasts t_last ms (mahimahi loops it there): only whole bins are kept.
    nbins = int(t[-1]) // bin_ms
    if nbins < 1:
        raise DataError(f"{path}: trace lasts {int(t[-1])} ms, shorter than one {bin_ms} ms bin")
    counts = np.bincount(t // bin_ms, minlength=nbins)[:nbins]  # (nbins,)
    mbps = counts * MTU_BITS / (bin_ms / 1000.0) / 1e6
    # A bin's value is known at its end.
    ts = [start_ms + (k + 1) * bin_ms for k in range(nbins)]
    return _Link(name, ts, mbps.tolist())


_UCC_TS = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})_(\d{2})\.(\d{2})\.(\d{2})")


@lru_cache(maxsize=4096)
def _ucc_epoch_ms(value: str) -> int | None:
    # A regex + datetime() is ~10x faster than strptime on 40k rows.
    m = _UCC_TS.fullmatch(value.strip())
    if m is None:
        return None
    try:
        dt = datetime(*map(int, m.groups()), tzinfo=timezone.utc)
    except ValueError:
        return None
    # Irish winter time (all files are Dec-Feb) is UTC.
    return int(dt.timestamp()) * 1000


def _parse_ucc_ts(value: str, path: Path, lineno: int) -> int:
    ms = _ucc_epoch_ms(value)
    if ms is None:
        raise DataError(f"{path}:{lineno}: Timestamp must be YYYY.MM.DD_HH.MM.SS, got {value[:40]!r}")
    return ms


def _read_ucc5g(path: Path, name: str) -> _Link:
    cols = ("Timestamp", "DL_bitrate", "PINGAVG", "PINGLOSS")
    header, rows = _read_csv(path, cols)
    i_ts, i_dl, i_ping, i_loss = (header.index(c) for c in cols)
    # Group rows by timestamp (7-11% repeat the previous second) and average each group.
    groups: OrderedDict[int, list[list[float]]] = OrderedDict()
    prev = -1
    for lineno, row in rows:
        ts = _parse_ucc_ts(row[i_ts], path, lineno)
        if ts < prev:
            raise DataError(f"{path}:{lineno}: Timestamp goes backwards ({row[i_ts]})")
        prev = ts
        dl = row[i_dl].strip()
        if dl == "-":  # documented "not available": no bandwidth in this row
            continue
        g = groups.setdefault(ts, [[], [], []])
        g[0].append(_bandwidth(_float(dl, path, lineno, "DL_bitrate") / 1000.0, path, lineno))
        ping, loss = row[i_ping].strip(), row[i_loss].strip()
        if ping != "-":
            p = _float(ping, path, lineno, "PINGAVG")
            if p < 0:
                raise DataError(f"{path}:{lineno}: PINGAVG must be >= 0 ms, got {p:g}")
            g[1].append(p)
        if loss != "-":
            lp = _float(loss, path, lineno, "PINGLOSS")
            if not 0 <= lp <= 100:
                raise DataError(f"{path}:{lineno}: PINGLOSS must be a percentage in [0, 100], got {lp:g}")
            g[2].append(lp / 100.0)
    if not groups:
        raise DataError(f"{path}: no rows with a DL_bitrate")
    link = _Link(name, [], [])
    for ts, (bws, pings, losses) in groups.items():
        link.ts_ms.append(ts)
        link.bandwidth.append(sum(bws) / len(bws))
        link.latency.append(sum(pings) / len(pings) if pings else None)
        link.loss.append(sum(losses) / len(losses) if losses else None)
    # Reliability = EWMA of the ping success ratio at ping rows (carried between bursts).
    rel = 1.0
    for loss in link.loss:
        if loss is None:
            link.reliability.append(None)
        else:
            rel = (1 - PING_ALPHA) * rel + PING_ALPHA * (1.0 - loss)
            link.reliability.append(rel)
    first_ping = next((p for p in link.latency if p is not None), None)
    if first_ping is not None:
        link.latency_default = first_ping  # back-fill rows before the first ping burst
    return link


def _is_rtt_csv(path: Path) -> bool:
    """True for the 5Gophers RTT CSV (header rtt_ms,carrier,server_location)."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return [c.strip() for c in first.split(",")] == ["rtt_ms", "carrier", "server_location"]


def _rtt_medians(path: Path | None) -> dict[tuple[str, str], float]:
    """Median RTT per (carrier, server_location), per (carrier, '*') and ('*', '*')."""
    if path is None or not path.is_file():
        return {}
    header, rows = _read_csv(path, ("rtt_ms", "carrier", "server_location"))
    i_rtt, i_car, i_loc = (header.index(c) for c in ("rtt_ms", "carrier", "server_location"))
    by: dict[tuple[str, str], list[float]] = {}
    for lineno, row in rows:
        rtt = _float(row[i_rtt], path, lineno, "rtt_ms")
        car, loc = row[i_car].strip().upper(), row[i_loc].strip()
        for key in ((car, loc), (car, "*"), ("*", "*")):
            by.setdefault(key, []).append(rtt)
    return {k: statistics.median(v) for k, v in by.items()}


def _rtt_for(medians: dict[tuple[str, str], float], carrier: str, loc: str, default: float) -> float:
    for key in ((carrier.upper(), loc), (carrier.upper(), "*"), ("*", "*")):
        if key in medians:
            return medians[key]
    return default


_THROUGHPUT_COLS = ("protocol", "carrier", "num_tcp_conn", "server_location", "run_num", "seq_num", "throughput_mbps")
_WALK_COLS = ("protocol", "num_tcp_conn", "seq_num", "anonymized_mCid", "throughput_mbps")
_DRIVE_CARRIERS = {"Sprint_throughput_mbps": "SPRINT", "TMobile_throughput_mbps": "TMOBILE", "Verizon_throughput_mbps": "VERIZON"}


def _seq(value: str, path: Path, lineno: int) -> int:
    try:
        s = int(value)
    except ValueError:
        raise DataError(f"{path}:{lineno}: seq_num must be an integer, got {value[:40]!r}") from None
    if s < 0:
        raise DataError(f"{path}:{lineno}: seq_num must be >= 0, got {s}")
    return s


def _read_5gophers(
    path: Path, stem: str, start_ms: int, rtt: dict[tuple[str, str], float], default_latency: float
) -> list[_Link]:
    """One file of 5Gophers All-Carriers: throughput runs, the walking or a driving trace."""
    header, rows = _read_csv(path, ())
    links: list[_Link] = []
    if all(c in header for c in _THROUGHPUT_COLS):
        idx = {c: header.index(c) for c in _THROUGHPUT_COLS}
        runs: OrderedDict[tuple[str, ...], list[tuple[int, float, int]]] = OrderedDict()
        for lineno, row in rows:
            key = tuple(row[idx[c]].strip() for c in ("carrier", "protocol", "num_tcp_conn", "server_location", "run_num"))
            v = _bandwidth(_float(row[idx["throughput_mbps"]], path, lineno, "throughput_mbps"), path, lineno)
            runs.setdefault(key, []).append((_seq(row[idx["seq_num"]], path, lineno), v, lineno))
        for (car, proto, conn, loc, run), samples in runs.items():
            samples.sort()
            for (a, _, _), (b, _, ln) in zip(samples, samples[1:]):
                if a == b:
                    raise DataError(f"{path}:{ln}: run {car}/{proto}/{conn}/{loc}/{run} repeats seq_num {b}")
            link = _Link(
                f"throughput.{car}.{proto}.{conn}conn.{loc}.run{run}",
                [start_ms + s * 1000 for s, _, _ in samples],
                [v for _, v, _ in samples],
            )
            link.latency_default = _rtt_for(rtt, car, loc, default_latency)
            links.append(link)
    elif all(c in header for c in _WALK_COLS):
        i_seq, i_bw = header.index("seq_num"), header.index("throughput_mbps")
        samples = sorted(
            (_seq(row[i_seq], path, ln), _bandwidth(_float(row[i_bw], path, ln, "throughput_mbps"), path, ln))
            for ln, row in rows
        )
        name = "walking" if "walking-trace" in stem.lower() else stem
        link = _Link(name, [start_ms + s * 1000 for s, _ in samples], [v for _, v in samples])
        link.latency_default = _rtt_for(rtt, "*", "*", default_latency)
        links.append(link)
    elif "seq_num" in header and any(c in header for c in _DRIVE_CARRIERS):
        i_seq = header.index("seq_num")
        ordered = sorted(rows, key=lambda lr: _seq(lr[1][i_seq], path, lr[0]))
        m = re.search(r"car-driving-trace-(\d+)", stem.lower())
        stem = f"driving-{m.group(1)}" if m else stem
        for col, carrier in _DRIVE_CARRIERS.items():
            if col not in header:
                continue
            i = header.index(col)
            link = _Link(
                f"{stem}.{carrier}",
                [start_ms + _seq(row[i_seq], path, ln) * 1000 for ln, row in ordered],
                [_bandwidth(_float(row[i], path, ln, col), path, ln) for ln, row in ordered],
            )
            link.latency_default = _rtt_for(rtt, carrier, "*", default_latency)
            links.append(link)
    else:
        raise DataError(
            f"{path}:1: not a 5Gophers throughput, walking or driving CSV (header {header[:8]}); "
            f"expected e.g. {list(_THROUGHPUT_COLS)}"
        )
    return links


# ---------------------------------------------------------------------------------------
# links -> records


def _records(link: _Link, link_id: str) -> list[Telemetry]:
    n = len(link.ts_ms)
    lat_col = link.latency or [None] * n
    loss_col = link.loss or [None] * n
    rel_col = link.reliability or [None] * n
    out: list[Telemetry] = []
    last_lat: float | None = None
    last_loss: float | None = None
    last_rel: float | None = None
    delivered = 1.0  # EWMA of "bandwidth > 0" for traces without probes
    for seq, (ts, bw, lat, loss, rel) in enumerate(zip(link.ts_ms, link.bandwidth, lat_col, loss_col, rel_col)):
        imputed = []
        if lat is None:
            lat = last_lat if last_lat is not None else link.latency_default
            imputed.append("latency_ms")
        else:
            last_lat = lat
        if loss is None:
            loss = last_loss if last_loss is not None else 0.0
            imputed.append("packet_loss")
        else:
            last_loss = loss
        delivered = (1 - DELIVERY_ALPHA) * delivered + DELIVERY_ALPHA * (1.0 if bw > 0 else 0.0)
        if rel is None:
            if link.reliability:  # the trace has probes: carry the last probe-based value
                rel = last_rel if last_rel is not None else 1.0
            else:
                rel = delivered
            imputed.append("reliability")
        else:
            last_rel = rel
        out.append(
            Telemetry(
                link_id=link_id,
                seq=seq,
                ts_ms=int(ts),
                latency_ms=float(lat),
                bandwidth_mbps=float(bw),
                packet_loss=float(min(max(loss, 0.0), 1.0)),
                reliability=float(min(max(rel, 0.0), 1.0)),
                profile="internet",
                imputed=tuple(imputed),
            )
        )
    return out


def _name_for(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            rel = path.resolve().relative_to(root.resolve())
            name = ".".join(rel.parts)
        except ValueError:
            name = path.name
    else:
        name = path.name
    for ext in (".csv", ".log", ".txt"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def iter_trace_links(fmt: str, paths: Iterable[Path | str], **options: Any) -> Iterator[tuple[str, list[Telemetry]]]:
    """Import trace files as links: yields ``(link_id, records)`` per trace file / run.

    Options: ``unit`` (pensieve: ``mbit`` | ``mbyte`` | ``kbit``; default ``mbyte`` for
    puffer-subset files, else ``mbit``), ``bin_ms`` (mahimahi, default 1000), ``latency_ms``
    (fallback latency where a trace has no RTT, default 50), ``start_ms`` (epoch ms added to
    relative trace times, default 0), ``dataset`` / ``root`` (naming: link ids are
    ``<dataset>:<path relative to root>``; detected from the folder name when omitted).
    """
    if fmt not in FORMATS:
        raise DataError(f"trace format must be one of {FORMATS}, got {fmt!r}")
    unknown = set(options) - _OPTIONS
    if unknown:
        raise DataError(f"unknown import option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    bin_ms = int(options.get("bin_ms") or 1000)
    if bin_ms < 1:
        raise DataError(f"bin_ms must be >= 1, got {bin_ms}")
    start_ms = int(options.get("start_ms") or 0)
    if start_ms < 0:
        raise DataError(f"start_ms must be >= 0, got {start_ms}")
    default_latency = float(options["latency_ms"]) if options.get("latency_ms") is not None else DEFAULT_LATENCY_MS
    if not (math.isfinite(default_latency) and default_latency >= 0):
        raise DataError(f"latency_ms must be a finite number >= 0, got {default_latency}")
    unit_opt = options.get("unit")
    if unit_opt is not None and unit_opt not in UNITS:
        raise DataError(f"unit must be one of {sorted(UNITS)}, got {unit_opt!r}")

    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no trace files given")
    for p in paths:
        if not p.is_file():
            raise DataError(f"trace file {p} does not exist or is not a file")

    seen: dict[str, str] = {}

    def unique(dataset: str, raw_name: str) -> str:
        raw = f"{dataset}:{raw_name}"
        lid = _sanitise(raw)
        if lid in seen and seen[lid] != raw:
            lid = _sanitise(raw, 119) + "-" + hashlib.blake2s(raw.encode(), digest_size=4).hexdigest()
        if lid in seen:
            raise DataError(f"trace {raw!r} is given twice")
        seen[lid] = raw
        return lid

    rtt: dict[tuple[str, str], float] = {}
    if fmt == "5gophers":
        # The RTT CSV may be passed explicitly; otherwise look next to the throughput folder.
        rtt_files = [p for p in paths if _is_rtt_csv(p)]
        paths = [p for p in paths if p not in rtt_files]
        if not rtt_files:
            for p in paths:
                cand = p.resolve().parent.parent / "02-Round-Trip-Times" / "data.csv"
                if cand.is_file():
                    rtt_files = [cand]
                    break
        if rtt_files:
            rtt = _rtt_medians(rtt_files[0])

    for p in paths:
        found, found_root = _dataset_of(p)
        dataset = options.get("dataset") or found or fmt
        root = Path(options["root"]) if options.get("root") else found_root
        name = _name_for(p, root)
        if fmt == "pensieve":
            unit = unit_opt or DEFAULT_UNIT.get(dataset, "mbit")
            links = [_read_pensieve(p, name, UNITS[unit], start_ms)]
        elif fmt == "mahimahi":
            links = [_read_mahimahi(p, name, bin_ms, start_ms)]
        elif fmt == "ucc5g":
            link = _read_ucc5g(p, name)
            if link.latency_default == DEFAULT_LATENCY_MS:
                link.latency_default = default_latency
            links = [link]
        else:
            links = _read_5gophers(p, name, start_ms, rtt, default_latency)
        for link in links:
            if fmt in ("pensieve", "mahimahi"):
                link.latency_default = default_latency
            lid = unique(dataset, link.name)
            yield lid, _records(link, lid)


def import_trace(fmt: str, paths: Iterable[Path | str], **options: Any) -> Iterator[Telemetry]:
    """Every record of the given trace files, link after link (see :func:`iter_trace_links`)."""
    for _, records in iter_trace_links(fmt, paths, **options):
        yield from records


#: Files of each dataset, relative to its folder (glob patterns).
_DATASET_FILES: dict[str, tuple[str, ...]] = {
    "norway-hsdpa-3g": ("norway_*",),
    "puffer-subset": ("puffer_*/*",),
    "mahimahi-cellular": ("*.up", "*.down"),
    "ucc-5g-irish": ("Download/*/*.csv",),
    "5gophers-umn": (
        "All-Carriers/02-Round-Trip-Times/data.csv",
        "All-Carriers/01-Throughput/data.csv",
        "All-Carriers/03-User-Mobility/walking-trace.csv",
        "All-Carriers/03-User-Mobility/car-driving-trace-*.csv",
    ),
}


def dataset_files(name: str, root: Path | None = None) -> list[Path]:
    """The trace files of one dataset, sorted (raises :class:`DataError` when missing)."""
    if name not in DATASETS:
        raise DataError(f"unknown trace dataset {name!r}; known: {sorted(DATASETS)}")
    root = Path(root) if root is not None else default_traces_root()
    folder = root / name
    if not folder.is_dir():
        raise DataError(
            f"trace dataset folder {folder} not found (expected {name}/ with SOURCE.md under {root}; "
            "pass root= / --root to point elsewhere)"
        )
    files = sorted({p for pat in _DATASET_FILES[name] for p in folder.glob(pat) if p.is_file()})
    if not files:
        raise DataError(f"trace dataset folder {folder} holds no {name} trace files ({_DATASET_FILES[name]})")
    return files


def load_dataset(name: str, root: Path | None = None, **options: Any) -> dict[str, list[Telemetry]]:
    """Every link of one dataset: ``{link_id: records in seq order}``, one entry per file / run.

    Split train/test by whole links (keys), never inside a link.
    """
    files = dataset_files(name, root)
    opts: dict[str, Any] = {"dataset": name, "root": (Path(root) if root is not None else default_traces_root()) / name}
    opts.update(options)
    return dict(iter_trace_links(DATASETS[name], files, **opts))
