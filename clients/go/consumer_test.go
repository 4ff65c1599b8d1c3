package bwp

import (
	"context"
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
