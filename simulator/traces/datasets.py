"""Importers that turn real bandwidth traces into :class:`~stream.core.records.Telemetry` links.

Formats (details, units and every fill rule in ``docs/traces.md``):

* ``pensieve``: ``time_s<TAB>value`` lines (norway-hsdpa-3g, puffer-subset); ``unit`` option.
* ``mahimahi``: one packet-delivery opportunity (1500 B) per line, ms timestamps; binned
  into ``bin_ms`` intervals: ``Mbps[k] = count * 1500 * 8 / (bin_ms / 1000) / 1e6``.
* ``ucc5g``: G-NetTrack CSV; ``DL_bitrate`` kbit/s, ``PINGAVG`` ms, ``PINGLOSS`` %.
* ``5gophers``: the All-Carriers throughput CSV (one link per run), the walking trace and
  the driving traces (one link per carrier column); RTT medians from the RTT CSV.
* ``esnet-snmp``: ESnet backbone SNMP CSV ``time,in,out`` (hourly, bits/s, ``.csv.gz``); two
  links per file (``<name>:in``, ``<name>:out``). The values are carried load, not available
  bandwidth (:mod:`simulator.traces.esnet`).

Every trace file (or run, or direction) becomes one link: ``link_id = "<dataset>:<name>"``
sanitised to ``[A-Za-z0-9._:-]``, seq 0.., profile ``internet`` (``datacenter`` for esnet-snmp).
Fields a trace does not measure are filled by a documented rule and named in ``Telemetry.imputed``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from simulator.traces.esnet import _read_esnet
from simulator.traces.readers import (
    DEFAULT_LATENCY_MS,
    DELIVERY_ALPHA,
    _is_rtt_csv,
    _Link,
    _read_5gophers,
    _read_mahimahi,
    _read_pensieve,
    _read_ucc5g,
    _rtt_medians,
    _sanitise,
)
from stream.core.errors import DataError
from stream.core.records import Telemetry

#: Dataset folder name -> importer format.
DATASETS: dict[str, str] = {
    "norway-hsdpa-3g": "pensieve",
    "puffer-subset": "pensieve",
    "mahimahi-cellular": "mahimahi",
    "ucc-5g-irish": "ucc5g",
    "5gophers-umn": "5gophers",
    "esnet-backbone-2018": "esnet-snmp",
}
FORMATS: tuple[str, ...] = ("pensieve", "mahimahi", "ucc5g", "5gophers", "esnet-snmp")

#: Datasets whose links must be split by time (e.g. first months train, last months test), not
#: by whole link, in evaluation. esnet-backbone-2018 is 96 series of one backbone over the same
#: year: links share the daily/weekly pattern and the same events (a science transfer crosses
#: several edges; both directions of an edge move together), so a held-out link is not unseen
#: data. Its SOURCE.md asks for a time split (never shuffled hours).
TIME_SPLIT_DATASETS: frozenset[str] = frozenset({"esnet-backbone-2018"})

#: Bandwidth units of the pensieve format: name -> factor to Mbit/s.
UNITS: dict[str, float] = {"mbit": 1.0, "mbyte": 8.0, "kbit": 1e-3}
#: Default pensieve unit per dataset (puffer's delivery_rate is bytes/s -> MB/s; see docs/traces.md).
DEFAULT_UNIT: dict[str, str] = {"puffer-subset": "mbyte"}


_OPTIONS = {"unit", "bin_ms", "latency_ms", "start_ms", "dataset", "root"}


# ---------------------------------------------------------------------------------------
# helpers


def default_traces_root() -> Path:
    """``<repo>/../shared/data/traces``: where the real traces live next to the checkout."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"


def _dataset_of(path: Path) -> tuple[str | None, Path | None]:
    """The dataset folder a file lies in (by folder name), and that folder."""
    for parent in path.resolve().parents:
        if parent.name in DATASETS:
            return parent.name, parent
    return None, None


# ---------------------------------------------------------------------------------------
# format readers: each yields _Link objects


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
                profile=link.profile,
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
    for ext in (".csv.gz", ".csv", ".log", ".txt"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _check_options(fmt: str, options: dict[str, Any]) -> tuple[int, int, float, str | None]:
    """Validate the format and import options; returns (bin_ms, start_ms, default latency ms, unit or None)."""
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
    return bin_ms, start_ms, default_latency, unit_opt


def _check_paths(paths: Iterable[Path | str]) -> list[Path]:
    """The trace files as paths; raises :class:`DataError` when none is given or one is not a file."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no trace files given")
    for p in paths:
        if not p.is_file():
            raise DataError(f"trace file {p} does not exist or is not a file")
    return paths


def _unique_link_id(seen: dict[str, str], dataset: str, raw_name: str) -> str:
    """The sanitised link id of ``<dataset>:<raw_name>``, hashed apart from a different trace with the same id.

    ``seen`` maps the ids handed out so far to their raw names (updated here); a trace given
    twice raises :class:`DataError`.
    """
    raw = f"{dataset}:{raw_name}"
    lid = _sanitise(raw)
    if lid in seen and seen[lid] != raw:
        lid = _sanitise(raw, 119) + "-" + hashlib.blake2s(raw.encode(), digest_size=4).hexdigest()
    if lid in seen:
        raise DataError(f"trace {raw!r} is given twice")
    seen[lid] = raw
    return lid


def _split_rtt_files(paths: list[Path]) -> tuple[list[Path], dict[tuple[str, str], float]]:
    """5gophers: the throughput files without the RTT CSV, and the RTT medians (ms) from that CSV."""
    rtt: dict[tuple[str, str], float] = {}
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
    return paths, rtt


def _read_links(
    fmt: str,
    path: Path,
    name: str,
    dataset: str,
    unit_opt: str | None,
    bin_ms: int,
    start_ms: int,
    default_latency: float,
    rtt: dict[tuple[str, str], float],
) -> list[_Link]:
    """The links of one trace file in format ``fmt``, with their fallback latency (ms) set."""
    if fmt == "pensieve":
        unit = unit_opt or DEFAULT_UNIT.get(dataset, "mbit")
        links = [_read_pensieve(path, name, UNITS[unit], start_ms)]
    elif fmt == "mahimahi":
        links = [_read_mahimahi(path, name, bin_ms, start_ms)]
    elif fmt == "ucc5g":
        link = _read_ucc5g(path, name)
        if link.latency_default == DEFAULT_LATENCY_MS:
            link.latency_default = default_latency
        links = [link]
    elif fmt == "esnet-snmp":
        links = _read_esnet(path, name)
    else:
        links = _read_5gophers(path, name, start_ms, rtt, default_latency)
    if fmt in ("pensieve", "mahimahi", "esnet-snmp"):
        for link in links:
            link.latency_default = default_latency
    return links


def iter_trace_links(fmt: str, paths: Iterable[Path | str], **options: Any) -> Iterator[tuple[str, list[Telemetry]]]:
    """Import trace files as links: yields ``(link_id, records)`` per trace file / run.

    Options: ``unit`` (pensieve: ``mbit`` | ``mbyte`` | ``kbit``; default ``mbyte`` for
    puffer-subset files, else ``mbit``), ``bin_ms`` (mahimahi, default 1000), ``latency_ms``
    (fallback latency where a trace has no RTT, default 50), ``start_ms`` (epoch ms added to
    relative trace times, default 0; ucc5g and esnet-snmp have absolute times), ``dataset`` /
    ``root`` (naming: link ids are ``<dataset>:<path relative to root>``; detected from the
    folder name when omitted).
    """
    bin_ms, start_ms, default_latency, unit_opt = _check_options(fmt, options)
    paths = _check_paths(paths)
    seen: dict[str, str] = {}
    rtt: dict[tuple[str, str], float] = {}
    if fmt == "5gophers":
        paths, rtt = _split_rtt_files(paths)

    for p in paths:
        found, found_root = _dataset_of(p)
        dataset = options.get("dataset") or found or fmt
        root = Path(options["root"]) if options.get("root") else found_root
        name = _name_for(p, root)
        for link in _read_links(fmt, p, name, dataset, unit_opt, bin_ms, start_ms, default_latency, rtt):
            lid = _unique_link_id(seen, dataset, link.name)
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
    # <A>_<B>.csv.gz only: links.csv (a summary) and SOURCE.md are not traces.
    "esnet-backbone-2018": ("*_*.csv.gz",),
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

    Split train/test by whole links (keys), never inside a link, except for the datasets in
    :data:`TIME_SPLIT_DATASETS`, which are split by time.
    """
    files = dataset_files(name, root)
    opts: dict[str, Any] = {"dataset": name, "root": (Path(root) if root is not None else default_traces_root()) / name}
    opts.update(options)
    return dict(iter_trace_links(DATASETS[name], files, **opts))
