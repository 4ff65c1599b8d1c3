package bwp

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/Shopify/sarama"
)

// Telemetry is one measured state of a link, as published on the telemetry topic
// (bwp.telemetry, key = link_id, stream/core/schemas/telemetry.schema.json). A DWCP node is
// also the probe: it publishes these, and the worker decides on them.
type Telemetry struct {
	LinkID        string   `json:"link_id"`
	Seq           int64    `json:"seq"`   // per link, increasing
	TsMs          int64    `json:"ts_ms"` // measurement time, epoch ms
	LatencyMs     float64  `json:"latency_ms"`
	BandwidthMbps float64  `json:"bandwidth_mbps"`
	PacketLoss    float64  `json:"packet_loss"`
	Reliability   float64  `json:"reliability"`
	Profile       string   `json:"profile,omitempty"`     // "datacenter", "internet" or empty
	RouteGroup    string   `json:"route_group,omitempty"` // links of a group are alternative paths
	Imputed       []string `json:"imputed,omitempty"`     // fields filled by a rule, not measured
}

// Validate checks what the worker's decoder checks (the schema's types and ranges), so that a
// record it would dead-letter is refused before it is sent.
func (t Telemetry) Validate() error {
	if !linkIDPattern.MatchString(t.LinkID) {
		return fmt.Errorf("telemetry: link_id must match %s, got %q", linkIDPattern, t.LinkID)
	}
	if t.Seq < 0 || t.TsMs < 0 {
		return fmt.Errorf("telemetry %s: seq and ts_ms must be >= 0, got %d and %d", t.LinkID, t.Seq, t.TsMs)
	}
	if err := checkMeasured([4]string{"latency_ms", "bandwidth_mbps", "packet_loss", "reliability"},
		t.LatencyMs, t.BandwidthMbps, t.PacketLoss, t.Reliability); err != nil {
		return fmt.Errorf("telemetry %s: %w", t.LinkID, err)
	}
	if t.Profile != "" && t.Profile != "datacenter" && t.Profile != "internet" {
		return fmt.Errorf("telemetry %s: profile must be datacenter, internet or empty, got %q", t.LinkID, t.Profile)
	}
	if t.RouteGroup != "" && !linkIDPattern.MatchString(t.RouteGroup) {
		return fmt.Errorf("telemetry %s: route_group must match %s, got %q", t.LinkID, linkIDPattern, t.RouteGroup)
	}
	for _, f := range t.Imputed {
		if f != "latency_ms" && f != "packet_loss" && f != "reliability" {
			return fmt.Errorf("telemetry %s: imputed may name latency_ms, packet_loss, reliability; got %q", t.LinkID, f)
		}
	}
	return nil
}

// TelemetryProducer publishes Telemetry records keyed by link_id (so a link's records keep
// their order on one partition), waiting for the broker's acknowledgement of each batch.
type TelemetryProducer struct {
	topic    string
	producer sarama.SyncProducer
}

// ProducerConfig configures NewTelemetryProducer.
type ProducerConfig struct {
	Brokers []string
	Topic   string // default "bwp.telemetry"
	// Idempotent asks the broker to drop the duplicates a retried send would make (Kafka >= 0.11;
	// the embedded tansu broker of `make demo` does not take it: leave it off there).
	Idempotent bool
	// Sarama, when set, is used as is (Producer.Return.Successes is set to true); else a default.
	Sarama *sarama.Config
	// Security: TLS and SASL (PLAIN, SCRAM-SHA-256/512); the zero value is PLAINTEXT.
	Security Security
}

// NewTelemetryProducer connects to the brokers.
func NewTelemetryProducer(cfg ProducerConfig) (*TelemetryProducer, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("bwp producer: Brokers are required")
	}
	if cfg.Topic == "" {
		cfg.Topic = "bwp.telemetry"
	}
	sc := cfg.Sarama
	if sc == nil {
		sc = sarama.NewConfig()
		sc.Version = sarama.V1_0_0_0
		sc.ClientID = "bwp-go-producer"
		sc.Producer.RequiredAcks = sarama.WaitForAll
		sc.Producer.Retry.Max = 5
	}
	sc.Producer.Return.Successes = true // SyncProducer needs it
	if err := cfg.Security.Apply(sc); err != nil {
		return nil, err
	}
	if cfg.Idempotent {
		sc.Producer.Idempotent = true
		sc.Producer.RequiredAcks = sarama.WaitForAll
		sc.Net.MaxOpenRequests = 1
		if sc.Producer.Retry.Max < 1 {
			sc.Producer.Retry.Max = 1
		}
		if !sc.Version.IsAtLeast(sarama.V0_11_0_0) {
			sc.Version = sarama.V1_0_0_0
		}
	}
	p, err := sarama.NewSyncProducer(cfg.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("bwp producer: connecting to %v: %w", cfg.Brokers, err)
	}
	return &TelemetryProducer{topic: cfg.Topic, producer: p}, nil
}

// Send validates and publishes records, in order, and returns once the broker acknowledged
// all of them. Nothing is sent when any record is invalid.
func (p *TelemetryProducer) Send(records ...Telemetry) error {
	msgs := make([]*sarama.ProducerMessage, len(records))
	for i, t := range records {
		if err := t.Validate(); err != nil {
			return err
		}
		b, err := json.Marshal(t)
		if err != nil {
			return fmt.Errorf("telemetry %s: %w", t.LinkID, err)
		}
		msgs[i] = &sarama.ProducerMessage{Topic: p.topic, Key: sarama.StringEncoder(t.LinkID), Value: sarama.ByteEncoder(b)}
	}
	if len(msgs) == 0 {
		return nil
	}
	return p.producer.SendMessages(msgs)
}

// Close flushes and closes the producer.
func (p *TelemetryProducer) Close() error { return p.producer.Close() }
