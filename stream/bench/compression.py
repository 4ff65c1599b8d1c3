"""``bwp bench compression``: measure a codec profile (zstd levels 1..19) for the compression hint.

For every level, the corpus is cut into chunks of ``--chunk-bytes`` and compressed chunk by
chunk with the ``zstandard`` package, one thread (the compressor is reused, as a sender
would): ``ratio`` = total compressed / total original bytes over one pass of the corpus;
speed = original bytes / compress time, repeated until ``--seconds-per-level`` has passed,
times ``--cores`` (chunks are compressed in parallel, one per core). Units: MB/s = 10^6
bytes/s of input. Levels that cannot be the best choice are left out of the profile and
listed under ``dropped``: a ratio >= 1 (never better than none), or a level that is faster
*and* no larger than a lower one would have to be (a lower level that is slower and no
smaller is dominated; a higher level that is faster but compresses worse than a lower one
breaks the ladder the rule needs, and the higher one goes).

Default corpus (``--corpus`` unset): 4 MiB of 4 KiB pages, generated with ``--seed``
(default 0), in this mix, shuffled: 35 % text/JSON-like pages (telemetry records with
varying numbers), 20 % zero pages, 25 % random pages (already compressed or encrypted
data), 20 % VM-memory-like pages (64-bit little-endian words: mostly zero, small
integers and pointer-like values sharing their high bytes). With ``--corpus DIR`` every
regular file under DIR (sorted, recursively) is concatenated.

Progress goes to stderr; the profile JSON to ``--out`` (and stdout).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zstandard as zstd

from stream.core.compression import PROFILE_VERSION, ZSTD_LEVELS, CompressionProfile
from stream.core.errors import DataError

PAGE = 4096
DEFAULT_CORPUS_BYTES = 4 << 20
DEFAULT_CHUNK_BYTES = 1 << 20
#: Share of each page kind in the generated corpus (module docstring).
MIX = {"text": 0.35, "zero": 0.20, "random": 0.25, "vm": 0.20}


def _text_page(rng: np.random.Generator) -> bytes:
    out, n = [], 0
    while n < PAGE:
        rec = (
            f'{{"link_id":"dc-{rng.integers(0, 500)}","seq":{rng.integers(0, 10**7)},'
            f'"ts_ms":{1_700_000_000_000 + int(rng.integers(0, 10**9))},"latency_ms":{rng.gamma(2, 10):.3f},'
            f'"bandwidth_mbps":{rng.gamma(3, 300):.2f},"packet_loss":{rng.beta(1, 200):.5f},"reliability":0.99}}\n'
        )
        out.append(rec)
        n += len(rec)
    return "".join(out).encode()[:PAGE]


def _vm_page(rng: np.random.Generator) -> bytes:
    kind = rng.choice(3, size=PAGE // 8, p=[0.55, 0.25, 0.20])
    words = np.where(
        kind == 0,
        0,
        np.where(
            kind == 1, rng.integers(0, 4096, PAGE // 8), 0x7F3A_0000_0000 + rng.integers(0, 1 << 24, PAGE // 8) * 8
        ),
    ).astype("<u8")
    return words.tobytes()


def generated_corpus(size: int = DEFAULT_CORPUS_BYTES, seed: int = 0) -> bytes:
    """The default corpus: ``size`` bytes of 4 KiB pages in the :data:`MIX`, shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    pages = max(1, size // PAGE)
    kinds = rng.choice(list(MIX), size=pages, p=list(MIX.values()))
    make: dict[str, Callable[[], bytes]] = {
        "text": lambda: _text_page(rng),
        "zero": lambda: bytes(PAGE),
        "random": lambda: rng.bytes(PAGE),
        "vm": lambda: _vm_page(rng),
    }
    return b"".join(make[k]() for k in kinds)


def read_corpus(folder: Path) -> bytes:
    """Every regular file under ``folder`` (sorted, recursive), concatenated; raises :class:`DataError`."""
    if not folder.is_dir():
        raise DataError(f"--corpus must be a folder, got {folder}")
    data = b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
    if not data:
        raise DataError(f"corpus folder {folder} holds no data")
    return data


def measure_level(chunks: list[bytes], level: int, seconds: float) -> tuple[float, float]:
    """``(per-core MB/s, ratio)`` of one level over ``chunks`` (at least one full pass, then until ``seconds``)."""
    cctx = zstd.ZstdCompressor(level=level)
    total_in = sum(len(c) for c in chunks)
    total_out, done, spent, i = 0, 0, 0.0, 0
    while i < len(chunks) or spent < seconds:
        c = chunks[i % len(chunks)]
        t0 = time.perf_counter()
        out = cctx.compress(c)
        spent += time.perf_counter() - t0
        if i < len(chunks):
            total_out += len(out)
        done += len(c)
        i += 1
    return done / spent / 1e6, total_out / total_in


def ladder(measured: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split measured levels into the profile's ladder and the dropped ones (module docstring)."""
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for m in measured:
        if m["ratio"] >= 1.0:
            dropped.append({**m, "reason": "ratio >= 1: never better than none"})
            continue
        dom = next((o for o in measured if o is not m and o["ratio"] <= m["ratio"] and o["compress_mb_s"]
                    >= m["compress_mb_s"] and (o["ratio"], -o["compress_mb_s"]) < (m["ratio"], -m["compress_mb_s"])),
                   None)  # fmt: skip
        if dom is not None:
            dropped.append(
                {**m, "reason": f"dominated by level {dom['level']} (as fast or faster, as small or smaller)"}
            )
            continue
        if kept and (m["compress_mb_s"] > kept[-1]["compress_mb_s"] or m["ratio"] > kept[-1]["ratio"]):
            dropped.append({**m, "reason": f"breaks the ladder after level {kept[-1]['level']}"})
            continue
        kept.append(m)
    return kept, dropped


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def run_compression_bench(
    corpus: bytes,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    seconds_per_level: float = 1.0,
    cores: int | None = None,
    corpus_name: str = "generated",
    command: str = "",
    quiet: bool = False,
) -> dict[str, Any]:
    """Measure levels 1..19 on ``corpus``; returns the profile file's JSON object (validated)."""
    cores = cores or os.cpu_count() or 1
    chunks = [corpus[i : i + chunk_bytes] for i in range(0, len(corpus), chunk_bytes)]
    measured = []
    t_start = time.perf_counter()
    for level in ZSTD_LEVELS:
        speed, ratio = measure_level(chunks, level, seconds_per_level)
        measured.append({"level": level, "compress_mb_s": round(speed * cores, 3), "ratio": round(ratio, 6)})
        if not quiet:
            print(f"[bwp bench compression] level {level:2d}: {speed:8.2f} MB/s per core, ratio {ratio:.4f}",
                  file=sys.stderr, flush=True)  # fmt: skip
    kept, dropped = ladder(measured)
    profile = {
        "version": PROFILE_VERSION,
        "codec": "zstd",
        "chunk_bytes": chunk_bytes,
        "levels": kept,
        "measured_on": {
            "command": command,
            "machine": platform.node(),
            "cpu": _cpu_model(),
            "cores": cores,
            "python": platform.python_version(),
            "zstandard": zstd.__version__,
            "corpus": corpus_name,
            "corpus_bytes": len(corpus),
            "seconds_per_level": seconds_per_level,
            "bench_seconds": round(time.perf_counter() - t_start, 1),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "dropped": dropped,
    }
    CompressionProfile.from_dict(profile, source="measured profile")  # the file must load
    return profile


def write_profile(profile: dict[str, Any], out: Path) -> None:
    """Write the profile JSON (indented, one level per line readable) to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=1) + "\n")
