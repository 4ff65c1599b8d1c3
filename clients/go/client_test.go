package bwp

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
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
	// a window of 4 states is refused before anything is sent
	_, err = NewClient(srv.URL, "tok").Predict(context.Background(), [][]NetworkState{states(4)}, []string{"internet"})
	if err == nil || errors.As(err, &apiErr) || len(got) != 0 {
		t.Fatalf("want a client-side error and no request, got %v (%d requests)", err, len(got))
	}
	if _, err := NewClient(srv.URL, "tok").Predict(context.Background(), [][]NetworkState{states(10)}, []string{"internet"}); err != nil {
		t.Fatal(err)
	}
	if p := got[0].Profiles; len(p) != 1 || *p[0] != "internet" {
		t.Fatalf("profiles sent: %v", p)
	}
	_, err = NewClient(srv.URL, "tok").Ready(context.Background())
	if !errors.As(err, &apiErr) || apiErr.Code != "not_found" {
		t.Fatalf("want not_found, got %v", err)
	}
}

func TestInvalidStatesAreRefusedBeforeSending(t *testing.T) {
	var got []predictBody
	srv := server(t, &got)
	defer srv.Close()
	c := NewClient(srv.URL, "tok")
	for _, bad := range []NetworkState{
		{Latency: math.NaN(), Bandwidth: 1}, {Bandwidth: math.Inf(1)}, {Bandwidth: -1}, {Bandwidth: 1, PacketLoss: 1.5},
		{Bandwidth: 2e7},
	} {
		w := states(10)
		w[3] = bad
		if _, err := c.PredictBandwidthContext(context.Background(), w); err == nil {
			t.Errorf("%+v: no error", bad)
		}
		if pct, err := c.DecideAllocationContext(context.Background(), bad); err == nil || pct != 0 {
			t.Errorf("%+v: allocation %d, err %v", bad, pct, err)
		}
	}
	if len(got) != 0 {
		t.Fatalf("%d requests sent for invalid states", len(got))
	}
}

// flaky answers 503 (with Retry-After when retryAfter is set) for the first `fails` requests.
func flaky(t *testing.T, fails int, retryAfter string, status int) (*httptest.Server, *int) {
	var got []predictBody
	ok := server(t, &got)
	n := 0
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		if n <= fails {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.WriteHeader(status)
			w.Write([]byte(`{"error":{"code":"not_ready","message":"no model yet"}}`))
			return
		}
		ok.Config.Handler.ServeHTTP(w, r)
	})), &n
}

func TestRetriesOn503And429HonouringRetryAfter(t *testing.T) {
	for _, status := range []int{503, 429} {
		srv, n := flaky(t, 2, "", status)
		c := NewClient(srv.URL, "tok")
		c.Retry = Retry{Max: 3, Base: time.Millisecond, Cap: 5 * time.Millisecond}
		if v, err := c.PredictBandwidthContext(context.Background(), states(10)); err != nil || v != 109 || *n != 3 {
			t.Fatalf("status %d: %v, %v after %d requests", status, v, err, *n)
		}
		srv.Close()
	}
	srv, n := flaky(t, 1, "1", 503)
	defer srv.Close()
	c := NewClient(srv.URL, "tok")
	start := time.Now()
	if _, err := c.PredictBandwidthContext(context.Background(), states(10)); err != nil || *n != 2 {
		t.Fatalf("%v after %d requests", err, *n)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Fatalf("Retry-After: 1 was not honoured (retried after %v)", waited)
	}
}

func TestRetriesStopAtTheContextDeadlineAndTheLimit(t *testing.T) {
	srv, n := flaky(t, 100, "30", 503)
	defer srv.Close()
	c := NewClient(srv.URL, "tok")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.PredictBandwidthContext(ctx, states(10))
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 503 || time.Since(start) > 150*time.Millisecond || *n != 1 {
		t.Fatalf("want the 503 at once (a 30 s wait outlasts the deadline), got %v after %v, %d requests",
			err, time.Since(start), *n)
	}
	srv2, n2 := flaky(t, 100, "", 503)
	defer srv2.Close()
	c2 := NewClient(srv2.URL, "tok")
	c2.Retry = Retry{Max: 2, Base: time.Millisecond, Cap: time.Millisecond}
	if _, err := c2.PredictBandwidthContext(context.Background(), states(10)); err == nil || *n2 != 3 {
		t.Fatalf("want failure after 1 + 2 tries, got %v after %d", err, *n2)
	}
	// a 4xx other than 429 is not retried
	c3 := NewClient(srv2.URL, "wrong")
	srv3 := server(t, &[]predictBody{})
	defer srv3.Close()
	c3.BaseURL = srv3.URL
	if _, err := c3.PredictBandwidthContext(context.Background(), states(10)); !errors.As(err, &apiErr) || apiErr.Status != 401 {
		t.Fatalf("want 401, got %v", err)
	}
}

func TestContextDeadlineIsTheTimeout(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		w.WriteHeader(503)
	}))
	defer slow.Close()
	c := NewClient(slow.URL, "")
	c.Retry = Retry{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.PredictBandwidthContext(ctx, states(10)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the context's deadline, got %v", err)
	}
	if time.Since(start) > 250*time.Millisecond {
		t.Fatalf("the deadline did not cut the call short: %v", time.Since(start))
	}
	// and a deadline longer than the old fixed 5 s client timeout is not cut short by the client
	if c.HTTP.Timeout != 0 {
		t.Fatalf("NewClient sets an http.Client timeout (%v): it would cut longer context deadlines", c.HTTP.Timeout)
	}
}
