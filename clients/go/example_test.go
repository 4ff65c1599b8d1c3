package bwp_test

import (
	"context"
	"fmt"
	"log"
	"math"
	"time"

	bwp "github.com/bwp/clients/go/bwp"
)

// A DWCP node: follow the decisions of every link, and ask the API about a link that
// has no telemetry yet. Compiled by `go vet` / `go test` (not run: it needs a broker).
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// 1. Decisions from the embedded broker of `make demo` (partition mode: tansu has no
	//    consumer groups for sarama; use bwp.ModeGroup with Apache Kafka).
	consumer, err := bwp.NewConsumer(ctx, bwp.ConsumerConfig{
		Brokers: []string{"127.0.0.1:9092"},
		Topic:   "bwp.decisions",
		Mode:    bwp.ModePartition,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer consumer.Close()
	go func() {
		for err := range consumer.Errors() { // invalid records: reported, never fatal
			log.Printf("skipped: %v", err)
		}
	}()

	// 2. The prediction API (`bwp serve`), for a link being planned.
	client := bwp.NewClient("http://127.0.0.1:8501", "")
	window := make([]bwp.NetworkState, bwp.Window)
	for i := range window {
		window[i] = bwp.NetworkState{Latency: 20, Bandwidth: 100, PacketLoss: 0.001, Reliability: 0.99}
	}
	var predictor bwp.BandwidthPredictor = client                      // the original design's interface
	if mbps := predictor.PredictBandwidth(window); !math.IsNaN(mbps) { // NaN on error
		fmt.Printf("planned link: %.1f Mbit/s next step\n", mbps)
	} else {
		log.Printf("predict: %v", client.LastError())
	}

	for d := range consumer.Decisions() { // each (link_id, seq) once
		level := "none"
		if d.Compression != nil && d.Compression.Level != nil {
			level = fmt.Sprintf("zstd-%d", *d.Compression.Level)
		}
		fmt.Printf("%s seq %d: send at %.1f Mbit/s (safe %.1f), compress %s\n",
			d.LinkID, d.Seq, d.AllocatedBandwidthMbps, d.SafeOrPredicted(), level)
	}
}
