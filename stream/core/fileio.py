"""Durable files and exclusive locks, one implementation each.

A durable write goes to a temporary file in the target's folder, is fsynced, renamed over the
target with :func:`os.replace` and the folder is fsynced: a crash leaves the old file or the
new one, never a torn one, and the rename survives a power cut. Writers that must commit
several files in a chosen order (the recorder) take the fsynced temporary files and rename
them themselves.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from stream.core.errors import BwpError


def fsync_dir(path: Path) -> None:
    """Fsync a folder, so that renames and new names in it are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_temp(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Run ``write(fh)`` on a new temporary file next to ``path``, fsync it; returns its path.

    The temporary name starts with ``.<name>.`` and ends with ``.tmp``, so that a crashed
    writer's leftovers can be found and removed. On error the temporary file is removed.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            write(raw)
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def lines_temp(path: Path, lines: Iterable[bytes], gz: bool) -> Path:
    """A durable temporary file next to ``path`` holding ``lines``, gzipped one per line, or
    (``gz=False``) joined as they are."""

    def write(raw: IO[bytes]) -> None:
        if gz:
            # mtime=0: identical content gives identical bytes (reproducible files)
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as fh:
                for line in lines:
                    fh.write(line)
                    fh.write(b"\n")
        else:
            raw.write(b"".join(lines))

    return durable_temp(path, write)


def gzip_concat_temp(path: Path, sources: list[Path]) -> Path:
    """A durable temporary file next to ``path``: the decompressed ``sources``, concatenated, gzipped."""

    def write(raw: IO[bytes]) -> None:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as out:
            for src in sources:
                with gzip.open(src, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)

    return durable_temp(path, write)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably (temporary file, fsync, rename, fsync the folder)."""

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    tmp = durable_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


class ExclusiveLock:
    """A non-blocking exclusive ``flock`` on ``path``, held while the context is open.

    Entering raises :class:`BwpError` with ``held_message`` when another process holds the
    lock. The lock file keeps the holder's pid (for people; the kernel lock is what counts)
    and is released when the file is closed, so a crashed holder never leaves it stuck.
    """

    def __init__(self, path: Path, held_message: str) -> None:
        self.path = Path(path)
        self.held_message = held_message
        self._fh: Any = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`BwpError`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise BwpError(self.held_message) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        """Release the lock (closing the file releases the flock); a no-op when not held."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ExclusiveLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
