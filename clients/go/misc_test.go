package bwp

import (
	"testing"
	"time"
)

func TestDeduperDropsRepeatsAndOlderSeqs(t *testing.T) {
	d := NewDeduper()
	in := []struct {
		link string
		seq  int64
		want bool
	}{{"a", 9, true}, {"a", 9, false}, {"b", 9, true}, {"a", 10, true}, {"a", 8, false}, {"b", 9, false}}
	for _, c := range in {
		if got := d.Admit(c.link, c.seq); got != c.want {
			t.Errorf("Admit(%s, %d) = %v, want %v", c.link, c.seq, got, c.want)
		}
	}
	if d.Links() != 2 {
		t.Errorf("Links() = %d, want 2", d.Links())
	}
}

func TestTokenBucket(t *testing.T) {
	now := time.Unix(0, 0)
	clock := func() time.Time { return now }
	b := NewTokenBucket(10, 100*time.Millisecond, clock) // 10 Mbit/s, burst 1 Mbit
	if !b.Allow(1e6) || b.Allow(1) {
		t.Fatal("a full bucket gives exactly its burst")
	}
	if got := b.Delay(5e5); got != 50*time.Millisecond {
		t.Fatalf("Delay(0.5 Mbit) at 10 Mbit/s = %v, want 50ms", got)
	}
	now = now.Add(50 * time.Millisecond)
	if !b.Allow(5e5) || b.Allow(1e4) {
		t.Fatal("50 ms at 10 Mbit/s earns 0.5 Mbit")
	}
	b.SetRate(20)
	if b.RateMbps() != 20 {
		t.Fatalf("rate %v, want 20", b.RateMbps())
	}
	now = now.Add(time.Second)
	if !b.Allow(2e6) || b.Allow(1) {
		t.Fatal("the burst follows the new rate: 100 ms at 20 Mbit/s = 2 Mbit")
	}
	b.SetRate(-1)
	if b.Delay(1) != -1 {
		t.Fatal("a zero rate never sends")
	}
}
