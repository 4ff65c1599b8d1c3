package bwp

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Shopify/sarama"
)

// Mode says how a Consumer reads the decisions topic.
type Mode string

const (
	// ModePartition consumes every partition of the topic explicitly, from
	// ConsumerConfig.Offset (oldest by default) or ConsumerConfig.StartOffsets; the
	// offsets are kept by the client (Consumer.Offsets), nothing is committed. Use it
	// with the embedded tansu broker (sarama's group join gets error 79,
	// MEMBER_ID_REQUIRED, from tansu) and in tests.
	ModePartition Mode = "partition"
	// ModeGroup joins the consumer group ConsumerConfig.Group and commits offsets to the
	// broker (Apache Kafka >= 0.10.2).
	ModeGroup Mode = "group"
)

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	Brokers []string // bootstrap "host:port" list
	Topic   string   // e.g. "bwp.decisions"
	Mode    Mode     // ModePartition (default) or ModeGroup
	Group   string   // consumer group (ModeGroup only)
	// Offset is where partitions without a StartOffsets entry start: sarama.OffsetOldest
	// (the zero value is taken as oldest) or sarama.OffsetNewest. In ModeGroup it applies
	// when the group has no committed offset.
	Offset int64
	// StartOffsets (ModePartition) resumes partitions at saved offsets (from Offsets).
	StartOffsets map[int32]int64
	// Sarama is the client configuration (nil: a default with Version V1_0_0_0).
	Sarama *sarama.Config
	// Security: TLS and SASL (PLAIN, SCRAM-SHA-256/512); the zero value is PLAINTEXT.
	Security Security
	// OnError, when set, receives every invalid record and consumer error instead of the
	// Errors channel.
	OnError func(error)
}

// ConsumerStats counts what a Consumer did.
type ConsumerStats struct {
	Delivered  int64 // decisions sent on Decisions
	Duplicates int64 // repeats (and older seqs) of a link dropped
	Invalid    int64 // records that failed DecodeDecision
}

// Consumer reads typed decisions from the decisions topic. Read both Decisions and
// Errors (or set OnError) until they close: like sarama, it blocks when they are full.
// Invalid records and broker errors are reported, never fatal.
type Consumer struct{ *reader[Decision] }

// RoutesConsumer reads route rankings from the routes topic (bwp.routes), with the same
// modes, offsets, reporting and delivery guarantees as Consumer. A ranking of a group is
// delivered only when it is newer (published_at_ms) than the last one delivered for it.
type RoutesConsumer struct{ *reader[Ranking] }

// codec is what a reader needs of its record type: decode and validate a message value,
// the record's dedupe key and order (a record is new when its order is above the last
// delivered for its key), and where it was read.
type codec[T any] struct {
	decode func([]byte) (T, error)
	key    func(*T) (string, int64)
	at     func(*T, int32, int64)
}

var decisionCodec = codec[Decision]{
	decode: DecodeDecision,
	key:    func(d *Decision) (string, int64) { return d.LinkID, d.Seq },
	at:     func(d *Decision, p int32, o int64) { d.Partition, d.Offset = p, o },
}

var rankingCodec = codec[Ranking]{
	decode: DecodeRanking,
	key:    func(r *Ranking) (string, int64) { return r.RouteGroup, r.PublishedAtMs },
	at:     func(r *Ranking, p int32, o int64) { r.Partition, r.Offset = p, o },
}

// reader is the consumer of one record type: partition or group mode, validation,
// dedupe, offsets recorded after delivery.
type reader[T any] struct {
	codec   codec[T]
	out     chan T
	errs    chan error
	onError func(error)
	dedupe  *Deduper
	stats   ConsumerStats

	mu      sync.Mutex
	offsets map[int32]int64

	cancel context.CancelFunc
	done   chan struct{}
	closer func() error
}

// NewConsumer connects and starts consuming decisions in the background until ctx ends or Close.
func NewConsumer(ctx context.Context, cfg ConsumerConfig) (*Consumer, error) {
	r, err := newReader(ctx, cfg, decisionCodec)
	if err != nil {
		return nil, err
	}
	return &Consumer{r}, nil
}

// NewRoutesConsumer connects and starts consuming route rankings (cfg.Topic, e.g. "bwp.routes").
func NewRoutesConsumer(ctx context.Context, cfg ConsumerConfig) (*RoutesConsumer, error) {
	r, err := newReader(ctx, cfg, rankingCodec)
	if err != nil {
		return nil, err
	}
	return &RoutesConsumer{r}, nil
}

func newReader[T any](ctx context.Context, cfg ConsumerConfig, cd codec[T]) (*reader[T], error) {
	if len(cfg.Brokers) == 0 || cfg.Topic == "" {
		return nil, errors.New("bwp consumer: Brokers and Topic are required")
	}
	sc := cfg.Sarama
	if sc == nil {
		sc = sarama.NewConfig()
		sc.Version = sarama.V1_0_0_0
		sc.ClientID = "bwp-go"
	}
	sc.Consumer.Return.Errors = true
	if err := cfg.Security.Apply(sc); err != nil {
		return nil, err
	}
	if cfg.Offset == 0 {
		cfg.Offset = sarama.OffsetOldest
	}
	sc.Consumer.Offsets.Initial = cfg.Offset
	ctx, cancel := context.WithCancel(ctx)
	c := &reader[T]{
		codec:   cd,
		out:     make(chan T, 256),
		errs:    make(chan error, 64),
		onError: cfg.OnError,
		dedupe:  NewDeduper(),
		offsets: map[int32]int64{},
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	var err error
	switch cfg.Mode {
	case ModePartition, "":
		err = c.startPartitions(ctx, cfg, sc)
	case ModeGroup:
		err = c.startGroup(ctx, cfg, sc)
	default:
		err = fmt.Errorf("bwp consumer: mode must be %q or %q, got %q", ModePartition, ModeGroup, cfg.Mode)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return c, nil
}

// Decisions yields the valid, new decisions; it closes after Close or the context ends.
func (c *Consumer) Decisions() <-chan Decision { return c.out }

// Rankings yields the valid, new rankings; it closes after Close or the context ends.
func (c *RoutesConsumer) Rankings() <-chan Ranking { return c.out }

// Errors yields invalid records (*DecodeError) and consumer errors, unless OnError is set.
func (c *reader[T]) Errors() <-chan error { return c.errs }

// Stats returns the counters so far.
func (c *reader[T]) Stats() ConsumerStats {
	return ConsumerStats{
		Delivered:  atomic.LoadInt64(&c.stats.Delivered),
		Duplicates: atomic.LoadInt64(&c.stats.Duplicates),
		Invalid:    atomic.LoadInt64(&c.stats.Invalid),
	}
}

// Offsets returns, per partition, the next offset to read (ModePartition: pass it as
// StartOffsets to resume; ModeGroup: what this member has consumed).
func (c *reader[T]) Offsets() map[int32]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[int32]int64, len(c.offsets))
	for p, o := range c.offsets {
		out[p] = o
	}
	return out
}

// Close stops consuming, closes the sarama client and then the channels. Keep draining
// Decisions and Errors until it returns (unless OnError is set).
func (c *reader[T]) Close() error {
	c.cancel()
	<-c.done
	return c.closer()
}

func (c *reader[T]) report(ctx context.Context, err error) {
	if c.onError != nil {
		c.onError(err)
		return
	}
	select {
	case c.errs <- err:
	case <-ctx.Done():
	}
}

// handle decodes one message, drops repeats and delivers the rest; false when ctx ended.
// A message's offset is recorded (Offsets, the resume point) only once it is dealt with:
// delivered, or dropped as a repeat, or reported as invalid. A message whose delivery was
// cut short by ctx is not recorded, so resuming from Offsets after Close delivers it.
func (c *reader[T]) handle(ctx context.Context, m *sarama.ConsumerMessage) bool {
	d, err := c.codec.decode(m.Value)
	if err != nil {
		atomic.AddInt64(&c.stats.Invalid, 1)
		var de *DecodeError
		if errors.As(err, &de) {
			de.Partition, de.Offset = m.Partition, m.Offset
		}
		c.report(ctx, err)
		if ctx.Err() != nil {
			return false
		}
		c.markDone(m)
		return true
	}
	key, order := c.codec.key(&d)
	if !c.dedupe.isNew(key, order) {
		atomic.AddInt64(&c.stats.Duplicates, 1)
		c.markDone(m)
		return true
	}
	c.codec.at(&d, m.Partition, m.Offset)
	select {
	case c.out <- d:
		// one goroutine per partition and a key's records on one partition: nothing admitted in between
		c.dedupe.Admit(key, order)
		atomic.AddInt64(&c.stats.Delivered, 1)
		c.markDone(m)
		return true
	case <-ctx.Done():
		return false // not delivered: neither recorded as seen nor as consumed
	}
}

// markDone records that message m was dealt with: the partition resumes after it.
func (c *reader[T]) markDone(m *sarama.ConsumerMessage) {
	c.mu.Lock()
	c.offsets[m.Partition] = m.Offset + 1
	c.mu.Unlock()
}

func (c *reader[T]) startPartitions(ctx context.Context, cfg ConsumerConfig, sc *sarama.Config) error {
	consumer, err := sarama.NewConsumer(cfg.Brokers, sc)
	if err != nil {
		return fmt.Errorf("bwp consumer: connecting to %v: %w", cfg.Brokers, err)
	}
	parts, err := consumer.Partitions(cfg.Topic)
	if err != nil {
		consumer.Close()
		return fmt.Errorf("bwp consumer: partitions of %q: %w", cfg.Topic, err)
	}
	var pcs []sarama.PartitionConsumer
	for _, p := range parts {
		off, ok := cfg.StartOffsets[p]
		if !ok {
			off = cfg.Offset
		}
		pc, err := consumer.ConsumePartition(cfg.Topic, p, off)
		if err != nil {
			for _, pc := range pcs {
				pc.AsyncClose()
			}
			consumer.Close()
			return fmt.Errorf("bwp consumer: partition %d of %q at offset %d: %w", p, cfg.Topic, off, err)
		}
		pcs = append(pcs, pc)
	}
	var wg sync.WaitGroup
	for _, pc := range pcs {
		wg.Add(1)
		go func(pc sarama.PartitionConsumer) {
			defer wg.Done()
			c.pump(ctx, pc)
		}(pc)
	}
	c.closer = consumer.Close
	go func() {
		wg.Wait()
		close(c.out)
		close(c.errs)
		close(c.done)
	}()
	return nil
}

// pump forwards one partition's messages and errors until ctx ends.
func (c *reader[T]) pump(ctx context.Context, pc sarama.PartitionConsumer) {
	defer pc.AsyncClose()
	errs := pc.Errors()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-pc.Messages():
			if !ok || !c.handle(ctx, m) {
				return
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil // closed: stop selecting it
				continue
			}
			c.report(ctx, err)
		}
	}
}

func (c *reader[T]) startGroup(ctx context.Context, cfg ConsumerConfig, sc *sarama.Config) error {
	if cfg.Group == "" {
		return errors.New("bwp consumer: group mode needs a Group")
	}
	if !sc.Version.IsAtLeast(sarama.V0_10_2_0) {
		sc.Version = sarama.V1_0_0_0 // consumer groups need the 0.10.2 protocol
	}
	group, err := sarama.NewConsumerGroup(cfg.Brokers, cfg.Group, sc)
	if err != nil {
		return fmt.Errorf("bwp consumer: group %q on %v: %w", cfg.Group, cfg.Brokers, err)
	}
	var closeErr error
	c.closer = func() error { return closeErr }
	errsDone := make(chan struct{})
	go func() {
		defer close(errsDone)
		for err := range group.Errors() {
			c.report(ctx, err)
		}
	}()
	go func() {
		consumeLoop(ctx, func(ctx context.Context) error {
			return group.Consume(ctx, []string{cfg.Topic}, groupHandler[T]{c, ctx})
		}, func(err error) { c.report(ctx, fmt.Errorf("bwp consumer: group %q: %w", cfg.Group, err)) }, groupRetry)
		closeErr = group.Close() // closes group.Errors(), so the reporter above ends
		<-errsDone
		close(c.out)
		close(c.errs)
		close(c.done)
	}()
	return nil
}

// groupRetry is how long group mode waits before joining again after an error (a broker away,
// a refused join, a failed rebalance): Base doubling to Cap, with jitter; it never gives up.
var groupRetry = Retry{Base: 200 * time.Millisecond, Cap: 10 * time.Second}

// consumeLoop runs consume until ctx ends: again at once after a clean return (each rebalance
// ends a Consume call), again after a back-off after an error, which is reported. The back-off
// resets after a call that ran without error.
func consumeLoop(ctx context.Context, consume func(context.Context) error, report func(error), retry Retry) {
	failures := 0
	for ctx.Err() == nil {
		err := consume(ctx)
		if err == nil || ctx.Err() != nil {
			failures = 0
			continue
		}
		report(err) // e.g. tansu refusing the join (error 79): use ModePartition there
		wait := retry.delay(failures)
		if failures < 30 {
			failures++
		}
		t := time.NewTimer(time.Duration(rand.Int63n(int64(wait)/2+1)) + wait/2)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// groupHandler adapts a reader to sarama.ConsumerGroupHandler.
type groupHandler[T any] struct {
	c   *reader[T]
	ctx context.Context
}

func (groupHandler[T]) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (groupHandler[T]) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h groupHandler[T]) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		if !h.c.handle(h.ctx, m) {
			return nil
		}
		sess.MarkMessage(m, "")
	}
	return nil
}
