"""The Redis window store: one atomic Lua call per record keeps each link's last states and
its delivered/acknowledged sequence numbers (docs/pipeline.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from string import Template
from typing import Any

import numpy as np

from stream.core.longmem import EPS_ABS, EPS_SHARE, SPANS, STATE, VOL_SPAN
from stream.core.records import BW, FEATURES, WINDOW, Telemetry
from stream.pipeline import _redis_compat
from stream.pipeline.aci import ACI_LUA, AciParams, AciState
from stream.pipeline.window import (
    ENTRY_BYTES,
    ENTRY_DTYPE,
    KEEP,
    OLD_ENTRY_BYTES,
    SEQ_DIGITS,
    BatchUpdate,
    Update,
    decode_entries,
    pack_entry,
    pad_seq,
)

# One call applies a run of records in order (the same steps per record as one call
# each, at a fraction of the cost: per-command dispatch and reply handling dominated).
# KEYS[2i-1], KEYS[2i]: window list and meta hash of record i
# ARGV[1] ttl s, ARGV[2] keep, ARGV[3] window; ARGV[2+2i] seq of record i (20-digit zero
# padded), ARGV[3+2i] its packed entry.
# Returns {codes, filled, windows}: one byte per record each for the Outcome ('0'+code)
# and the window fill after a FILLING update; the windows of FULL and REDELIVERED
# records concatenated in record order, each entry with the link's long-memory state after
# it (stream.core.longmem: updated here, once per accepted seq, never by a duplicate).
UPDATE_LUA = Template("""
local ttl = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local w = tonumber(ARGV[3])
local FULL = $full
local OLD = $old
local ZERO = string.rep('\\0', FULL - OLD)
local codes, filled, windows = {}, {}, {}
-- the long-memory state after one more step of bandwidth b (stream.core.longmem.update_state:
-- the same operations in the same order, so both give the same doubles)
local function lm_next(packed, b)
  if not (b > 0) then b = 0 end  -- as the twin: negative, -0.0 (and NaN) count as 0
  if not packed then return struct.pack('<dddddd', 1, b, b, b, b, 0) end
  local n, prev, m10, m60, m360, vol = struct.unpack('<dddddd', packed)
  if n == 0 then return struct.pack('<dddddd', 1, b, b, b, b, 0) end
  local e = $eps_share * m60 + $eps_abs
  local r = math.log((b + e) / (prev + e))
  local a = 2.0 / ($s1 + 1.0)
  m10 = (1.0 - a) * m10 + a * b
  a = 2.0 / ($s2 + 1.0)
  m60 = (1.0 - a) * m60 + a * b
  a = 2.0 / ($s3 + 1.0)
  m360 = (1.0 - a) * m360 + a * b
  a = 2.0 / ($vs + 1.0)
  vol = (1.0 - a) * vol + a * (r * r)
  return struct.pack('<dddddd', n + 1.0, b, m10, m60, m360, vol)
end
-- entries i..j of a list, each in the current layout (an entry from before the long-memory
-- state existed gets the all-zero state)
local function window_of(entries, i, j)
  local out = {}
  for k = i, j do
    local e = entries[k]
    if #e ~= FULL then e = string.sub(e, 1, OLD) .. ZERO end
    out[#out + 1] = e
  end
  return table.concat(out)
end
local function update(i, wkey, mkey, seq, entry)
  local meta = redis.call('HMGET', mkey, 'last', 'ack', 'lm')
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
        windows[#windows + 1] = window_of(entries, i - w + 1, i)
        return 2
      end
      if s < seq then break end
    end
    return 1
  end
  local lm = lm_next(meta[3], struct.unpack('<d', entry, $bw_at))
  local n = redis.call('RPUSH', wkey, entry .. lm)
  if n > keep then
    redis.call('LTRIM', wkey, -keep, -1)
    n = keep
  end
  redis.call('HSET', mkey, 'last', seq, 'lm', lm)
  redis.call('EXPIRE', wkey, ttl)
  redis.call('EXPIRE', mkey, ttl)
  if n < w then
    filled[i] = n
    return 3
  end
  windows[#windows + 1] = window_of(redis.call('LRANGE', wkey, -w, -1), 1, w)
  return 4
end
for i = 1, #KEYS / 2 do
  local code = update(i, KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 + 2 * i], ARGV[3 + 2 * i])
  codes[i] = string.char(48 + code)
  filled[i] = string.char(filled[i] or 0)
end
return {table.concat(codes), table.concat(filled), table.concat(windows)}
""").substitute(
    full=ENTRY_BYTES, old=OLD_ENTRY_BYTES, eps_share=repr(EPS_SHARE), eps_abs=repr(EPS_ABS),
    s1=f"{SPANS[0]:.1f}", s2=f"{SPANS[1]:.1f}", s3=f"{SPANS[2]:.1f}", vs=f"{VOL_SPAN:.1f}",
    bw_at=SEQ_DIGITS + 1 + 8 * BW,  # 1-based offset of the bandwidth float64 in an entry
)  # fmt: skip
assert SPANS == (10, 60, 360) and len(STATE) == 6, "UPDATE_LUA spells out the spans of stream.core.longmem"

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
        self._aci_sha: str | None = None
        # redis-py release check, once per store (False: the public pipeline only; see _redis_compat)
        self._raw_tested = _redis_compat.check_version()

    # --- keys ---------------------------------------------------------------------------
    def window_key(self, link_id: str) -> str:
        """The key of a link's window list (hash-tagged: one cluster slot per link)."""
        return f"{self.prefix}:{{{link_id}}}:w"

    def meta_key(self, link_id: str) -> str:
        """The key of a link's last/ack sequence hash (same slot as its window)."""
        return f"{self.prefix}:{{{link_id}}}:m"

    # --- scripts ------------------------------------------------------------------------
    async def load_scripts(self) -> None:
        """SCRIPT LOAD the scripts (again after a Redis restart / failover)."""
        self._update_sha = await self.client.script_load(UPDATE_LUA)
        self._ack_sha = await self.client.script_load(ACK_LUA)
        self._aci_sha = await self.client.script_load(ACI_LUA)

    async def _run_pipelined(self, sha_attr: str, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """EVALSHA every call in one round trip; reload the scripts on NOSCRIPT and replay."""
        from redis.exceptions import NoScriptError  # redis-py: only code that talks to Redis

        for attempt in (0, 1):
            if getattr(self, sha_attr) is None:
                await self.load_scripts()
            sha = getattr(self, sha_attr)
            replies = await (
                _redis_compat.send_raw(self.client, sha, calls) if self._raw_ok() else self._send_pipeline(sha, calls)
            )
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
        # The hand-packed path needs a tested redis-py and one connection pool (not RedisCluster).
        return self._raw_tested and _redis_compat.single_pool(self.client)

    async def _send_pipeline(self, sha: str, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        # transaction=False: each script is atomic by itself; MULTI would only add latency.
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command("EVALSHA", sha, *call)
        return await pipe.execute(raise_on_error=False)

    # --- operations ---------------------------------------------------------------------
    def _runs(self, records: Sequence[Telemetry]) -> list[list[int]]:
        """Positions of ``records`` per script call: at most CALL_RECORDS each, record order
        kept per link."""
        if _redis_compat.is_cluster(self.client):
            # Redis Cluster: a call may only touch keys of one slot. A link's keys share
            # its slot (hash tag), so grouping by slot keeps each link's order.
            from redis.crc import key_slot

            groups: dict[int, list[int]] = {}
            for i, r in enumerate(records):
                groups.setdefault(key_slot(self.meta_key(r.link_id).encode()), []).append(i)
            return [g[j : j + CALL_RECORDS] for g in groups.values() for j in range(0, len(g), CALL_RECORDS)]
        return [list(range(j, min(j + CALL_RECORDS, len(records)))) for j in range(0, len(records), CALL_RECORDS)]

    def _calls(self, records: Sequence[Telemetry]) -> tuple[list[tuple[Any, ...]], list[list[int]]]:
        """Update-script calls for ``records`` and, per call, the positions of its records in ``records``."""
        runs = self._runs(records)
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
            entries = np.frombuffer(windows, dtype=ENTRY_DTYPE)  # (m * WINDOW,)
            parts.append(BatchUpdate(
                np.frombuffer(codes, dtype=np.int8) - 48,
                np.frombuffer(filled, dtype=np.uint8),
                entries["x"].reshape(-1, WINDOW, len(FEATURES)),
                entries["lm"].reshape(-1, WINDOW, len(STATE))[:, -1],  # the state after each window's last step
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
        if _redis_compat.is_cluster(self.client):
            from redis.crc import key_slot  # redis-py: only code that talks to Redis

            groups: dict[int, list[tuple[str, int]]] = {}
            for link, seq in items:
                groups.setdefault(key_slot(self.meta_key(link).encode()), []).append((link, seq))
            runs = list(groups.values())
        else:
            runs = [items[j : j + 4 * CALL_RECORDS] for j in range(0, len(items), 4 * CALL_RECORDS)]
        calls = [(len(run), *(self.meta_key(lid) for lid, _ in run), *(pad_seq(s) for _, s in run)) for run in runs]
        await self._run_pipelined("_ack_sha", calls)

    async def calibrate(self, records: Sequence[Telemetry], q: np.ndarray, params: AciParams) -> np.ndarray:
        """Online calibration of the decided ``records`` (stream.pipeline.aci): ``q`` (n, 3) is the
        model's h = 1 p10/p50/p90 per record; returns the published (n, 2) p10/p90, after
        updating each link's offsets in one atomic call (per CALL_RECORDS records)."""
        if not records:
            return np.empty((0, 2))
        head = (repr(params.gamma), repr(params.tau_lo), repr(params.tau_hi), repr(params.max_offset), str(self.ttl_s))
        runs = self._runs(records)
        rows = np.asarray(q, dtype=np.float64).tolist()
        calls = []
        for run in runs:
            keys = [f"{self.prefix}:{{{records[i].link_id}}}:m" for i in run]
            args: list[Any] = list(head)
            for i in run:
                lo, mid, hi = rows[i]
                args += [b"%020d" % records[i].seq, repr(records[i].bandwidth_mbps), repr(lo), repr(mid), repr(hi)]
            calls.append((len(keys), *keys, *args))
        replies = await self._run_pipelined("_aci_sha", calls)
        out = np.empty((len(records), 2))
        for run, reply in zip(runs, replies):
            out[run] = np.array(reply.split(), dtype=np.float64).reshape(-1, 2)
        return out

    async def aci_state(self, link_id: str) -> AciState | None:
        """A link's stored calibration state (tests, tools)."""
        raw = await self.client.hget(self.meta_key(link_id), "aci")
        return AciState.decode(raw) if raw else None

    async def window(self, link_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The stored states of a link: (seqs (n,), features (n, 4)), oldest first (for tests/tools)."""
        seqs, x, _ = decode_entries(await self.client.lrange(self.window_key(link_id), 0, -1))
        return seqs, x

    async def long_memory(self, link_id: str) -> np.ndarray | None:
        """A link's latest long-memory state (6,) (stream.core.longmem), None when none is stored."""
        raw = await self.client.hget(self.meta_key(link_id), "lm")
        return np.frombuffer(raw, dtype="<f8").astype(np.float64) if raw else None

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
    by_pos = np.argsort(win_pos, kind="stable")
    return BatchUpdate(merged.outcomes[order], merged.filled[order], merged.windows[by_pos],
                       merged.window_states()[by_pos])  # fmt: skip
