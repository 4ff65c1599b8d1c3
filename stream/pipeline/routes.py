"""Route-group state: the latest forecast of every member link, one Redis hash per group.

Layout: ``{prefix}:{rg:<group>}`` (hash-tagged: the whole group lives in one Redis Cluster
slot, so one script call may read and write it), fields

* ``m:<link_id>`` - the member's latest decided state: ``"<seq, 20 digits> <seen_ms>
  <score> <latency_ms> <json>"``; the script reads the four space-separated heads, the
  JSON (seq, ts_ms, latency, loss, score, horizon, forecast) is for the ranking;
* ``order`` - the comma-joined link ids of the last published ranking;
* ``pub`` - worker clock (ms) of the last published ranking.

One script call per micro-batch (per Redis Cluster slot) applies the batch's decided
states of grouped links, after the model ran: a member's entry only moves forward in
seq, so a duplicate or redelivered state changes nothing and publishes nothing. For every
group that changed it drops stale members, ranks the rest and returns the ranking when its
order differs from the last published one, or the same order once ``interval`` has passed
since the last. Both :class:`RouteStore` (Redis) and :class:`MemoryRouteStore` (backtests,
tests) implement this; a test checks that they agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from stream.core.records import Decision, Telemetry
from stream.core.routes import RouteRanking, rank_key, rank_members, route_score
from stream.pipeline import _redis_compat

#: (group, link_id, stored value) of one decided state of a grouped link.
Entry = tuple[str, str, bytes]

# KEYS[k]: group hash k. ARGV[1..4]: now ms, stale ms, interval ms, ttl s; then per key:
# its entry count n, then n (link_id, value) pairs. Returns per published group
# {k, reason, value...} with the member values in rank order.
ROUTES_LUA = """
local now, stale, interval, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out, a = {}, 5
local function better(x, y)
  if x[2] ~= y[2] then return x[2] > y[2] end
  if x[3] ~= y[3] then return x[3] < y[3] end
  return x[1] < y[1]
end
for k = 1, #KEYS do
  local key, n, changed = KEYS[k], tonumber(ARGV[a]), false
  a = a + 1
  for j = 1, n do
    local field, val = 'm:' .. ARGV[a], ARGV[a + 1]
    a = a + 2
    local old = redis.call('HGET', key, field)
    if (not old) or string.sub(val, 1, 20) > string.sub(old, 1, 20) then
      redis.call('HSET', key, field, val)
      changed = true
    end
  end
  if changed then
    local all, members = redis.call('HGETALL', key), {}
    for i = 1, #all, 2 do
      local f, v = all[i], all[i + 1]
      if string.sub(f, 1, 2) == 'm:' then
        local seen, score, lat = string.match(v, '^%d+ (%d+) (%S+) (%S+) ')
        if now - tonumber(seen) > stale then
          redis.call('HDEL', key, f)
        else
          members[#members + 1] = {string.sub(f, 3), tonumber(score), tonumber(lat), v}
        end
      end
    end
    table.sort(members, better)
    local names = {}
    for i, m in ipairs(members) do names[i] = m[1] end
    local order = table.concat(names, ',')
    local meta = redis.call('HMGET', key, 'order', 'pub')
    local reason = false
    if order ~= meta[1] then
      reason = 'order'
    elseif (not meta[2]) or now - tonumber(meta[2]) >= interval then
      reason = 'interval'
    end
    if reason then
      redis.call('HSET', key, 'order', order, 'pub', now)
      local row = {k, reason}
      for _, m in ipairs(members) do row[#row + 1] = m[4] end
      out[#out + 1] = row
    end
    redis.call('EXPIRE', key, ttl)
  end
end
return out
"""


def entries(records: Sequence[Telemetry], decisions: Sequence[Decision], now_ms: int) -> list[Entry]:
    """The route entries of a chunk's decisions (``decisions[i]`` is of ``records[i]``); grouped links only."""
    out: list[Entry] = []
    for r, d in zip(records, decisions):
        if r.route_group is None:
            continue
        p = d.predicted_bandwidth_mbps
        fc = d.forecast or ((1, p, p, p),)  # a v1 decision: the point forecast's degenerate form
        score, h = route_score(fc, r.packet_loss)
        body = orjson.dumps({
            "link_id": r.link_id, "seq": r.seq, "ts_ms": r.ts_ms, "latency_ms": r.latency_ms,
            "packet_loss": r.packet_loss, "score": score, "horizon": h, "forecast": fc,
        })  # fmt: skip
        out.append((r.route_group, r.link_id, b"%020d %d %r %r " % (r.seq, now_ms, score, r.latency_ms) + body))
    return out


def _ranking(group: str, values: Sequence[bytes], now_ms: int, reason: str) -> RouteRanking:
    return rank_members(group, [orjson.loads(v.split(b" ", 4)[4]) for v in values], now_ms, reason)


class RouteStore:
    """The Redis side of route groups (async); ``client`` as for the window store."""

    def __init__(
        self, client: Any, prefix: str = "bwp", ttl_s: int = 86_400, stale_s: float = 30.0, interval_s: float = 5.0
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.head = (str(int(ttl_s)), int(stale_s * 1000), int(interval_s * 1000))
        self._sha: str | None = None

    def key(self, group: str) -> str:
        """The group's hash key (hash tag ``{rg:<group>}``: one cluster slot per group)."""
        return f"{self.prefix}:{{rg:{group}}}"

    async def update(self, batch: Sequence[Entry], now_ms: int) -> list[RouteRanking]:
        """Apply ``batch`` (in order) at worker time ``now_ms``; the rankings to publish."""
        from redis.exceptions import NoScriptError  # redis-py: only code that talks to Redis

        by_group: dict[str, list[tuple[str, bytes]]] = {}
        for g, link, value in batch:
            by_group.setdefault(g, []).append((link, value))
        if not by_group:
            return []
        calls = self._calls(list(by_group.items()), now_ms)
        for attempt in (0, 1):
            if self._sha is None:
                self._sha = await self.client.script_load(ROUTES_LUA)
            pipe = self.client.pipeline(transaction=False)
            for _, call in calls:
                pipe.execute_command("EVALSHA", self._sha, *call)
            replies = await pipe.execute(raise_on_error=False)
            err = next((r for r in replies if isinstance(r, Exception)), None)
            if isinstance(err, NoScriptError) and not attempt:
                self._sha = None  # Redis restarted: every call failed alike, nothing changed
                continue
            if err is not None:
                raise err
            break
        out = []
        for (groups, _), rows in zip(calls, replies):
            for k, reason, *values in rows:
                out.append(_ranking(groups[int(k) - 1], values, now_ms, _text(reason)))
        return out

    def _calls(self, items: list[tuple[str, list[tuple[str, bytes]]]], now_ms: int) -> list[tuple[list[str], Any]]:
        """One call per cluster slot (one in all on a plain Redis): (its groups, its arguments)."""
        slots: dict[int, list[tuple[str, list[tuple[str, bytes]]]]] = {}
        if _redis_compat.is_cluster(self.client):
            from redis.crc import key_slot  # redis-py: only code that talks to Redis

            for it in items:
                slots.setdefault(key_slot(self.key(it[0]).encode()), []).append(it)
        else:
            slots[0] = items
        ttl, stale, interval = self.head
        calls = []
        for run in slots.values():
            args: list[Any] = [now_ms, stale, interval, ttl]
            for _, members in run:
                args.append(len(members))
                for link, value in members:
                    args += (link, value)
            calls.append(([g for g, _ in run], (len(run), *(self.key(g) for g, _ in run), *args)))
        return calls

    async def members(self, group: str) -> dict[str, int]:
        """``{link_id: seq}`` of the stored members of a group (tests, tools)."""
        raw = await self.client.hgetall(self.key(group))
        return {_text(f)[2:]: int(v[:20]) for f, v in raw.items() if _text(f).startswith("m:")}


class MemoryRouteStore:
    """In-process twin of :class:`RouteStore`: same rankings, no server (no TTL, as for windows)."""

    def __init__(self, stale_s: float = 30.0, interval_s: float = 5.0) -> None:
        self.stale_ms, self.interval_ms = int(stale_s * 1000), int(interval_s * 1000)
        #: group -> link -> (seq, seen_ms, score, latency, value)
        self._members: dict[str, dict[str, tuple[int, int, float, float, bytes]]] = {}
        self._pub: dict[str, tuple[str, int]] = {}  # group -> (order, published ms)

    async def update(self, batch: Sequence[Entry], now_ms: int) -> list[RouteRanking]:
        """Apply ``batch`` (in order) at ``now_ms``; the rankings to publish (groups in first-seen order)."""
        changed: dict[str, bool] = {}  # group -> changed, in first-seen order (as the script's keys)
        for g, link, value in batch:
            changed.setdefault(g, False)
            group = self._members.setdefault(g, {})
            seq_b, seen, score, lat, _ = value.split(b" ", 4)
            old = group.get(link)
            if old is None or int(seq_b) > old[0]:
                group[link] = (int(seq_b), int(seen), float(score), float(lat), value)
                changed[g] = True  # a duplicate or redelivered state changes nothing: no re-ranking
        out = []
        for g in (g for g, c in changed.items() if c):
            group = self._members[g]
            for link in [k for k, m in group.items() if now_ms - m[1] > self.stale_ms]:
                del group[link]
            ranked = sorted(group.items(), key=lambda kv: rank_key(kv[1][2], kv[1][3], kv[0]))
            order = ",".join(k for k, _ in ranked)
            last = self._pub.get(g)
            reason = "order" if last is None or last[0] != order else None
            if reason is None and last is not None and now_ms - last[1] >= self.interval_ms:
                reason = "interval"
            if reason is not None:
                self._pub[g] = (order, now_ms)
                out.append(_ranking(g, [m[4] for _, m in ranked], now_ms, reason))
        return out

    async def members(self, group: str) -> dict[str, int]:
        """``{link_id: seq}`` of the stored members of a group."""
        return {k: m[0] for k, m in self._members.get(group, {}).items()}


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
