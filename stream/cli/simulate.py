"""``bwp simulate`` and ``bwp import-trace``."""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simulator.generator import FleetSimulator
from simulator.pacing import PublishStats, paced_chunks
from simulator.profiles import PROFILE_NAMES
from simulator.publisher import TelemetryPublisher
from simulator.traces.datasets import (
    DATASETS,
    FORMATS,
    UNITS,
    dataset_files,
    default_traces_root,
    iter_trace_links,
)
from stream.core.errors import ConfigError
from stream.core.flags import add_settings_flags, settings_from_args
from stream.core.jsonl import write_jsonl

SIMULATE_EPILOG = """\
examples:
  bwp simulate --links 1000 --steps 60 --profile mixed --seed 1
      publish 60 steps of 1000 links (60 000 records) to Kafka as fast as possible
  bwp simulate --links 200 --forever --profile internet --seed 7
      publish 1 step per second per link (200 records/s) until Ctrl-C
  bwp simulate --links 5000 --forever --rate 50000 --bootstrap kafka:9092
      publish 50 000 records/s in total until Ctrl-C
  bwp simulate --links 100 --steps 3600 --profile datacenter --seed 3 --out data/dc.jsonl.gz
      write one simulated hour to a (gzip) JSON-lines file; no broker involved

Records are Telemetry JSON (key = link_id). Link ids are dc-NNNNNN / in-NNNNNN by link
index; use --link-offset to run several simulators without overlapping ids. The
generative model is described in docs/simulator.md. Ctrl-C stops cleanly: pending
records are flushed and the summary is printed. Exit status 1 if any delivery failed.
"""

IMPORT_EPILOG = """\
examples:
  bwp import-trace --dataset norway-hsdpa-3g --out data/norway.jsonl
  bwp import-trace --dataset puffer-subset --unit mbit --out data/puffer-as-mbit.jsonl
  bwp import-trace --format mahimahi --bin-ms 500 ../shared/data/traces/mahimahi-cellular/*.down --out data/mm.jsonl
  bwp import-trace --format pensieve my_trace.txt --out data/mine.jsonl
  bwp import-trace --dataset esnet-backbone-2018 --out data/esnet.jsonl
      96 hourly backbone series (2 directions x 48 links), ~840 000 records
  bwp import-trace --format esnet-snmp ../shared/data/traces/esnet-backbone-2018/ALBQ_*.csv.gz --out data/albq.jsonl

Datasets (folders under --root, default ../shared/data/traces): norway-hsdpa-3g,
puffer-subset (pensieve), mahimahi-cellular (mahimahi), ucc-5g-irish (ucc5g),
5gophers-umn (5gophers), esnet-backbone-2018 (esnet-snmp: carried load in Mbit/s, not
available bandwidth; one link per direction). Every trace file or run becomes one link;
fields a trace does not measure are filled by the rules in docs/traces.md and listed in
each record's "imputed" field.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate`` and ``import-trace``."""
    p = subparsers.add_parser(
        "simulate",
        help="generate synthetic link telemetry (to Kafka or a JSONL file)",
        description="Generate synthetic per-link telemetry (latency, bandwidth, loss, reliability) "
        "for a fleet of datacenter and/or internet links and publish it to the telemetry topic, "
        "or write it to a JSON-lines file.",
        epilog=SIMULATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--links", type=int, default=100, metavar="N", help="number of links (default 100)")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, metavar="M", help="steps to generate (each = one record per link)")
    length.add_argument("--forever", action="store_true", help="run until Ctrl-C / SIGTERM")
    p.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="records per second in total (default: as fast as possible with --steps, "
        "one step per link per step interval with --forever)",
    )
    p.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        default="mixed",
        help="link profile (default mixed: even links datacenter, odd internet)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed = same series (default 0)")
    p.add_argument("--step-ms", type=int, default=1000, help="simulated time per step, ms (default 1000)")
    p.add_argument("--start-ms", type=int, default=None, help="timestamp of step 0, epoch ms (default: now)")
    p.add_argument("--link-offset", type=int, default=0, help="index of the first link (default 0)")
    p.add_argument(
        "--route-groups",
        type=int,
        default=0,
        metavar="K",
        help="put link k into route group rg-<k mod K> (alternative paths, ranked on bwp.routes; default 0 = none)",
    )
    p.add_argument("--out", type=Path, metavar="FILE.jsonl", help="write JSON lines (.gz = gzip) instead of publishing")
    p.add_argument(
        "--progress-every", type=float, default=2.0, metavar="S", help="seconds between progress lines (default 2)"
    )
    add_settings_flags(p, "--bootstrap", "--telemetry-topic")
    p.set_defaults(func=cmd_simulate)

    q = subparsers.add_parser(
        "import-trace",
        help="convert real bandwidth traces to telemetry JSONL",
        description="Convert real bandwidth traces (pensieve, mahimahi, ucc5g, 5gophers, esnet-snmp formats, "
        "or a whole dataset folder) into Telemetry JSON lines, one link per trace file or run.",
        epilog=IMPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="trace files (with --format)")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--format", dest="fmt", choices=FORMATS, help="format of PATH...")
    src.add_argument("--dataset", help="import a whole dataset folder by name (see below)")
    q.add_argument("--root", type=Path, help="folder holding the dataset folders (default ../shared/data/traces)")
    q.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl", help="output file (.gz = gzip)")
    q.add_argument(
        "--unit",
        choices=tuple(UNITS),
        help="pensieve value unit: mbit = Mbit/s, mbyte = MB/s (x8), kbit = kbit/s "
        "(default: mbyte for puffer-subset, whose values are TCP delivery rates in bytes/s / 1e6; else mbit)",
    )
    q.add_argument("--bin-ms", type=int, default=1000, help="mahimahi bin width in ms (default 1000)")
    q.add_argument("--latency-ms", type=float, help="latency filled in where a trace has no RTT at all (default 50)")
    q.add_argument("--start-ms", type=int, default=0, help="epoch ms added to relative trace times (default 0)")
    q.set_defaults(func=cmd_import_trace)


class _Encoded:
    """A record already encoded by ``FleetSimulator.payloads()`` (bytes == Telemetry.to_bytes()),
    so write_jsonl does not pay for re-encoding."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def to_bytes(self) -> bytes:
        return self.raw


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C / SIGTERM sets ``stop`` (clean shutdown); a second Ctrl-C interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print("\nbwp simulate: stopping (Ctrl-C again to abort)...", file=sys.stderr)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Handler of ``bwp simulate``."""
    if args.steps is not None and args.steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {args.steps}")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError(f"--rate must be > 0 records/s, got {args.rate}")
    rate = args.rate
    if rate is None and args.forever:
        rate = args.links * 1000.0 / args.step_ms
    sim = FleetSimulator(
        args.profile, args.links, args.seed, step_ms=args.step_ms, start_ms=args.start_ms,
        link_offset=args.link_offset, route_groups=args.route_groups,
    )  # fmt: skip
    steps = None if args.forever else args.steps
    stop = threading.Event()

    def progress(stats: PublishStats, extra: str = "") -> None:
        print(
            f"bwp simulate: {stats.records} records, {stats.steps} steps, {stats.seconds:.1f} s, "
            f"{stats.rate:,.0f} records/s{extra}",
            file=sys.stderr,
            flush=True,
        )

    if args.out is not None:
        stats = PublishStats()

        def records() -> Iterator[_Encoded]:
            for chunk in paced_chunks(sim, steps, rate, stats, stop, progress, args.progress_every):
                yield from (_Encoded(value) for _, value in chunk.payloads)

        with _stop_on_signals(stop):
            write_jsonl(args.out, records())
        print(
            f"wrote {stats.records} records ({sim.links} links x {stats.steps} steps) to {args.out} "
            f"in {stats.seconds:.2f} s ({stats.rate:,.0f} records/s)"
        )
        return 130 if stats.stopped and steps is not None else 0

    settings = settings_from_args(args)
    pub = TelemetryPublisher(settings)

    def kafka_progress(stats: PublishStats) -> None:
        progress(stats, f", delivered {pub.delivered}, failed {pub.failed}")

    t_start = time.perf_counter()
    with _stop_on_signals(stop):
        stats = pub.publish_paced(sim, steps, rate, stop, progress=kafka_progress, progress_every_s=args.progress_every)
        remaining = pub.flush(30.0)
    # Seconds and rate include the final flush: records/s counts records acknowledged.
    seconds = time.perf_counter() - t_start
    print(
        f"published {stats.records} records ({sim.links} links x {stats.steps} steps) to "
        f"{settings.telemetry_topic} at {settings.kafka_bootstrap} in {seconds:.2f} s "
        f"({stats.records / seconds if seconds > 0 else 0:,.0f} records/s); delivered {pub.delivered}, failed {pub.failed}, "
        f"undelivered after flush {remaining}"
    )
    for err in pub.errors:
        print(f"bwp simulate: delivery error: {err}", file=sys.stderr)
    if pub.failed or remaining:
        return 1
    return 130 if stats.stopped and steps is not None else 0


def cmd_import_trace(args: argparse.Namespace) -> int:
    """Handler of ``bwp import-trace``."""
    options = {"unit": args.unit, "bin_ms": args.bin_ms, "latency_ms": args.latency_ms, "start_ms": args.start_ms}
    if args.dataset is not None:
        if args.paths:
            raise ConfigError("give either --dataset NAME or --format FMT PATH..., not both")
        if args.dataset not in DATASETS:
            raise ConfigError(f"--dataset must be one of {sorted(DATASETS)}, got {args.dataset!r}")
        root = args.root or default_traces_root()
        files = dataset_files(args.dataset, root)
        fmt = DATASETS[args.dataset]
        options.update(dataset=args.dataset, root=root / args.dataset)
    else:
        if not args.paths:
            raise ConfigError("--format needs at least one trace PATH")
        fmt, files = args.fmt, args.paths
        if args.root is not None:
            options["root"] = args.root

    links = 0
    records = 0
    imputed: collections.Counter[str] = collections.Counter()

    def stream() -> Iterator:
        nonlocal links, records
        for _, recs in iter_trace_links(fmt, files, **options):
            links += 1
            records += len(recs)
            for r in recs:
                imputed.update(r.imputed)
            yield from recs

    write_jsonl(args.out, stream())
    print(f"wrote {records} records of {links} links ({fmt}) to {args.out}")
    if imputed:
        parts = [f"{f} on {n} records ({100.0 * n / records:.1f}%)" for f, n in sorted(imputed.items())]
        print("imputed: " + "; ".join(parts))
    else:
        print("imputed: nothing (every field measured)")
    return 0
