"""Per-link rolling windows in Redis, updated by one atomic Lua script call per record.

Layout (every key hash-tagged on the link, so both keys of a link live in the same
Redis Cluster slot and one script may touch them):

* ``{prefix}:{<link_id>}:w`` - a list of the link's last :data:`KEEP` accepted states,
  oldest first. Each entry is :data:`ENTRY_BYTES` bytes: the seq as 20 zero-padded
  decimal digits, then the four features as little-endian float64 in
  :data:`stream.records.FEATURES` order. Zero padding makes seq comparison a plain
  string comparison in Lua (Lua numbers are doubles and lose int64 precision), and the
  fixed width lets Python decode a whole window with one ``np.frombuffer``.
* ``{prefix}:{<link_id>}:m`` - a hash: ``last`` = highest seq accepted into the window,
  ``ack`` = highest seq whose decision the broker acknowledged.

Both keys get their TTL refreshed on every accepted state.

See docs/pipeline.md for why ``ack`` is kept apart from ``last`` (at-least-once input,
exactly one decision per state).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from stream.records import FEATURES, WINDOW, Telemetry

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
ENTRY_BYTES = SEQ_DIGITS + _FEATS.size
#: numpy view of one stored entry.
ENTRY_DTYPE = np.dtype([("seq", f"S{SEQ_DIGITS}"), ("x", "<f8", (len(FEATURES),))])


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


# One call applies a run of records in order (the same steps per record as one call
# each, at a fraction of the cost: per-command dispatch and reply handling dominated).
# KEYS[2i-1], KEYS[2i]: window list and meta hash of record i
# ARGV[1] ttl s, ARGV[2] keep, ARGV[3] window; ARGV[2+2i] seq of record i (20-digit zero
# padded), ARGV[3+2i] its packed entry.
# Returns {codes, filled, windows}: one byte per record each for the Outcome ('0'+code)
# and the window fill after a FILLING update; the windows of FULL and REDELIVERED
# records concatenated in record order.
UPDATE_LUA = """
local ttl = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local w = tonumber(ARGV[3])
local codes, filled, windows = {}, {}, {}
local function update(i, wkey, mkey, seq, entry)
  local meta = redis.call('HMGET', mkey, 'last', 'ack')
  local last, ack = meta[1], meta[2]
  if last and seq <= last then
    if ack and seq <= ack then return 0 end
    local entries = redis.call('LRANGE', wkey, 0, -1)
    for i = #entries, 1, -1 do
      local s = string.sub(entries[i], 1, 20)
      if s == seq then
        if i < w then
          -- fewer than w states before it: no window, no decision owed - unless the
          -- list was trimmed, in which case the window existed but cannot be rebuilt
          if #entries < keep then return 0 end
          return 1
        end
        windows[#windows + 1] = table.concat(entries, '', i - w + 1, i)
        return 2
      end
      if s < seq then break end
    end
    return 1
  end
  local n = redis.call('RPUSH', wkey, entry)
  if n > keep then
    redis.call('LTRIM', wkey, -keep, -1)
    n = keep
  end
  redis.call('HSET', mkey, 'last', seq)
  redis.call('EXPIRE', wkey, ttl)
  redis.call('EXPIRE', mkey, ttl)
  if n < w then
    filled[i] = n
    return 3
  end
  windows[#windows + 1] = table.concat(redis.call('LRANGE', wkey, -w, -1))
  return 4
end
for i = 1, #KEYS / 2 do
  local code = update(i, KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 + 2 * i], ARGV[3 + 2 * i])
  codes[i] = string.char(48 + code)
  filled[i] = string.char(filled[i] or 0)
end
return {table.concat(codes), table.concat(filled), table.concat(windows)}
"""

# KEYS[i] meta hash of a link, ARGV[i] its newly acknowledged seq (padded): ack only
# moves forward.
ACK_LUA = """
for i = 1, #KEYS do
  local ack = redis.call('HGET', KEYS[i], 'ack')
  if (not ack) or ARGV[i] > ack then
    redis.call('HSET', KEYS[i], 'ack', ARGV[i])
  end
end
return #KEYS
"""

#: Records per update-script call (calls of one batch share one round trip). Bounds
#: how long one call holds Redis (about a millisecond) and the size of its reply.
CALL_RECORDS = 256


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


def decode_window(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A concatenation of stored entries -> (seqs (n,) int64, features (n, 4) float64)."""
    arr = np.frombuffer(blob, dtype=ENTRY_DTYPE)
    return arr["seq"].astype(np.int64), arr["x"].astype(np.float64)


@dataclass(frozen=True, slots=True)
class Update:
    """Result of one record's window update."""

    outcome: Outcome
    #: (WINDOW, 4) float64 window ending at the record's state, for FULL / REDELIVERED.
    window: np.ndarray | None = None
    #: states in the window after a FILLING update.
    filled: int = 0


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

    def has_window(self) -> np.ndarray:
        """(n,) bool: which records got a window (row i of ``windows`` is the i-th True)."""
        return np.isin(self.outcomes, _HAS_WINDOW)

    def count(self, outcome: Outcome) -> int:
        return int(np.count_nonzero(self.outcomes == int(outcome)))

    def to_updates(self) -> list[Update]:
        out: list[Update] = []
        wins = iter(self.windows)
        for code, filled in zip(self.outcomes.tolist(), self.filled.tolist()):
            oc = Outcome(code)
            if code in _HAS_WINDOW:
                out.append(Update(oc, next(wins)))
            else:
                out.append(Update(oc, None, filled if oc is Outcome.FILLING else 0))
        return out

    @classmethod
    def from_updates(cls, updates: Sequence[Update]) -> "BatchUpdate":
        wins = [u.window for u in updates if int(u.outcome) in _HAS_WINDOW]
        return cls(
            np.array([int(u.outcome) for u in updates], dtype=np.int8),
            np.array([u.filled for u in updates], dtype=np.uint8),
            np.stack(wins).astype(np.float64) if wins else np.empty((0, WINDOW, len(FEATURES))),
        )

    @classmethod
    def concat(cls, parts: Sequence["BatchUpdate"]) -> "BatchUpdate":
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.outcomes for p in parts]) if parts else np.empty(0, np.int8),
            np.concatenate([p.filled for p in parts]) if parts else np.empty(0, np.uint8),
            np.concatenate([p.windows for p in parts]) if parts else np.empty((0, WINDOW, len(FEATURES))),
        )


class WindowStore:
    """The Redis side of the pipeline (async). One instance per worker process.

    ``client`` is a ``redis.asyncio.Redis`` (or ``RedisCluster``); the store never
    closes it.
    """

    def __init__(self, client: Any, prefix: str = "bwp", ttl_s: int = 86_400, keep: int = KEEP) -> None:
        if keep < WINDOW:
            raise ValueError(f"keep must be >= {WINDOW}, got {keep}")
        self.client = client
        self.prefix = prefix
        self.ttl_s = int(ttl_s)
        self.keep = int(keep)
        self._update_sha: str | None = None
        self._ack_sha: str | None = None

    # --- keys ---------------------------------------------------------------------------
    def window_key(self, link_id: str) -> str:
        return f"{self.prefix}:{{{link_id}}}:w"

    def meta_key(self, link_id: str) -> str:
        return f"{self.prefix}:{{{link_id}}}:m"

    # --- scripts ------------------------------------------------------------------------
    async def load_scripts(self) -> None:
        """SCRIPT LOAD both scripts (again after a Redis restart / failover)."""
        self._update_sha = await self.client.script_load(UPDATE_LUA)
        self._ack_sha = await self.client.script_load(ACK_LUA)

    async def _run_pipelined(self, sha_attr: str, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """EVALSHA every call in one round trip; reload the scripts on NOSCRIPT and replay."""
        from redis.exceptions import NoScriptError

        for attempt in (0, 1):
            if getattr(self, sha_attr) is None:
                await self.load_scripts()
            sha = getattr(self, sha_attr)
            replies = await (self._send_raw(sha, calls) if self._raw_ok() else self._send_pipeline(sha, calls))
            err = next((r for r in replies if isinstance(r, Exception)), None)
            if err is None:
                return replies
            if isinstance(err, NoScriptError) and not attempt:
                # Redis restarted (empty script cache). Every EVALSHA of this round trip
                # failed the same way, so nothing changed: load and replay.
                setattr(self, sha_attr, None)
                continue
            raise err
        raise AssertionError("unreachable")

    def _raw_ok(self) -> bool:
        # The hand-packed path needs one connection pool (not RedisCluster).
        return hasattr(self.client, "connection_pool") and not hasattr(self.client, "nodes_manager")

    async def _send_pipeline(self, sha: str, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        # transaction=False: each script is atomic by itself; MULTI would only add latency.
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command("EVALSHA", sha, *call)
        return await pipe.execute(raise_on_error=False)

    async def _send_raw(self, sha: str, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Same as a redis-py pipeline, with the RESP commands packed here: building them
        is most of a pipeline's client-side cost (measured ~40 us/record in redis-py's
        packer vs a few here), and this runs for every telemetry record."""
        from redis.exceptions import ResponseError

        head = b"$7\r\nEVALSHA\r\n$%d\r\n%s\r\n" % (len(sha), sha.encode() if isinstance(sha, str) else sha)
        parts: list[bytes] = []
        add = parts.append
        for call in calls:
            add(b"*%d\r\n" % (len(call) + 2))
            add(head)
            for a in call:
                b = a if isinstance(a, bytes) else str(a).encode()
                add(b"$%d\r\n" % len(b))
                add(b)
                add(b"\r\n")
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(b"".join(parts), check_health=False)
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # an error reply: consumed, the stream stays in sync
                    replies.append(exc)
        except BaseException:
            # Timeout / cancellation mid-stream leaves unread replies: never reuse this socket.
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        return replies

    # --- operations ---------------------------------------------------------------------
    def _calls(self, records: Sequence[Telemetry]) -> tuple[list[tuple[Any, ...]], list[list[int]]]:
        """Update-script calls for ``records`` (each at most CALL_RECORDS, record order kept
        per link) and, per call, the positions of its records in ``records``."""
        if hasattr(self.client, "nodes_manager"):
            # Redis Cluster: a call may only touch keys of one slot. A link's keys share
            # its slot (hash tag), so grouping by slot keeps each link's order.
            from redis.crc import key_slot

            groups: dict[int, list[int]] = {}
            for i, r in enumerate(records):
                groups.setdefault(key_slot(self.meta_key(r.link_id).encode()), []).append(i)
            runs = [g[j : j + CALL_RECORDS] for g in groups.values() for j in range(0, len(g), CALL_RECORDS)]
        else:
            runs = [list(range(j, min(j + CALL_RECORDS, len(records)))) for j in range(0, len(records), CALL_RECORDS)]
        head = (str(self.ttl_s), str(self.keep), str(WINDOW))
        prefix = self.prefix
        calls = []
        for run in runs:
            keys: list[str] = []
            args: list[Any] = list(head)
            for i in run:
                r = records[i]
                lid = r.link_id
                keys.append(f"{prefix}:{{{lid}}}:w")
                keys.append(f"{prefix}:{{{lid}}}:m")
                args.append(b"%020d" % r.seq)
                args.append(pack_entry(r))
            calls.append((len(keys), *keys, *args))
        return calls, runs

    async def update_batch(self, records: Sequence[Telemetry]) -> BatchUpdate:
        """Apply ``records`` in order (atomically per call of up to CALL_RECORDS records),
        in one round trip."""
        if not records:
            return BatchUpdate.from_updates([])
        calls, runs = self._calls(records)
        replies = await self._run_pipelined("_update_sha", calls)
        parts = []
        for codes, filled, windows in replies:
            parts.append(BatchUpdate(
                np.frombuffer(codes, dtype=np.int8) - 48,
                np.frombuffer(filled, dtype=np.uint8),
                np.frombuffer(windows, dtype=ENTRY_DTYPE)["x"].reshape(-1, WINDOW, len(FEATURES)),
            ))  # fmt: skip
        if len(runs) > 1 and any(run[0] != runs[i - 1][-1] + 1 for i, run in enumerate(runs) if i):
            return _reorder(parts, runs, len(records))
        return BatchUpdate.concat(parts)

    async def update(self, records: Sequence[Telemetry]) -> list[Update]:
        """Like :meth:`update_batch`, one :class:`Update` per record (tests, tools)."""
        return (await self.update_batch(records)).to_updates()

    async def ack(self, acks: Iterable[tuple[str, int]]) -> None:
        """Record that the decisions up to ``seq`` of each ``(link_id, seq)`` are acknowledged."""
        best: dict[str, int] = {}
        for link, seq in acks:
            if seq > best.get(link, -1):
                best[link] = seq
        if not best:
            return
        items = list(best.items())
        if hasattr(self.client, "nodes_manager"):
            from redis.crc import key_slot

            groups: dict[int, list[tuple[str, int]]] = {}
            for link, seq in items:
                groups.setdefault(key_slot(self.meta_key(link).encode()), []).append((link, seq))
            runs = list(groups.values())
        else:
            runs = [items[j : j + 4 * CALL_RECORDS] for j in range(0, len(items), 4 * CALL_RECORDS)]
        calls = [(len(run), *(self.meta_key(l) for l, _ in run), *(pad_seq(s) for _, s in run)) for run in runs]
        await self._run_pipelined("_ack_sha", calls)

    async def window(self, link_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The stored states of a link: (seqs (n,), features (n, 4)), oldest first (for tests/tools)."""
        entries = await self.client.lrange(self.window_key(link_id), 0, -1)
        return decode_window(b"".join(entries))

    async def meta(self, link_id: str) -> dict[str, int | None]:
        """``{"last": seq | None, "ack": seq | None}`` of a link."""
        last, ack = await self.client.hmget(self.meta_key(link_id), "last", "ack")
        return {"last": int(last) if last else None, "ack": int(ack) if ack else None}


def _reorder(parts: Sequence[BatchUpdate], runs: Sequence[Sequence[int]], n: int) -> BatchUpdate:
    """Per-slot call results (Redis Cluster) back in record order."""
    pos = np.concatenate([np.asarray(r, dtype=np.int64) for r in runs])
    merged = BatchUpdate.concat(parts)
    order = np.empty(n, dtype=np.int64)
    order[pos] = np.arange(n)
    # windows: rows follow the records with a window, in call order; re-sort them by position
    has = merged.has_window()
    win_pos = pos[has]
    return BatchUpdate(merged.outcomes[order], merged.filled[order], merged.windows[np.argsort(win_pos, kind="stable")])


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
        except Exception as exc:  # noqa: BLE001 - every failure is retried, none is swallowed
            failures += 1
            if on_error is not None:
                on_error(exc)
            lvl = logging.WARNING if failures == 1 or failures % 10 == 0 else logging.DEBUG
            log.log(lvl, "%s failed (attempt %d), retrying in %.2fs: %s", what, failures, delay, exc)
            await asyncio.sleep(delay)
            delay = min(cap_s, delay * 2)
