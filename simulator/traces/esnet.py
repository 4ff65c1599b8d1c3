"""Parser of the ``esnet-snmp`` format: ESnet backbone SNMP link traffic (esnet-backbone-2018).

One CSV per backbone edge ``<A>_<B>.csv`` (or ``.csv.gz``), header ``time,in,out``, one row per
hour. ``time`` is ``YYYY-MM-DD HH:MM:SS`` read as UTC; ``in`` and ``out`` are the two directions
in bits per second. Every file gives **two** links, ``<name>:in`` and ``<name>:out``.

``bandwidth_mbps = bits/s / 1e6`` is the **carried traffic (link load)**, not available
bandwidth or capacity: it follows demand (daily and weekly cycles, science transfers), and the
capacity of the edges is not in the data. Fill rules (docs/traces.md, "esnet-snmp"):

* an empty cell = that hour is not measured for that direction: the hour is **skipped** for it
  (as ucc5g skips ``-`` rows), leaving a gap in ``ts_ms``; ``seq`` still counts records 0, 1, ...;
* a missing hour (a row not in the file) is the same gap, in both directions;
* zeros are kept as measured (0 Mbit/s: outages or counter resets);
* anything else that is not a finite number >= 0, a malformed time, a wrong column count, or a
  time that does not strictly increase raises :class:`DataError` naming the file and line.

Latency, loss and reliability are not measured: they are filled by the common rules of
``simulator.traces.datasets`` and listed in ``Telemetry.imputed``. Profile: ``datacenter``.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

from simulator.traces.readers import _bandwidth, _float, _Link, _match_epoch_ms, _read_csv
from stream.core.errors import DataError
from stream.core.records import MAX_BANDWIDTH_MBPS

#: The two traffic columns, in link order.
DIRECTIONS: tuple[str, ...] = ("in", "out")

#: Profile of every ESnet link: 10G/100G wired backbone edges (see docs/traces.md).
ESNET_PROFILE = "datacenter"

_BITS_PER_MBIT = 1e6

_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})")


@lru_cache(maxsize=16_384)
def _epoch_ms(value: str) -> int | None:
    # Cached: the 48 files share the same 8 737 hours.
    return _match_epoch_ms(_TIME.fullmatch(value.strip()))


def _read_esnet(path: Path, name: str) -> list[_Link]:
    """The ``in`` and ``out`` links of one ESnet SNMP CSV (``time,in,out``, bits/s, hourly)."""
    cols = ("time", *DIRECTIONS)
    header, rows = _read_csv(path, cols)
    i_time = header.index("time")
    links = [_Link(f"{name}:{d}", [], [], profile=ESNET_PROFILE) for d in DIRECTIONS]
    index = [header.index(d) for d in DIRECTIONS]
    prev = -1
    prev_text = ""
    for lineno, row in rows:
        text = row[i_time]
        ts = _epoch_ms(text)
        if ts is None:
            raise DataError(f"{path}:{lineno}: time must be YYYY-MM-DD HH:MM:SS, got {text[:40]!r}")
        if ts <= prev:
            raise DataError(f"{path}:{lineno}: time must strictly increase, got {text.strip()} after {prev_text}")
        prev, prev_text = ts, text.strip()
        for link, i, d in zip(links, index, DIRECTIONS):
            cell = row[i].strip()
            if not cell:  # not measured this hour: skipped (documented gap)
                continue
            try:
                mbps = float(cell) / _BITS_PER_MBIT
            except ValueError:
                mbps = math.nan
            if not 0.0 <= mbps <= MAX_BANDWIDTH_MBPS:  # false for NaN too: the slow path names the error
                mbps = _bandwidth(_float(cell, path, lineno, f"{d!r} (bits/s)") / _BITS_PER_MBIT, path, lineno)
            link.ts_ms.append(ts)
            link.bandwidth.append(mbps)
    for link, d in zip(links, DIRECTIONS):
        if not link.ts_ms:
            raise DataError(f"{path}: no samples in column {d!r} (every cell empty)")
    return links
