package bwp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	bwp "github.com/bwp/clients/go/bwp"
)

// A DWCP node: follow the decisions of every link, and ask the API about a link that
// has no telemetry yet. Compiled by `go vet` / `go test`, not run (it needs a broker and a
// server); the examples below run against a stand-in server and check their output.
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

// A stand-in for `bwp serve` in the examples below: one fixed prediction per window.
func exampleServer() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Windows [][]map[string]float64 `json:"windows"`
		}
		json.NewDecoder(r.Body).Decode(&body)
		preds := make([]map[string]interface{}, len(body.Windows))
		for i, win := range body.Windows {
			last := win[len(win)-1]["bandwidth_mbps"]
			preds[i] = map[string]interface{}{"schema_version": 2, "predicted_bandwidth_mbps": 0.9 * last,
				"action": 7, "allocation_pct": 80, "reference_bandwidth_mbps": last,
				"allocated_bandwidth_mbps": 0.8 * last, "model_version": "v-example",
				"forecast":            map[string]bwp.Quantiles{"1": {P10: 0.7 * last, P50: 0.9 * last, P90: last}},
				"safe_bandwidth_mbps": 0.7 * last, "forecast_source": "ewma", "policy": "quantile_rule"}
		}
		json.NewEncoder(w).Encode(map[string]interface{}{"model_version": "v-example", "predictions": preds})
	}))
}

func steadyWindow(mbps float64) []bwp.NetworkState {
	w := make([]bwp.NetworkState, bwp.Window)
	for i := range w {
		w[i] = bwp.NetworkState{Latency: 20, Bandwidth: mbps, PacketLoss: 0.001, Reliability: 0.99}
	}
	return w
}

// The context-first call: its deadline bounds the request and any retries.
func ExampleClient_PredictBandwidthContext() {
	srv := exampleServer()
	defer srv.Close()
	client := bwp.NewClient(srv.URL, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	mbps, err := client.PredictBandwidthContext(ctx, steadyWindow(100))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("next step: %.1f Mbit/s\n", mbps)
	// Output: next step: 90.0 Mbit/s
}

// The full prediction: quantiles, the safe bandwidth, and what served it.
func ExampleClient_Predict() {
	srv := exampleServer()
	defer srv.Close()
	preds, err := bwp.NewClient(srv.URL, "").Predict(context.Background(), [][]bwp.NetworkState{steadyWindow(50)}, nil)
	if err != nil {
		log.Fatal(err)
	}
	p := preds[0]
	fmt.Printf("p10 %.0f p50 %.0f p90 %.0f, safe %.0f Mbit/s, allocate %d%% (%s, forecast from %s)\n",
		p.Forecast[1].P10, p.Forecast[1].P50, p.Forecast[1].P90, p.SafeBandwidthMbps, p.AllocationPct, p.Policy,
		p.ForecastSource)
	// Output: p10 35 p50 45 p90 50, safe 35 Mbit/s, allocate 80% (quantile_rule, forecast from ewma)
}

// A decision record from the decisions topic, checked against its schema.
func ExampleDecodeDecision() {
	raw := `{"schema_version":3,"link_id":"lk-1","seq":12,"ts_ms":1000,"predicted_bandwidth_mbps":10.0,` +
		`"action":4,"allocation_pct":50,"reference_bandwidth_mbps":20.0,"allocated_bandwidth_mbps":10.0,` +
		`"model_version":"m7","decided_at_ms":1050,"forecast":{"1":{"p10":9.0,"p50":10.0,"p90":11.0}},` +
		`"safe_bandwidth_mbps":9.0,"forecast_source":"lstm","policy":"ddqn","compression":{"codec":"zstd","level":3}}`
	d, err := bwp.DecodeDecision([]byte(raw))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s seq %d: %.0f Mbit/s (safe %.0f), zstd-%d\n", d.LinkID, d.Seq, d.AllocatedBandwidthMbps,
		d.SafeOrPredicted(), *d.Compression.Level)
	_, err = bwp.DecodeDecision([]byte(strings.Replace(raw, `"level":3`, `"level":99`, 1)))
	fmt.Println(err != nil)
	// Output:
	// lk-1 seq 12: 10 Mbit/s (safe 9), zstd-3
	// true
}
