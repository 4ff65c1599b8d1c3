"""CLI: ``bwp evaluate-compression`` (the compression hint against every fixed zstd level on real traces)."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from ml.eval import compression as compression_eval
from stream.core.compression import profile_from
from stream.core.progress import stderr_progress
from stream.core.records import COMPRESSION_HORIZON
from stream.core.settings import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bwp evaluate-compression``."""
    p = sub.add_parser(
        "evaluate-compression",
        help="per real-trace dataset: expected chunk transfer time of the compression hint vs every fixed level",
        description=compression_eval.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--datasets", nargs="+", default=None, help="dataset names (default: every one found)")
    p.add_argument("--traces-root", type=Path, default=None, help="traces directory (default ../shared/data/traces)")
    p.add_argument("--profile", type=Path, default=None,
                   help="codec profile file (default BWP_COMPRESSION_PROFILE, else the shipped one)")  # fmt: skip
    p.add_argument("--horizon", type=int, default=None,
                   help=f"steps ahead the hint is for (default BWP_COMPRESSION_HORIZON, {COMPRESSION_HORIZON})")  # fmt: skip
    p.add_argument("--alpha", type=float, default=compression_eval.DEFAULT_ALPHA,
                   help=f"EWMA smoothing of the forecast (default {compression_eval.DEFAULT_ALPHA})")  # fmt: skip
    p.add_argument("--max-links", type=int, default=None, help="first N links of each dataset only (a quick look)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_evaluate_compression)


def _evaluate_compression(args: argparse.Namespace) -> int:
    settings = load_settings()
    profile = profile_from(args.profile or settings.compression_profile)
    horizon = args.horizon or settings.compression_horizon
    if horizon < 1 or not 0 < args.alpha <= 1 or (args.max_links is not None and args.max_links < 1):
        print("bwp evaluate-compression: --horizon and --max-links must be >= 1, --alpha in (0, 1]", file=sys.stderr)
        return 2
    res = compression_eval.evaluate_compression(
        profile, args.datasets, args.traces_root, horizon, args.alpha, args.max_links,
        progress=partial(stderr_progress, tag="bwp evaluate-compression"),
    )  # fmt: skip
    print(json.dumps(res, indent=2) if args.json else compression_eval.format_compression(res))
    return 0
