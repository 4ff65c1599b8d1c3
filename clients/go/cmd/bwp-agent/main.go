// Command bwp-agent is an example DWCP node agent: it consumes the bwp decisions topic
// and keeps one token bucket per link at the decision's allocated_bandwidth_mbps.
//
// For every applied decision it prints one JSON line on stdout:
//
//	{"link_id":"lk-1","seq":12,"allocated_bandwidth_mbps":10,"predicted_bandwidth_mbps":10,...}
//
// Invalid records and consumer errors go to stderr, one JSON line each; they never stop
// the agent. With -serve URL -windows FILE it instead calls PredictBandwidthContext of `bwp
// serve` for each window in FILE (JSON lines, each an array of 10 states
// {"latency_ms","bandwidth_mbps","packet_loss","reliability"}) and prints
// {"window":i,"predicted_bandwidth_mbps":x} per line.
//
// Usage:
//
//	bwp-agent -brokers 127.0.0.1:9092 -topic bwp.decisions -mode partition -idle 5s
//	bwp-agent -brokers kafka:9092 -mode group -group dwcp-node-7
//	bwp-agent -serve http://127.0.0.1:8501 -windows windows.jsonl
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/Shopify/sarama"

	bwp "github.com/bwp/clients/go/bwp"
)

type options struct {
	brokers, topic, mode, group, offset string
	serve, token, windows               string
	publish, telemetryTopic             string
	securityProtocol, saslMechanism     string
	saslUser, saslPassword              string
	sslCAFile, sslCertFile, sslKeyFile  string
	duration, idle, burst               time.Duration
	max                                 int
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bwp-agent", flag.ContinueOnError)
	fs.StringVar(&o.brokers, "brokers", "127.0.0.1:9092", "comma-separated Kafka bootstrap servers")
	fs.StringVar(&o.topic, "topic", "bwp.decisions", "decisions topic")
	fs.StringVar(&o.mode, "mode", "partition", "partition (every partition, offsets kept here; tansu) or group (Kafka consumer group)")
	fs.StringVar(&o.group, "group", "bwp-agent", "consumer group (-mode group)")
	fs.StringVar(&o.offset, "offset", "oldest", "where to start without a committed offset: oldest or newest")
	fs.StringVar(&o.serve, "serve", "", "bwp serve base URL, e.g. http://127.0.0.1:8501 (optional)")
	fs.StringVar(&o.token, "token", os.Getenv("BWP_SERVE_TOKEN"), "bearer token of bwp serve (default $BWP_SERVE_TOKEN)")
	fs.StringVar(&o.windows, "windows", "", "with -serve: JSON-lines file of 10-state windows to predict, then exit")
	fs.StringVar(&o.publish, "publish", "", "JSON-lines file of telemetry records (the node's own probe states) to publish, then exit")
	fs.StringVar(&o.telemetryTopic, "telemetry-topic", "bwp.telemetry", "telemetry topic (-publish)")
	fs.StringVar(&o.securityProtocol, "security-protocol", envOr("BWP_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
		"PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default $BWP_KAFKA_SECURITY_PROTOCOL or PLAINTEXT)")
	fs.StringVar(&o.saslMechanism, "sasl-mechanism", envOr("BWP_KAFKA_SASL_MECHANISM", "PLAIN"),
		"PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with SASL_* (default $BWP_KAFKA_SASL_MECHANISM or PLAIN)")
	fs.StringVar(&o.saslUser, "sasl-user", os.Getenv("BWP_KAFKA_SASL_USERNAME"), "SASL user (default $BWP_KAFKA_SASL_USERNAME)")
	fs.StringVar(&o.saslPassword, "sasl-password", os.Getenv("BWP_KAFKA_SASL_PASSWORD"),
		"SASL password (default $BWP_KAFKA_SASL_PASSWORD; prefer the variable: flags show in ps)")
	fs.StringVar(&o.sslCAFile, "ssl-cafile", os.Getenv("BWP_KAFKA_SSL_CAFILE"), "CA bundle for TLS (default $BWP_KAFKA_SSL_CAFILE)")
	fs.StringVar(&o.sslCertFile, "ssl-certfile", os.Getenv("BWP_KAFKA_SSL_CERTFILE"), "client certificate for mTLS")
	fs.StringVar(&o.sslKeyFile, "ssl-keyfile", os.Getenv("BWP_KAFKA_SSL_KEYFILE"), "client key for mTLS")
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (0: until interrupted)")
	fs.DurationVar(&o.idle, "idle", 0, "stop when no decision came for this long after the first (0: never)")
	fs.DurationVar(&o.burst, "burst", 100*time.Millisecond, "token bucket burst, as time at the allocated rate")
	fs.IntVar(&o.max, "max", 0, "stop after applying this many decisions (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch o.securityProtocol {
	case "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL":
	default:
		return o, fmt.Errorf("-security-protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, got %q", o.securityProtocol)
	}
	if o.publish != "" && (o.windows != "" || o.serve != "") {
		return o, errors.New("-publish runs alone (not with -serve / -windows)")
	}
	if o.windows != "" && o.serve == "" {
		return o, errors.New("-windows needs -serve")
	}
	if o.offset != "oldest" && o.offset != "newest" {
		return o, fmt.Errorf("-offset must be oldest or newest, got %q", o.offset)
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err == flag.ErrHelp {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bwp-agent:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	out := json.NewEncoder(os.Stdout)
	switch {
	case o.windows != "":
		err = predictWindows(ctx, o, out)
	case o.publish != "":
		err = publish(o, out)
	default:
		err = consume(ctx, o, out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bwp-agent:", err)
		os.Exit(1)
	}
}

// publish sends the telemetry records of the file (one JSON object per line, validated like
// the worker's decoder validates them) to the telemetry topic, keyed by link_id, and prints
// how many the broker acknowledged.
func publish(o options, out *json.Encoder) error {
	f, err := os.Open(o.publish)
	if err != nil {
		return err
	}
	defer f.Close()
	sec, err := o.security()
	if err != nil {
		return err
	}
	p, err := bwp.NewTelemetryProducer(bwp.ProducerConfig{Brokers: strings.Split(o.brokers, ","), Topic: o.telemetryTopic,
		Security: sec})
	if err != nil {
		return err
	}
	defer p.Close()
	var batch []bwp.Telemetry
	sent := 0
	flush := func() error {
		if err := p.Send(batch...); err != nil {
			return err
		}
		sent += len(batch)
		batch = batch[:0]
		return nil
	}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var t bwp.Telemetry
		if err := json.Unmarshal(sc.Bytes(), &t); err != nil {
			return fmt.Errorf("%s line %d: expected a telemetry JSON object: %w", o.publish, line, err)
		}
		if batch = append(batch, t); len(batch) == 500 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	return out.Encode(map[string]interface{}{"published": sent, "topic": o.telemetryTopic})
}

// predictWindows calls PredictBandwidthContext (the context form of the DWCP interface's
// PredictBandwidth, which *Client implements) for every window of the file.
func predictWindows(ctx context.Context, o options, out *json.Encoder) error {
	client := bwp.NewClient(o.serve, o.token)
	if err := waitReady(ctx, client); err != nil {
		return err
	}
	f, err := os.Open(o.windows)
	if err != nil {
		return err
	}
	defer f.Close()
	var _ bwp.BandwidthPredictor = client // the design's interface, still implemented
	r := bufio.NewReader(f)
	for i := 0; ; i++ {
		line, err := r.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			var states []struct {
				LatencyMs     float64 `json:"latency_ms"`
				BandwidthMbps float64 `json:"bandwidth_mbps"`
				PacketLoss    float64 `json:"packet_loss"`
				Reliability   float64 `json:"reliability"`
			}
			if jerr := json.Unmarshal(line, &states); jerr != nil {
				return fmt.Errorf("%s line %d: expected a JSON array of states: %w", o.windows, i+1, jerr)
			}
			seq := make([]bwp.NetworkState, len(states))
			for j, s := range states {
				seq[j] = bwp.NetworkState{Latency: s.LatencyMs, Bandwidth: s.BandwidthMbps,
					PacketLoss: s.PacketLoss, Reliability: s.Reliability}
			}
			p, perr := client.PredictBandwidthContext(ctx, seq) // the error of this call (LastError may be another's)
			if perr != nil {
				return fmt.Errorf("window %d: %w", i, perr)
			}
			if err := out.Encode(map[string]interface{}{"window": i, "predicted_bandwidth_mbps": p}); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// waitReady polls /v2/health/ready until the server has a model or ctx ends.
func waitReady(ctx context.Context, c *bwp.Client) error {
	for {
		_, err := c.Ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bwp serve at %s not ready: %w", c.BaseURL, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// applied is the JSON line printed for each applied decision.
type applied struct {
	LinkID                 string  `json:"link_id"`
	Seq                    int64   `json:"seq"`
	AllocatedBandwidthMbps float64 `json:"allocated_bandwidth_mbps"`
	PredictedBandwidthMbps float64 `json:"predicted_bandwidth_mbps"`
	SafeBandwidthMbps      float64 `json:"safe_bandwidth_mbps"`
	AllocationPct          int     `json:"allocation_pct"`
	SchemaVersion          int     `json:"schema_version"`
	ModelVersion           string  `json:"model_version"`
	Partition              int32   `json:"partition"`
	Offset                 int64   `json:"offset"`
}

func consume(ctx context.Context, o options, out *json.Encoder) error {
	if o.serve != "" {
		client := bwp.NewClient(o.serve, o.token)
		if err := waitReady(ctx, client); err != nil {
			return err
		}
		m, err := client.Model(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "bwp-agent: bwp serve model %s (head %s)\n", m.ModelVersion, m.Head)
	}
	offset := sarama.OffsetOldest
	if o.offset == "newest" {
		offset = sarama.OffsetNewest
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errOut := json.NewEncoder(os.Stderr)
	sec, err := o.security()
	if err != nil {
		return err
	}
	c, err := bwp.NewConsumer(ctx, bwp.ConsumerConfig{
		Brokers: strings.Split(o.brokers, ","), Topic: o.topic, Mode: bwp.Mode(o.mode), Group: o.group,
		Offset: offset, Security: sec,
		OnError: func(err error) {
			_ = errOut.Encode(map[string]string{"error": err.Error()})
		},
	})
	if err != nil {
		return err
	}
	buckets := map[string]*bwp.TokenBucket{}
	n := 0
	var idle <-chan time.Time
	for {
		select {
		case d, ok := <-c.Decisions():
			if !ok {
				return closeAndReport(c)
			}
			if o.max > 0 && n >= o.max {
				continue // stopping: decisions already buffered are not applied
			}
			b := buckets[d.LinkID]
			if b == nil {
				b = bwp.NewTokenBucket(d.AllocatedBandwidthMbps, o.burst, nil)
				buckets[d.LinkID] = b
			} else {
				b.SetRate(d.AllocatedBandwidthMbps)
			}
			if err := out.Encode(applied{d.LinkID, d.Seq, b.RateMbps(), d.PredictedBandwidthMbps,
				d.SafeOrPredicted(), d.AllocationPct, d.SchemaVersion, d.ModelVersion, d.Partition, d.Offset}); err != nil {
				return err
			}
			n++
			if o.max > 0 && n >= o.max {
				cancel()
			}
			if o.idle > 0 {
				idle = time.After(o.idle)
			}
		case <-idle:
			cancel()
			idle = nil
		}
	}
}

// closeAndReport closes the consumer and prints its counters on stderr.
func closeAndReport(c *bwp.Consumer) error {
	err := c.Close()
	s := c.Stats()
	fmt.Fprintf(os.Stderr, "bwp-agent: applied %d decisions, dropped %d repeats, %d invalid records\n",
		s.Delivered, s.Duplicates, s.Invalid)
	return err
}

// security maps the Kafka flags to the client's Security, as the worker's BWP_KAFKA_* settings do.
func (o options) security() (bwp.Security, error) {
	var sec bwp.Security
	if o.securityProtocol == "SSL" || o.securityProtocol == "SASL_SSL" {
		cfg, err := bwp.TLSConfig(o.sslCAFile, o.sslCertFile, o.sslKeyFile)
		if err != nil {
			return sec, err
		}
		sec.TLS = cfg
	}
	if strings.HasPrefix(o.securityProtocol, "SASL_") {
		sec.SASLMechanism, sec.User, sec.Password = o.saslMechanism, o.saslUser, o.saslPassword
	}
	return sec, nil
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
