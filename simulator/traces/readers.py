"""Parsers of the real-trace formats (pensieve, mahimahi, ucc5g, 5gophers): one file or run in,
one link's samples out, with every fill rule documented in docs/traces.md. The ESnet SNMP
format (esnet-snmp) lives in :mod:`simulator.traces.esnet` and reuses the helpers here.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import re
import statistics
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TextIO

import numpy as np

from stream.core.errors import DataError
from stream.core.records import MAX_BANDWIDTH_MBPS

#: Latency used when a trace has no RTT data at all (imputed; override with latency_ms=).
DEFAULT_LATENCY_MS = 50.0

#: EWMA weight of the "data got through" indicator for traces without probes.
DELIVERY_ALPHA = 0.1

#: EWMA weight of the ping-success ratio (ucc5g, one ping burst every ~14 s).
PING_ALPHA = 0.2

MTU_BITS = 1500 * 8

_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


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
    #: Telemetry profile of the link (one of stream.core.records.PROFILES).
    profile: str = "internet"


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


def _open_text(path: Path) -> TextIO:
    """``path`` opened as UTF-8 text for the csv module; ``.gz`` files are decompressed on the fly."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return open(path, newline="", encoding="utf-8")


def _read_csv(path: Path, required: Iterable[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, row) pairs; every row must have the header's column count (``.gz`` is read too)."""
    try:
        fh = _open_text(path)
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
        except (OSError, EOFError, UnicodeDecodeError) as exc:  # e.g. a .gz that is not gzip
            raise DataError(f"cannot read trace file {path}: {exc}") from exc
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}:1: CSV header lacks {missing}; got {header[:12]}")
        rows = []
        try:
            for row in reader:
                if not row or not "".join(row).strip():
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{reader.line_num}: expected {len(header)} columns like the header, got {len(row)}"
                    )
                rows.append((reader.line_num, row))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not CSV ({exc})") from exc
        except (OSError, EOFError, UnicodeDecodeError) as exc:  # truncated or corrupt .gz
            raise DataError(f"cannot read trace file {path} after line {reader.line_num}: {exc}") from exc
    return header, rows


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


def _match_epoch_ms(m: re.Match[str] | None) -> int | None:
    """UTC epoch ms of a (year, month, day, hour, minute, second) regex match; None for no
    match or an impossible date. A regex + datetime() is ~10x faster than strptime."""
    if m is None:
        return None
    try:
        return int(datetime(*map(int, m.groups()), tzinfo=UTC).timestamp()) * 1000
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def _ucc_epoch_ms(value: str) -> int | None:
    # Irish winter time (all files are Dec-Feb) is UTC.
    return _match_epoch_ms(_UCC_TS.fullmatch(value.strip()))


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

_DRIVE_CARRIERS = {
    "Sprint_throughput_mbps": "SPRINT",
    "TMobile_throughput_mbps": "TMOBILE",
    "Verizon_throughput_mbps": "VERIZON",
}


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
            key = tuple(
                row[idx[c]].strip() for c in ("carrier", "protocol", "num_tcp_conn", "server_location", "run_num")
            )
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
