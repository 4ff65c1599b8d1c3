"""Per-link rolling windows in Redis, updated by one atomic Lua script call per record.

Layout (every key hash-tagged on the link, so both keys of a link live in the same
Redis Cluster slot and one script may touch them):

* ``{prefix}:{<link_id>}:w`` - a list of the link's last :data:`KEEP` accepted states,
  oldest first. Each entry is :data:`ENTRY_BYTES` bytes: the seq as 20 zero-padded
  decimal digits, the four features as little-endian float64 in
  :data:`stream.records.FEATURES` order, then the link's long-memory state after that
  step (:mod:`stream.core.longmem`, 6 float64, appended by the script). Zero padding makes
  seq comparison a plain string comparison in Lua (Lua numbers are doubles and lose int64
  precision), and the fixed width lets Python decode a whole window with one
  ``np.frombuffer``. An entry written before the long-memory state existed
  (:data:`OLD_ENTRY_BYTES`) reads as the all-zero state ("nothing known").
* ``{prefix}:{<link_id>}:m`` - a hash: ``last`` = highest seq accepted into the window,
  ``ack`` = highest seq whose decision the broker acknowledged, ``lm`` = the long-memory
  state after ``last`` (packed as in the entries).

Both keys get their TTL refreshed on every accepted state.

See docs/pipeline.md for why ``ack`` is kept apart from ``last`` (at-least-once input,
exactly one decision per state).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.core.longmem import STATE, STATE_STRUCT
from stream.core.records import FEATURES, WINDOW, Telemetry

log = logging.getLogger(__name__)

#: Accepted states kept per link: the window plus slack, so that a state redelivered
#: after a crash can still get its own window rebuilt.
KEEP = WINDOW + 16
#: Most new states of one link the worker sends to Redis before their decisions are
#: acknowledged. The oldest of them must still have its 9 predecessors among the KEEP
#: stored states after a crash (or a retried round trip) for its window to be rebuilt:
#: n + WINDOW - 1 <= KEEP.
MAX_UNACKED_PER_LINK = KEEP - WINDOW + 1
SEQ_DIGITS = 20
_FEATS = struct.Struct("<4d")
#: What the worker packs per record (the script appends the long-memory state).
OLD_ENTRY_BYTES = SEQ_DIGITS + _FEATS.size
ENTRY_BYTES = OLD_ENTRY_BYTES + STATE_STRUCT.size
_OLD_DTYPE = np.dtype([("seq", f"S{SEQ_DIGITS}"), ("x", "<f8", (len(FEATURES),))])
#: numpy view of one stored entry.
ENTRY_DTYPE = np.dtype([("seq", f"S{SEQ_DIGITS}"), ("x", "<f8", (len(FEATURES),)), ("lm", "<f8", (len(STATE),))])


class Outcome(enum.IntEnum):
    """What the update script did with one record."""

    #: seq <= last and the state's decision was already acknowledged (or none was owed).
    DUPLICATE = 0
    #: seq <= last and the state's window cannot be rebuilt (out of order, or older than the kept states).
    STALE = 1
    #: seq <= last, > ack: a redelivered state whose decision is still owed; window returned.
    REDELIVERED = 2
    #: new state accepted, window still has fewer than WINDOW states.
    FILLING = 3
    #: new state accepted, window of WINDOW states returned.
    FULL = 4


def split_per_link(records: Sequence[Telemetry], limit: int = MAX_UNACKED_PER_LINK) -> list[list[Telemetry]]:
    """Cut ``records`` into contiguous chunks holding at most ``limit`` states of any one link."""
    chunks: list[list[Telemetry]] = []
    cur: list[Telemetry] = []
    counts: dict[str, int] = {}
    for r in records:
        n = counts.get(r.link_id, 0)
        if n >= limit:
            chunks.append(cur)
            cur, counts, n = [], {}, 0
        cur.append(r)
        counts[r.link_id] = n + 1
    if cur:
        chunks.append(cur)
    return chunks


def pad_seq(seq: int) -> bytes:
    """The seq as the fixed-width string stored in Redis."""
    return b"%020d" % seq


def pack_entry(rec: Telemetry) -> bytes:
    """One stored state: padded seq + 4 float64 features."""
    return pad_seq(rec.seq) + _FEATS.pack(rec.latency_ms, rec.bandwidth_mbps, rec.packet_loss, rec.reliability)


def full_entry(entry: bytes) -> bytes:
    """A stored entry in the current layout (an old one gets the all-zero long-memory state)."""
    return entry if len(entry) == ENTRY_BYTES else entry[:OLD_ENTRY_BYTES] + bytes(STATE_STRUCT.size)


def decode_entries(entries: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored entries (either layout) -> (seqs (n,) int64, features (n, 4), long-memory states (n, 6))."""
    arr = np.frombuffer(b"".join(full_entry(e) for e in entries), dtype=ENTRY_DTYPE)
    return arr["seq"].astype(np.int64), arr["x"].astype(np.float64), arr["lm"].astype(np.float64)


def decode_window(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A concatenation of worker-packed entries (:func:`pack_entry`) -> (seqs (n,) int64, features (n, 4))."""
    arr = np.frombuffer(blob, dtype=_OLD_DTYPE)
    return arr["seq"].astype(np.int64), arr["x"].astype(np.float64)


@dataclass(frozen=True, slots=True)
class Update:
    """Result of one record's window update."""

    outcome: Outcome
    #: (WINDOW, 4) float64 window ending at the record's state, for FULL / REDELIVERED.
    window: np.ndarray | None = None
    #: states in the window after a FILLING update.
    filled: int = 0
    #: (6,) the link's long-memory state after the record's state (stream.core.longmem), with a window.
    state: np.ndarray | None = None


_HAS_WINDOW = (int(Outcome.FULL), int(Outcome.REDELIVERED))


@dataclass(frozen=True, slots=True)
class BatchUpdate:
    """The window updates of a run of records, as arrays (what the worker's hot path reads)."""

    #: (n,) int8 :class:`Outcome` values, in record order.
    outcomes: np.ndarray
    #: (n,) uint8 states in the window after each FILLING update (0 otherwise).
    filled: np.ndarray
    #: (m, WINDOW, 4) float64 windows of the FULL and REDELIVERED records, in record order.
    windows: np.ndarray
    #: (m, 6) float64 long-memory state after each window's last state (None: all zero, nothing known).
    states: np.ndarray | None = None

    def window_states(self) -> np.ndarray:
        """(m, 6) long-memory states of the windows (zeros where none are known)."""
        return self.states if self.states is not None else np.zeros((len(self.windows), len(STATE)))

    def has_window(self) -> np.ndarray:
        """(n,) bool: which records got a window (row i of ``windows`` is the i-th True)."""
        return np.isin(self.outcomes, _HAS_WINDOW)

    def count(self, outcome: Outcome) -> int:
        """How many records had this outcome."""
        return int(np.count_nonzero(self.outcomes == int(outcome)))

    def to_updates(self) -> list[Update]:
        """One :class:`Update` per record, in order."""
        out: list[Update] = []
        wins = iter(zip(self.windows, self.window_states()))
        for code, filled in zip(self.outcomes.tolist(), self.filled.tolist()):
            oc = Outcome(code)
            if code in _HAS_WINDOW:
                w, st = next(wins)
                out.append(Update(oc, w, 0, st))
            else:
                out.append(Update(oc, None, filled if oc is Outcome.FILLING else 0))
        return out

    @classmethod
    def from_updates(cls, updates: Sequence[Update]) -> BatchUpdate:
        """The batch of a list of per-record updates."""
        wins = [u.window for u in updates if int(u.outcome) in _HAS_WINDOW and u.window is not None]
        zero = np.zeros(len(STATE))
        states = [zero if u.state is None else u.state
                  for u in updates if int(u.outcome) in _HAS_WINDOW and u.window is not None]  # fmt: skip
        return cls(
            np.array([int(u.outcome) for u in updates], dtype=np.int8),
            np.array([u.filled for u in updates], dtype=np.uint8),
            np.stack(wins).astype(np.float64) if wins else np.empty((0, WINDOW, len(FEATURES))),
            np.stack(states) if states else np.empty((0, len(STATE))),
        )

    @classmethod
    def concat(cls, parts: Sequence[BatchUpdate]) -> BatchUpdate:
        """The batches of consecutive parts, as one batch, in order."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.outcomes for p in parts]) if parts else np.empty(0, np.int8),
            np.concatenate([p.filled for p in parts]) if parts else np.empty(0, np.uint8),
            np.concatenate([p.windows for p in parts]) if parts else np.empty((0, WINDOW, len(FEATURES))),
            np.concatenate([p.window_states() for p in parts]) if parts else np.empty((0, len(STATE))),
        )


async def retry_forever(what: str, fn: Any, *, first_s: float = 0.1, cap_s: float = 2.0, on_error: Any = None) -> Any:
    """Await ``fn()`` until it succeeds, backing off exponentially (capped) between tries.

    Used for Redis calls: the worker must neither crash nor move on while Redis is away.
    ``on_error(exc)`` is called on every failure (metrics). Cancellation propagates.
    """
    delay = first_s
    failures = 0
    while True:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            if on_error is not None:
                on_error(exc)
            lvl = logging.WARNING if failures == 1 or failures % 10 == 0 else logging.DEBUG
            log.log(lvl, "%s failed (attempt %d), retrying in %.2fs: %s", what, failures, delay, exc)
            await asyncio.sleep(delay)
            delay = min(cap_s, delay * 2)
