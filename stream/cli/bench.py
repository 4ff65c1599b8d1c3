"""``bwp bench``: the benchmark commands (model, pipeline, broker, redis, compression), JSON output."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ml.serving.predictor import load_predictor
from ml.serving.registry import current_version
from ml.serving.runtime import configure_tf
from ml.train import TrainConfig, train
from stream.bench import broker as broker_bench
from stream.bench import compression as compression_bench
from stream.bench import pipeline as pipeline_bench
from stream.bench import redis_window as redis_bench
from stream.bench import serve as serve_bench
from stream.bench.broker import run_broker_bench
from stream.bench.model import BATCHES, run_bench
from stream.bench.pipeline import run_pipeline_bench
from stream.bench.redis_window import run_redis_bench
from stream.core.flags import add_settings_flags, settings_from_args
from stream.ops.harness import ensure_model


def _register_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="states/s and produce-to-decision latency of one worker (embedded stack)",
        description=pipeline_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--links", type=int, default=1000, help="simulated links (default 1000)")
    p.add_argument("--seconds", type=float, default=30.0, help="measurement window, seconds (default 30)")
    p.add_argument("--rate", type=float, default=None, help="pace the publisher at R states/s (latency mode)")
    p.add_argument("--batch-max", type=int, default=None, help="worker micro-batch size (default BWP_BATCH_MAX)")
    p.add_argument("--partitions", type=int, default=None,
                   help="partitions of the bench's topics (default BWP_PARTITIONS); the embedded broker's "
                        "fetch cost grows with them, see docs/pipeline.md")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the worker log here")
    add_settings_flags(p, "--model-dir")
    p.set_defaults(func=_bench_pipeline)


def _bench_pipeline(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, batch_max=args.batch_max, partitions=args.partitions)
    res = run_pipeline_bench(settings, args.links, args.seconds, args.rate, quiet=args.json, keep_logs=args.keep_logs)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0 if res.get("worker_alive") else 1


def _register_broker(sub: argparse._SubParsersAction) -> None:
    """Add ``bwp bench broker``."""
    p = sub.add_parser(
        "broker",
        help="produce-to-fetch latency of the embedded broker alone, per fetch wait (JSON)",
        description=broker_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rate", type=float, default=5000.0, help="records/s, paced (default 5000)")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds per fetch-wait value (default 15)")
    p.add_argument("--links", type=int, default=1000, help="distinct keys (default 1000)")
    p.add_argument("--fetch-wait-ms", type=int, action="append", default=None, metavar="MS",
                   help="consumer fetch_max_wait_ms; repeat to compare (default BWP_FETCH_MAX_WAIT_MS)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="JSON only, no progress on stderr")
    # No settings flags: the bench starts its own stack (partitions from BWP_PARTITIONS).
    p.set_defaults(func=_bench_broker)


def _bench_broker(args: argparse.Namespace) -> int:
    if args.rate <= 0 or args.seconds <= 0 or args.links < 1:
        print("bwp bench broker: --rate and --seconds must be > 0 and --links >= 1", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    waits = args.fetch_wait_ms or [settings.fetch_max_wait_ms]
    if any(w < 0 for w in waits):
        print(f"bwp bench broker: --fetch-wait-ms must be >= 0, got {waits}", file=sys.stderr)
        return 2
    res = run_broker_bench(settings, args.rate, args.seconds, args.links, waits, quiet=args.json)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


def _register_redis(sub: argparse._SubParsersAction) -> None:
    """Add ``bwp bench redis``."""
    p = sub.add_parser(
        "redis",
        help="window-store updates/s on a private Redis or local Redis Cluster (JSON)",
        description=redis_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="run an N-primary Redis Cluster instead of one server (default: one server)")  # fmt: skip
    p.add_argument("--links", type=int, default=1000, help="distinct links (default 1000)")
    p.add_argument("--steps", type=int, default=20, help="states per link and pass (default 20)")
    p.add_argument("--batch", type=int, default=2048, help="records per micro-batch (default 2048)")
    p.add_argument("--repeats", type=int, default=5, help="passes, each on fresh keys (default 5)")
    p.add_argument("--json", action="store_true", help="JSON only, no progress on stderr")
    p.set_defaults(func=_bench_redis)


def _bench_redis(args: argparse.Namespace) -> int:
    res = run_redis_bench(args.cluster, args.links, args.steps, args.batch, args.repeats, quiet=args.json)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


def _int_list(what: str, example: str, top: int):
    """An argparse type: comma-separated integers 1..``top``, sorted and unique."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            out = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} like {example}, got {text!r}") from exc
        if not out or out[0] < 1 or out[-1] > top:
            raise argparse.ArgumentTypeError(f"{what} must be 1..{top}, got {text!r}")
        return out

    return parse


_batches = _int_list("batch sizes", "1,100,1000", 100_000)
_concurrency = _int_list("connection counts", "1,16,64", 1024)


def _register_model(bsub: argparse._SubParsersAction) -> None:
    """Add ``bwp bench model``."""
    p = bsub.add_parser(
        "model",
        help="Predictor.predict latency/throughput at batch 1/100/1000 and the compiled bound (JSON)",
        description="Benchmark the current model's full predict path. Trains a quick model into a "
        "temporary directory when the registry has none (said on stderr).",
    )
    p.add_argument("--json", action="store_true", help="JSON only (the default output is JSON too, indented)")
    p.add_argument("--repeats", type=int, default=5, help="runs per figure; the median is reported (default 5)")
    p.add_argument("--batches", type=_batches, default=BATCHES, metavar="N,N,...",
                   help="batch sizes to time (default 1,100,1000; batch_1000_vs_bound needs 1000). "
                   "BWP_TF_XLA=0 times the plain graph instead of XLA")  # fmt: skip
    p.add_argument("--version", default=None, help="model version (default current)")
    add_settings_flags(p, "--model-dir")
    p.set_defaults(func=_bench_model)


def _bench_model(args: argparse.Namespace) -> int:

    configure_tf()
    model_dir = Path(settings_from_args(args).model_dir)
    tmp = None
    if args.version is None and current_version(model_dir) is None:
        tmp = tempfile.TemporaryDirectory(prefix="bwp-bench-model-")
        model_dir = Path(tmp.name)
        print(
            f"bwp bench model: no current model in {settings_from_args(args).model_dir}; "
            f"training a quick one into {model_dir}",
            file=sys.stderr,
        )
        train(TrainConfig(quick=True, model_dir=model_dir))
    try:
        pred = load_predictor(model_dir, args.version)
        res = run_bench(pred, max(1, args.repeats), args.batches)
        res["load_s"] = round(pred.load_seconds, 2)  # verify + load + compile every bucket
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


def _register_serve(bsub: argparse._SubParsersAction) -> None:
    """Add ``bwp bench serve``."""
    p = bsub.add_parser(
        "serve",
        help="prediction API requests/s and p50/p99 latency at concurrency 1/16/64, batching on and off (JSON)",
        description=serve_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measurement per concurrency, seconds (default 10)")
    p.add_argument("--concurrency", type=_concurrency, default=serve_bench.CONCURRENCY, metavar="N,N,...",
                   help="concurrent connections to measure (default 1,16,64)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="JSON only, no progress on stderr")
    add_settings_flags(p, "--model-dir")
    p.set_defaults(func=_bench_serve)


def _bench_serve(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        print(f"bwp bench serve: --seconds must be > 0, got {args.seconds}", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    ensure_model(Path(settings.model_dir), quiet=args.json)
    res = serve_bench.run_serve_bench(settings, args.seconds, args.concurrency, quiet=args.json)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


def _register_compression(bsub: argparse._SubParsersAction) -> None:
    """Add ``bwp bench compression``."""
    p = bsub.add_parser(
        "compression",
        help="measure the zstd codec profile (levels 1..19) the compression hint is chosen with (JSON)",
        description=compression_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--corpus", type=Path, default=None, metavar="DIR",
                   help="folder of sample data (default: the generated mix described above)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, metavar="PROFILE.json",
                   help="write the profile here (use it with BWP_COMPRESSION_PROFILE)")  # fmt: skip
    p.add_argument("--seconds-per-level", type=float, default=1.0, metavar="S",
                   help="timing budget per level, after one full pass of the corpus (default 1)")  # fmt: skip
    p.add_argument("--chunk-bytes", type=int, default=compression_bench.DEFAULT_CHUNK_BYTES,
                   help="chunk size, bytes (default 1 MiB)")  # fmt: skip
    p.add_argument("--corpus-bytes", type=int, default=compression_bench.DEFAULT_CORPUS_BYTES,
                   help="size of the generated corpus, bytes (default 4 MiB)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the generated corpus (default 0)")
    p.add_argument("--cores", type=int, default=None,
                   help="cores compressing in parallel; speeds are per-core x this (default: the CPU count)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="JSON only, no progress on stderr")
    p.set_defaults(func=_bench_compression)


def _effective_command(args: argparse.Namespace) -> str:
    """The run as a command line with every value spelled out (recorded in the profile's metadata)."""
    source = f"--corpus {args.corpus}" if args.corpus else f"--corpus-bytes {args.corpus_bytes} --seed {args.seed}"
    cores = f" --cores {args.cores}" if args.cores else ""
    return (f"bwp bench compression {source} --chunk-bytes {args.chunk_bytes} "
            f"--seconds-per-level {args.seconds_per_level:g}{cores}")  # fmt: skip


def _bench_compression(args: argparse.Namespace) -> int:
    if args.seconds_per_level < 0 or args.chunk_bytes < 1 or args.corpus_bytes < 1 or (args.cores or 1) < 1:
        print("bwp bench compression: --seconds-per-level must be >= 0 and the sizes and --cores >= 1", file=sys.stderr)
        return 2
    if args.corpus is not None:
        corpus, name = compression_bench.read_corpus(args.corpus), str(args.corpus)
    else:
        corpus = compression_bench.generated_corpus(args.corpus_bytes, args.seed)
        name = f"generated (seed {args.seed}, mix {compression_bench.MIX})"
    profile = compression_bench.run_compression_bench(
        corpus, chunk_bytes=args.chunk_bytes, seconds_per_level=args.seconds_per_level, cores=args.cores,
        corpus_name=name, command=_effective_command(args), quiet=args.json,
    )  # fmt: skip
    if args.out is not None:
        compression_bench.write_profile(profile, args.out)
        if not args.json:
            print(f"[bwp bench compression] wrote {args.out}", file=sys.stderr)
    print(json.dumps(profile, indent=None if args.json else 1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bwp bench`` and its benchmarks."""
    bench = sub.add_parser("bench", help="benchmarks that print JSON", description="Benchmarks that print JSON.")
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    for add in (
        _register_pipeline,
        _register_broker,
        _register_redis,
        _register_model,
        _register_serve,
        _register_compression,
    ):
        add(bsub)
