"""The in-process twin of the Redis window store: same outcomes, same windows, no server
(backtests and unit tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from stream.core.longmem import initial_state, update_state
from stream.core.records import WINDOW, Telemetry
from stream.pipeline.aci import AciParams, AciState, calibrate_link
from stream.pipeline.window import KEEP, BatchUpdate, Outcome, Update


class MemoryWindowStore:
    """In-process twin of :class:`stream.pipeline.redis_window.WindowStore` (same outcomes, same windows)."""

    def __init__(self, keep: int = KEEP) -> None:
        if keep < WINDOW:
            raise ValueError(f"keep must be >= {WINDOW}, got {keep}")
        self.keep = keep
        # per link: (seq, features, long-memory state after it), oldest first
        self._entries: dict[str, list[tuple[int, tuple[float, float, float, float], list[float]]]] = {}
        self._lm: dict[str, list[float]] = {}
        self._last: dict[str, int] = {}
        self._ack: dict[str, int] = {}
        self._aci: dict[str, AciState] = {}

    def _update_one(self, r: Telemetry) -> Update:
        lid, seq = r.link_id, r.seq
        entries = self._entries.setdefault(lid, [])
        last = self._last.get(lid)
        if last is not None and seq <= last:
            ack = self._ack.get(lid)
            if ack is not None and seq <= ack:
                return Update(Outcome.DUPLICATE)
            # newest first, as the script scans: stop at the first smaller seq
            for i in range(len(entries) - 1, -1, -1):
                s = entries[i][0]
                if s == seq:
                    if i + 1 < WINDOW:  # fewer than WINDOW states up to it
                        return Update(Outcome.DUPLICATE if len(entries) < self.keep else Outcome.STALE)
                    w = np.array([x for _, x, _ in entries[i + 1 - WINDOW : i + 1]], dtype=np.float64)
                    return Update(Outcome.REDELIVERED, w, 0, np.array(entries[i][2]))
                if s < seq:
                    break
            return Update(Outcome.STALE)
        lm = update_state(self._lm.get(lid) or initial_state(), r.bandwidth_mbps)
        self._lm[lid] = lm
        entries.append((seq, r.features(), lm))
        if len(entries) > self.keep:
            del entries[: len(entries) - self.keep]
        self._last[lid] = seq
        n = len(entries)
        if n < WINDOW:
            return Update(Outcome.FILLING, None, n)
        w = np.array([x for _, x, _ in entries[-WINDOW:]], dtype=np.float64)
        return Update(Outcome.FULL, w, 0, np.array(lm))

    async def update(self, records: Sequence[Telemetry]) -> list[Update]:
        """Apply ``records`` in order (like one round of the update script)."""
        return [self._update_one(r) for r in records]

    async def update_batch(self, records: Sequence[Telemetry]) -> BatchUpdate:
        """Apply every record in order, as the Redis store's batched script does."""
        return BatchUpdate.from_updates([self._update_one(r) for r in records])

    async def ack(self, acks: Iterable[tuple[str, int]]) -> None:
        """``ack`` only moves forward, per link."""
        for link, seq in acks:
            if seq > self._ack.get(link, -1):
                self._ack[link] = seq

    async def calibrate(self, records: Sequence[Telemetry], q: np.ndarray, params: AciParams) -> np.ndarray:
        """The Redis store's online calibration (stream.pipeline.aci), record by record."""
        out = np.empty((len(records), 2))
        for i, (r, row) in enumerate(zip(records, np.asarray(q, dtype=np.float64).tolist())):
            self._aci[r.link_id], out[i, 0], out[i, 1] = calibrate_link(
                self._aci.get(r.link_id), r.seq, r.bandwidth_mbps, row, params
            )
        return out

    async def aci_state(self, link_id: str) -> AciState | None:
        """A link's calibration state."""
        return self._aci.get(link_id)

    async def window(self, link_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(seqs (n,), features (n, 4)) of a link, oldest first."""
        e = self._entries.get(link_id, [])
        seqs = np.array([s for s, _, _ in e], dtype=np.int64)
        return seqs, np.array([x for _, x, _ in e], dtype=np.float64).reshape(-1, 4)

    async def long_memory(self, link_id: str) -> np.ndarray | None:
        """A link's latest long-memory state (6,), None when it was never seen."""
        lm = self._lm.get(link_id)
        return None if lm is None else np.array(lm)

    async def meta(self, link_id: str) -> dict[str, int | None]:
        """``{"last": seq | None, "ack": seq | None}`` of a link."""
        return {"last": self._last.get(link_id), "ack": self._ack.get(link_id)}
