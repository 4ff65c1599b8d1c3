"""Telemetry JSON-lines files (plain or gzip): the format of simulator output,
trace imports and recordings. One :class:`~stream.core.records.Telemetry` per line."""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, cast

from stream.core.errors import DataError, TelemetryDecodeError
from stream.core.records import Telemetry


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8"))
    return open(path, mode, encoding="utf-8")


def read_jsonl(paths: Path | str | Iterable[Path | str]) -> Iterator[Telemetry]:
    """Yield every record of one or more files, in file order.

    Raises :class:`DataError` naming the file and line of the first invalid record.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for p in map(Path, paths):
        if not p.is_file():
            raise DataError(f"telemetry file {p} does not exist")
        with _open(p, "r") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield Telemetry.from_bytes(line.encode())
                except TelemetryDecodeError as exc:
                    raise DataError(f"{p}:{lineno}: not a valid telemetry record ({exc})") from exc


def write_jsonl(path: Path | str, records: Iterable[Telemetry]) -> int:
    """Write records (gzip when the name ends in .gz); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with _open(path, "w") as fh:
        for r in records:
            fh.write(r.to_bytes().decode())
            fh.write("\n")
            n += 1
    return n
