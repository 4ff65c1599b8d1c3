"""Progress lines for long jobs (training, retraining, evaluation): one type, one printer."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

#: A progress callback: takes one human-readable line.
Progress = Callable[[str], None]


def stderr_progress(msg: str, tag: str = "bwp train") -> None:
    """Print ``[<tag> HH:MM:SS] msg`` on stderr, flushed (stdout stays for JSON output)."""
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
