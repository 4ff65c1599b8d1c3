package bwp

import (
	"sync"
	"time"
)

// TokenBucket is a rate limiter in bits: it refills at a rate in Mbit/s up to a burst,
// and a sender takes tokens before sending. A DWCP node keeps one per link and sets its
// rate to each applied decision's allocated_bandwidth_mbps. Safe for concurrent use.
type TokenBucket struct {
	mu       sync.Mutex
	rateBps  float64 // bits per second
	burst    float64 // bits
	tokens   float64
	last     time.Time
	now      func() time.Time
	burstDur time.Duration
}

// NewTokenBucket returns a full bucket at rateMbps whose burst is what the rate sends in
// burst (e.g. 100 ms). now is the clock (nil: time.Now); tests pass a fake one.
func NewTokenBucket(rateMbps float64, burst time.Duration, now func() time.Time) *TokenBucket {
	if now == nil {
		now = time.Now
	}
	b := &TokenBucket{now: now, burstDur: burst, last: now()}
	b.setRate(rateMbps)
	b.tokens = b.burst
	return b
}

func (b *TokenBucket) setRate(rateMbps float64) {
	if !(rateMbps > 0) {
		rateMbps = 0 // NaN or negative: send nothing rather than everything
	}
	b.rateBps = rateMbps * 1e6
	b.burst = b.rateBps * b.burstDur.Seconds()
	if b.tokens > b.burst {
		b.tokens = b.burst
	}
}

// refill adds the tokens earned since the last call; the caller holds mu.
func (b *TokenBucket) refill() {
	t := b.now()
	if dt := t.Sub(b.last).Seconds(); dt > 0 {
		b.tokens += dt * b.rateBps
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
	}
	b.last = t
}

// SetRate changes the rate (Mbit/s) from now on; tokens earned so far at the old rate
// are kept, up to the new burst.
func (b *TokenBucket) SetRate(rateMbps float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	b.setRate(rateMbps)
}

// RateMbps returns the current rate, Mbit/s.
func (b *TokenBucket) RateMbps() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rateBps / 1e6
}

// Allow takes bits tokens and reports true when the bucket has them; otherwise it takes
// nothing and reports false.
func (b *TokenBucket) Allow(bits float64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	if bits > b.tokens {
		return false
	}
	b.tokens -= bits
	return true
}

// Delay returns how long a sender must wait until bits tokens are available (0 when
// they are now), without taking them. It is -1 when the rate is 0 or bits exceed the burst.
func (b *TokenBucket) Delay(bits float64) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	if bits <= b.tokens {
		return 0
	}
	if b.rateBps == 0 || bits > b.burst {
		return -1
	}
	return time.Duration((bits - b.tokens) / b.rateBps * float64(time.Second))
}
