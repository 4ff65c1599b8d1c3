package bwp

import "sync"

// Deduper drops repeated decisions: delivery is at-least-once, so after a worker crash a
// decision can come again with the same (link_id, seq). It keeps the last seq applied per
// link and admits a decision only when its seq is above it, so a repeat or an older
// decision of the link is dropped. Safe for concurrent use.
type Deduper struct {
	mu   sync.Mutex
	last map[string]int64
}

// NewDeduper returns an empty Deduper.
func NewDeduper() *Deduper { return &Deduper{last: map[string]int64{}} }

// Admit reports whether the decision (linkID, seq) is new, and records it when it is.
func (d *Deduper) Admit(linkID string, seq int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if last, ok := d.last[linkID]; ok && seq <= last {
		return false
	}
	d.last[linkID] = seq
	return true
}

// isNew reports whether (linkID, seq) would be admitted, recording nothing (the consumer
// records a decision only once it is delivered).
func (d *Deduper) isNew(linkID string, seq int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	last, ok := d.last[linkID]
	return !ok || seq > last
}

// Links returns how many links the Deduper has seen.
func (d *Deduper) Links() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.last)
}
