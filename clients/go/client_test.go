package bwp

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
)

type predictBody struct {
	Windows  [][]map[string]float64 `json:"windows"`
	Profiles []*string              `json:"profiles"`
}

// server answers /v1/predict with predicted = last bandwidth and allocation = 10 *
// (number of distinct bandwidths in the window), and records the requests.
func server(t *testing.T, got *[]predictBody) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(401)
			w.Write([]byte(`{"error":{"code":"unauthorized","message":"bearer token missing"}}`))
			return
		}
		if r.URL.Path != "/v1/predict" || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(404)
			w.Write([]byte(`{"error":{"code":"not_found","message":"no route"}}`))
			return
		}
		var b predictBody
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
			t.Errorf("request is not JSON: %v", err)
		}
		*got = append(*got, b)
		var preds []map[string]interface{}
		for _, win := range b.Windows {
			if len(win) != 10 {
				w.WriteHeader(422)
				w.Write([]byte(`{"error":{"code":"wrong_shape","message":"need 10 states"}}`))
				return
			}
			distinct := map[float64]bool{}
			for _, s := range win {
				distinct[s["bandwidth_mbps"]] = true
			}
			last := win[9]["bandwidth_mbps"]
			pct := 10 * len(distinct)
			preds = append(preds, map[string]interface{}{"schema_version": 2, "predicted_bandwidth_mbps": last,
				"action": pct/10 - 1, "allocation_pct": pct, "reference_bandwidth_mbps": last,
				"allocated_bandwidth_mbps": last * float64(pct) / 100, "model_version": "m",
				"forecast": map[string]Quantiles{"1": {last, last, last}}, "safe_bandwidth_mbps": last,
				"forecast_source": "lstm", "policy": "ddqn"})
		}
		json.NewEncoder(w).Encode(map[string]interface{}{"model_version": "m", "predictions": preds})
	}))
}

func states(n int) []NetworkState {
	out := make([]NetworkState, n)
	for i := range out {
		out[i] = NetworkState{Latency: 1, Bandwidth: float64(100 + i), PacketLoss: 0.01, Reliability: 0.99}
	}
	return out
}

func TestPredictBandwidthSendsTheLast10States(t *testing.T) {
	var got []predictBody
	srv := server(t, &got)
	defer srv.Close()
	c := NewClient(srv.URL, "tok")
	var p BandwidthPredictor = c
	if v := p.PredictBandwidth(states(15)); v != 114 || c.LastError() != nil {
		t.Fatalf("PredictBandwidth = %v (%v), want 114", v, c.LastError())
	}
	w := got[0].Windows[0]
	if len(got[0].Windows) != 1 || len(w) != 10 || w[0]["bandwidth_mbps"] != 105 || w[0]["latency_ms"] != 1 ||
		w[0]["packet_loss"] != 0.01 || w[0]["reliability"] != 0.99 || got[0].Profiles != nil {
		t.Fatalf("request %+v", got[0])
	}
	if v := p.PredictBandwidth(states(3)); !math.IsNaN(v) || c.LastError() == nil {
		t.Fatalf("3 states: want NaN and an error, got %v %v", v, c.LastError())
	}
}

func TestDecideAllocationKeepsARollingWindow(t *testing.T) {
	var got []predictBody
	srv := server(t, &got)
	defer srv.Close()
	c := NewClient(srv.URL, "tok")
	s := states(12)
	// first call: 10 copies of the first state -> 1 distinct bandwidth -> 10 %
	if pct := c.DecideAllocation(s[0]); pct != 10 {
		t.Fatalf("first DecideAllocation = %d (%v), want 10", pct, c.LastError())
	}
	for i := 1; i < 12; i++ {
		pct := c.DecideAllocation(s[i])
		want := 10 * min(i+1, 10)
		if pct != want {
			t.Fatalf("call %d: allocation %d, want %d", i, pct, want)
		}
	}
	last := got[len(got)-1].Windows[0]
	if last[0]["bandwidth_mbps"] != 102 || last[9]["bandwidth_mbps"] != 111 {
		t.Fatalf("window after 12 states: %v .. %v", last[0], last[9])
	}
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func TestAPIErrorsAreTyped(t *testing.T) {
	var got []predictBody
	srv := server(t, &got)
	defer srv.Close()
	var apiErr *APIError
	_, err := NewClient(srv.URL, "wrong").Predict(context.Background(), [][]NetworkState{states(10)}, nil)
	if !errors.As(err, &apiErr) || apiErr.Status != 401 || apiErr.Code != "unauthorized" {
		t.Fatalf("want a 401 unauthorized APIError, got %v", err)
	}
	_, err = NewClient(srv.URL, "tok").Predict(context.Background(), [][]NetworkState{states(4)}, []string{"internet"})
	if !errors.As(err, &apiErr) || apiErr.Status != 422 || apiErr.Code != "wrong_shape" {
		t.Fatalf("want a 422 wrong_shape APIError, got %v", err)
	}
	if p := got[0].Profiles; len(p) != 1 || *p[0] != "internet" {
		t.Fatalf("profiles sent: %v", p)
	}
	_, err = NewClient(srv.URL, "tok").Ready(context.Background())
	if !errors.As(err, &apiErr) || apiErr.Code != "not_found" {
		t.Fatalf("want not_found, got %v", err)
	}
}
