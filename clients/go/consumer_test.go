package bwp

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/Shopify/sarama"
)

func testReader[T any](cd codec[T]) *reader[T] {
	return &reader[T]{
		codec:   cd,
		out:     make(chan T), // unbuffered: delivery waits for a reader
		errs:    make(chan error, 8),
		dedupe:  NewDeduper(),
		offsets: map[int32]int64{},
		done:    make(chan struct{}),
	}
}

func testConsumer() *reader[Decision] { return testReader(decisionCodec) }

func msg(offset int64, seq string) *sarama.ConsumerMessage {
	return &sarama.ConsumerMessage{Partition: 0, Offset: offset, Value: []byte(strings.Replace(v2, `"seq":12`, `"seq":`+seq, 1))}
}

// A delivery cut short by the context records neither the offset nor the seq: resuming from
// Offsets() delivers that decision, with no gap and no duplicate.
func TestDeliveryCutShortIsResumedWithoutGap(t *testing.T) {
	c := testConsumer()
	got := make(chan Decision, 1)
	go func() { got <- <-c.out }()
	if !c.handle(context.Background(), msg(0, "12")) {
		t.Fatal("first message not handled")
	}
	if d := <-got; d.Seq != 12 || c.Offsets()[0] != 1 {
		t.Fatalf("delivered %+v, offsets %v", d, c.Offsets())
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }() // nobody reads: delivery waits, then ctx ends
	if c.handle(ctx, msg(1, "13")) {
		t.Fatal("handle reported a delivery that did not happen")
	}
	if off := c.Offsets()[0]; off != 1 {
		t.Fatalf("offset moved past an undelivered decision: %d", off)
	}
	// resume at Offsets(): the same message again, now delivered once
	go func() { got <- <-c.out }()
	if !c.handle(context.Background(), msg(1, "13")) {
		t.Fatal("resumed message not handled")
	}
	if d := <-got; d.Seq != 13 || c.Offsets()[0] != 2 || c.Stats().Delivered != 2 || c.Stats().Duplicates != 0 {
		t.Fatalf("resumed: %+v offsets %v stats %+v", d, c.Offsets(), c.Stats())
	}
	// a repeat is dropped and its offset recorded
	if !c.handle(context.Background(), msg(2, "13")) || c.Offsets()[0] != 3 || c.Stats().Duplicates != 1 {
		t.Fatalf("repeat: offsets %v stats %+v", c.Offsets(), c.Stats())
	}
}

func TestInvalidRecordIsReportedAndSkipped(t *testing.T) {
	c := testConsumer()
	if !c.handle(context.Background(), &sarama.ConsumerMessage{Partition: 3, Offset: 7, Value: []byte("{")}) {
		t.Fatal("invalid record stopped the consumer")
	}
	if err := <-c.errs; !strings.Contains(err.Error(), "invalid_json") || c.Offsets()[3] != 8 || c.Stats().Invalid != 1 {
		t.Fatalf("err %v offsets %v stats %+v", err, c.Offsets(), c.Stats())
	}
}

// Group mode survives errors: after a failed Consume it reports, backs off and joins again, and
// after clean returns (rebalances) it joins again at once, until the context ends.
func TestGroupModeRetriesAfterErrorsUntilTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls, reported := 0, 0
	results := []error{errors.New("join refused"), errors.New("broker away"), nil, nil, errors.New("rebalance failed")}
	start := time.Now()
	consumeLoop(ctx, func(context.Context) error {
		calls++
		if calls > len(results) {
			cancel()
			return nil
		}
		return results[calls-1]
	}, func(error) { reported++ }, Retry{Base: 10 * time.Millisecond, Cap: 40 * time.Millisecond})
	if calls != len(results)+1 || reported != 3 {
		t.Fatalf("%d calls, %d reports; want %d and 3", calls, reported, len(results)+1)
	}
	if took := time.Since(start); took < 15*time.Millisecond || took > 2*time.Second {
		t.Fatalf("backed off for %v in all (want some, bounded)", took)
	}
}

func TestGroupModeStopsWaitingWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	consumeLoop(ctx, func(context.Context) error { return errors.New("down") }, func(error) {},
		Retry{Base: time.Hour, Cap: time.Hour})
	if time.Since(start) > time.Second {
		t.Fatalf("a 1 h back-off outlived the context: %v", time.Since(start))
	}
}
