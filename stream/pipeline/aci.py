"""Online calibration of the h = 1 forecast interval per link: adaptive conformal inference.

The model's h = 1 quantiles are calibrated once, on the validation split (split-conformal
shifts per profile, ``ml.forecast.calibration``). A single link can still sit off that
average for hours, and links drift. So each link keeps two offsets, ``b_lo`` for p10 and
``b_hi`` for p90, in log space: the published quantiles are

    p10' = min(p10 * exp(b_lo), p50)        p90' = max(p90 * exp(b_hi), p50)

(p50, the point forecast, is left as the model served it). When the link's next state
(``seq + 1``) brings the realised bandwidth ``y`` of the step that decision forecast, each
offset takes one step of the online quantile tracker of adaptive conformal inference
(Gibbs and Candes 2021, in the score-offset form of Angelopoulos et al. 2023):

    b <- clip(b + gamma * (tau - [y <= q']), -MAX_OFFSET, MAX_OFFSET)

with ``q'`` the quantile that was published for that step and ``tau`` 0.1 or 0.9. A
quantile that is undershot more often than ``tau`` moves down, one that is undershot less
often moves up: over any stretch of T steps in which no step is clipped, its miss rate is
within ``2 * MAX_OFFSET / (gamma * T)`` of ``tau`` whatever the data (the tracker's bound:
the offset moves by ``gamma * (tau - miss)`` per step and stays within +-MAX_OFFSET), and
after a level shift it recovers at ``gamma`` per step.

The state of a link - its offsets and the seq and published quantiles of its newest
decision - lives in the link's meta hash beside its window (``aci`` field, same cluster
slot), and changes only in one atomic script call per micro-batch, made once the model's
forecasts of the batch are known. A state that is not newer than the stored seq (a
duplicate or a redelivered state) is published with the current offsets and moves nothing.
Because a link's offsets depend only on its own sequence of states and forecasts, the
published quantiles do not depend on how states were cut into micro-batches: a backtest
and a replay through Kafka publish the same decisions.

:func:`calibrate_link` is the reference; the Redis script (:data:`ACI_LUA`) and the
in-process twin (``MemoryWindowStore``) implement exactly it, and a test checks they agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Offsets are clipped to +-MAX_OFFSET (a factor of e**2, about 7.4, either way).
MAX_OFFSET = 2.0
#: The quantile levels the offsets track: the decision's p10 and p90.
TAU_LO, TAU_HI = 0.1, 0.9


@dataclass(frozen=True, slots=True)
class AciParams:
    """Step size of the online calibration (``BWP_ACI_GAMMA``; 0 turns it off)."""

    gamma: float = 0.005
    tau_lo: float = TAU_LO
    tau_hi: float = TAU_HI
    max_offset: float = MAX_OFFSET

    def __post_init__(self) -> None:
        if not (0.0 <= self.gamma <= 1.0) or not math.isfinite(self.gamma):
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if not (0.0 < self.tau_lo < self.tau_hi < 1.0):
            raise ValueError(f"need 0 < tau_lo < tau_hi < 1, got {self.tau_lo!r}, {self.tau_hi!r}")


@dataclass(frozen=True, slots=True)
class AciState:
    """One link's calibration state: offsets, and the newest decided seq with what it published."""

    seq: int
    b_lo: float
    b_hi: float
    q_lo: float  # published p10 of decision ``seq`` (Mbit/s)
    q_hi: float  # published p90 of decision ``seq``

    def encode(self) -> bytes:
        """The stored form (the Lua script writes the same text: ``%.17g`` round-trips a double)."""
        return b"%020d %.17g %.17g %.17g %.17g" % (self.seq, self.b_lo, self.b_hi, self.q_lo, self.q_hi)

    @classmethod
    def decode(cls, raw: bytes | str) -> AciState:
        """Parse :meth:`encode`'s text; ValueError on anything else."""
        parts = (raw.decode() if isinstance(raw, bytes) else raw).split(" ")
        if len(parts) != 5:
            raise ValueError(f"expected '<seq> <b_lo> <b_hi> <q_lo> <q_hi>', got {raw!r}")
        return cls(int(parts[0]), *(float(p) for p in parts[1:]))


def _clip(b: float, m: float) -> float:
    return -m if b < -m else (m if b > m else b)


def calibrate_link(
    state: AciState | None, seq: int, y: float, q: Sequence[float], params: AciParams
) -> tuple[AciState, float, float]:
    """One decided state of a link: (new state, published p10, published p90).

    ``y`` is the state's bandwidth (the realised value of the previous decision's h = 1
    forecast), ``q`` the model's (p10, p50, p90) for the next step. Scalar ``math`` on
    purpose: the Lua script computes the same doubles with the same C library calls.
    """
    lo, mid, hi = q
    if state is not None and seq <= state.seq:
        # duplicate or redelivered: published with the current offsets, nothing moves
        return state, min(lo * math.exp(state.b_lo), mid), max(hi * math.exp(state.b_hi), mid)
    b_lo = b_hi = 0.0
    if state is not None:
        b_lo, b_hi = state.b_lo, state.b_hi
        if seq == state.seq + 1:  # the step the stored decision forecast; a gap scores nothing
            g, m = params.gamma, params.max_offset
            b_lo = _clip(b_lo + g * (params.tau_lo - (1.0 if y <= state.q_lo else 0.0)), m)
            b_hi = _clip(b_hi + g * (params.tau_hi - (1.0 if y <= state.q_hi else 0.0)), m)
    p_lo, p_hi = min(lo * math.exp(b_lo), mid), max(hi * math.exp(b_hi), mid)
    return AciState(seq, b_lo, b_hi, p_lo, p_hi), p_lo, p_hi


# KEYS[i]: meta hash of record i's link. ARGV[1..5]: gamma, tau_lo, tau_hi, max offset, ttl s;
# then per record 5 values: seq (20-digit padded), y, p10, p50, p90. Returns one string: the
# published p10 and p90 of every record, space-separated, in record order. Records of one
# link are applied in order; each link's state is read once and written once per call.
ACI_LUA = """
local g, tlo, thi, m, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local states, dirty, out = {}, {}, {}
local function clip(b)
  if b < -m then return -m elseif b > m then return m end
  return b
end
local function seq_plus_one(s)
  -- s + 1 on the 20-digit string (Lua numbers are doubles: no exact int64 arithmetic)
  local d, i = {string.byte(s, 1, -1)}, 20
  while i > 0 and d[i] == 57 do d[i] = 48; i = i - 1 end
  if i > 0 then d[i] = d[i] + 1 end
  return string.char(unpack(d))
end
for i = 1, #KEYS do
  local key, a = KEYS[i], 5 + 5 * (i - 1)
  local seq, y = ARGV[a + 1], tonumber(ARGV[a + 2])
  local lo, mid, hi = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local st = states[key]
  if st == nil then
    local raw = redis.call('HGET', key, 'aci')
    st = false
    if raw then
      local s, blo, bhi, qlo, qhi = string.match(raw, '^(%d+) (%S+) (%S+) (%S+) (%S+)$')
      if s then st = {s, tonumber(blo), tonumber(bhi), tonumber(qlo), tonumber(qhi)} end
    end
    states[key] = st
  end
  local plo, phi
  if st and seq <= st[1] then
    plo, phi = math.min(lo * math.exp(st[2]), mid), math.max(hi * math.exp(st[3]), mid)
  else
    local blo, bhi = 0.0, 0.0
    if st then
      blo, bhi = st[2], st[3]
      if seq_plus_one(st[1]) == seq then
        blo = clip(blo + g * (tlo - ((y <= st[4]) and 1.0 or 0.0)))
        bhi = clip(bhi + g * (thi - ((y <= st[5]) and 1.0 or 0.0)))
      end
    end
    plo, phi = math.min(lo * math.exp(blo), mid), math.max(hi * math.exp(bhi), mid)
    states[key] = {seq, blo, bhi, plo, phi}
    dirty[key] = true
  end
  out[#out + 1] = string.format('%.17g %.17g', plo, phi)
end
for key, _ in pairs(dirty) do
  local st = states[key]
  redis.call('HSET', key, 'aci', string.format('%s %.17g %.17g %.17g %.17g', st[1], st[2], st[3], st[4], st[5]))
  redis.call('EXPIRE', key, ttl)
end
return table.concat(out, ' ')
"""
