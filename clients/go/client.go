package bwp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// APIError is an error answer of `bwp serve`: the HTTP status and the body's
// {"error": {"code", "message"}} (code e.g. wrong_shape, out_of_range, unauthorized, not_ready).
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("bwp serve: HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

// ModelInfo is the answer of GET /v1/model.
type ModelInfo struct {
	ModelVersion           string    `json:"model_version"`
	Window                 int       `json:"window"`
	Features               []string  `json:"features"`
	Head                   string    `json:"head"` // "quantile" or "point"
	Horizons               []int     `json:"horizons"`
	Quantiles              []float64 `json:"quantiles"`
	NActions               int       `json:"n_actions"`
	DecisionsSchemaVersion int       `json:"decisions_schema_version"`
}

// Retry is how a Client retries a request the server could not take right now: an HTTP 429
// or 503 answer, or a connection error. Waits grow exponentially from Base up to Cap, with
// full jitter; a Retry-After header (seconds) on the answer sets the wait instead. No wait
// outlasts the context's deadline: the call then returns the last error at once.
type Retry struct {
	Max  int           // retries after the first try (0: none)
	Base time.Duration // first wait before jitter
	Cap  time.Duration // longest wait
}

// delay is the wait before retry attempt+1 before jitter: Base * 2^attempt, at most Cap (when set).
func (r Retry) delay(attempt int) time.Duration {
	d := r.Base << uint(attempt)
	if r.Cap > 0 && (d > r.Cap || d <= 0) {
		d = r.Cap
	}
	return d
}

// DefaultRetry is what NewClient sets: 3 retries, 100 ms growing to 2 s.
var DefaultRetry = Retry{Max: 3, Base: 100 * time.Millisecond, Cap: 2 * time.Second}

// Client calls `bwp serve`. It implements BandwidthPredictor; the Context methods
// (PredictBandwidthContext, DecideAllocationContext, Predict, Model, Ready) take a context,
// whose deadline bounds the whole call including retries, and return errors.
//
// DecideAllocation keeps a rolling window of the states it was given, so use one Client
// per link for it (PredictBandwidth and Predict keep no state). A Client is safe for
// concurrent use.
type Client struct {
	// BaseURL is the server root, e.g. "http://127.0.0.1:8501".
	BaseURL string
	// Token, when set, is sent as "Authorization: Bearer <Token>" (BWP_SERVE_TOKEN).
	Token string
	// HTTP is the transport; NewClient sets one with no timeout of its own (the context's
	// deadline is the timeout).
	HTTP *http.Client
	// Timeout bounds each call of PredictBandwidth and DecideAllocation, which take no
	// context (default 5 s).
	Timeout time.Duration
	// Retry is the retry policy (NewClient: DefaultRetry; the zero value retries nothing).
	Retry Retry

	mu      sync.Mutex
	lastErr error
	window  []NetworkState
}

// NewClient returns a Client for baseURL with DefaultRetry and a 5 s Timeout for the
// context-free methods.
func NewClient(baseURL, token string) *Client {
	return &Client{
		BaseURL: strings.TrimRight(baseURL, "/"),
		Token:   token,
		HTTP:    &http.Client{},
		Timeout: 5 * time.Second,
		Retry:   DefaultRetry,
	}
}

// LastError returns the error of the most recent PredictBandwidth or DecideAllocation
// call, or nil when it succeeded: the interface methods return only a number.
//
// Deprecated: with concurrent calls it may hold another call's error; use the Context
// methods, which return each call's own error.
func (c *Client) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

func (c *Client) setErr(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}

func (c *Client) callCtx() (context.Context, context.CancelFunc) {
	t := c.Timeout
	if t <= 0 {
		t = 5 * time.Second
	}
	return context.WithTimeout(context.Background(), t)
}

// PredictBandwidth is PredictBandwidthContext with the Client's Timeout; on any error it
// returns NaN (check with math.IsNaN) and LastError returns the error.
func (c *Client) PredictBandwidth(sequence []NetworkState) float64 {
	ctx, cancel := c.callCtx()
	defer cancel()
	v, err := c.PredictBandwidthContext(ctx, sequence)
	c.setErr(err)
	return v
}

// PredictBandwidthContext sends the last 10 states of sequence (oldest first) to the server
// and returns predicted_bandwidth_mbps; NaN and the error when it fails (fewer than 10
// states, a non-finite or negative value, transport, API error).
func (c *Client) PredictBandwidthContext(ctx context.Context, sequence []NetworkState) (float64, error) {
	if len(sequence) < Window {
		return math.NaN(), fmt.Errorf("PredictBandwidth needs at least %d states, got %d", Window, len(sequence))
	}
	preds, err := c.Predict(ctx, [][]NetworkState{sequence[len(sequence)-Window:]}, nil)
	if err != nil {
		return math.NaN(), err
	}
	return preds[0].PredictedBandwidthMbps, nil
}

// DecideAllocation is DecideAllocationContext with the Client's Timeout; on error it returns
// 0 (not a valid allocation) and LastError returns the error. One Client per link.
func (c *Client) DecideAllocation(state NetworkState) int {
	ctx, cancel := c.callCtx()
	defer cancel()
	v, err := c.DecideAllocationContext(ctx, state)
	c.setErr(err)
	return v
}

// DecideAllocationContext appends state to this Client's rolling window of the last 10
// states, padded with the first state ever given until 10 have been seen, and returns the
// server's allocation_pct (10..100) for that window; 0 and the error when it fails.
func (c *Client) DecideAllocationContext(ctx context.Context, state NetworkState) (int, error) {
	if err := checkState(state); err != nil {
		return 0, fmt.Errorf("DecideAllocation: %w", err)
	}
	c.mu.Lock()
	if len(c.window) == 0 {
		for i := 0; i < Window; i++ {
			c.window = append(c.window, state)
		}
	} else {
		c.window = append(c.window[1:], state)
	}
	window := append([]NetworkState(nil), c.window...)
	c.mu.Unlock()
	preds, err := c.Predict(ctx, [][]NetworkState{window}, nil)
	if err != nil {
		return 0, err
	}
	return preds[0].AllocationPct, nil
}

// The ranges the worker's decoder and the API accept (telemetry.schema.json), for one state.
const (
	maxLatencyMs     = 3.6e6
	maxBandwidthMbps = 1e7
)

// checkMeasured checks latency, bandwidth, loss and reliability (named as the caller names them)
// against the ranges the worker and the API accept.
func checkMeasured(names [4]string, latency, bandwidth, loss, reliability float64) error {
	for i, f := range []struct{ v, max float64 }{{latency, maxLatencyMs}, {bandwidth, maxBandwidthMbps},
		{loss, 1}, {reliability, 1}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 || f.v > f.max {
			return fmt.Errorf("%s must be a finite number in [0, %g], got %v", names[i], f.max, f.v)
		}
	}
	return nil
}

// checkState refuses what the server would refuse (422), before sending anything.
func checkState(s NetworkState) error {
	return checkMeasured([4]string{"Latency", "Bandwidth", "PacketLoss", "Reliability"},
		s.Latency, s.Bandwidth, s.PacketLoss, s.Reliability)
}

// Predict asks for one prediction per window (each exactly 10 states, oldest first).
// profiles is optional (nil, or one entry per window: "datacenter", "internet", or ""
// for none). The predictions come in the order of the windows.
func (c *Client) Predict(ctx context.Context, windows [][]NetworkState, profiles []string) ([]Prediction, error) {
	if profiles != nil && len(profiles) != len(windows) {
		return nil, fmt.Errorf("Predict: %d profiles for %d windows, want one per window", len(profiles), len(windows))
	}
	if len(windows) == 0 {
		return nil, errors.New("Predict: no windows")
	}
	for i, w := range windows {
		if len(w) != Window {
			return nil, fmt.Errorf("Predict: window %d has %d states, want %d", i, len(w), Window)
		}
		for j, st := range w {
			if err := checkState(st); err != nil {
				return nil, fmt.Errorf("Predict: window %d state %d: %w", i, j, err)
			}
		}
	}
	body := struct {
		Windows  [][]wireState `json:"windows"`
		Profiles []*string     `json:"profiles,omitempty"`
	}{Windows: make([][]wireState, len(windows))}
	for i, w := range windows {
		body.Windows[i] = toWire(w)
	}
	for i := range profiles {
		var p *string
		if profiles[i] != "" {
			p = &profiles[i]
		}
		body.Profiles = append(body.Profiles, p)
	}
	var out struct {
		ModelVersion string            `json:"model_version"`
		Predictions  []json.RawMessage `json:"predictions"`
	}
	if err := c.do(ctx, http.MethodPost, "/v1/predict", body, &out); err != nil {
		return nil, err
	}
	if len(out.Predictions) != len(windows) {
		return nil, fmt.Errorf("bwp serve: %d predictions for %d windows", len(out.Predictions), len(windows))
	}
	preds := make([]Prediction, len(out.Predictions))
	for i, raw := range out.Predictions {
		p, err := decodePrediction(raw)
		if err != nil {
			return nil, fmt.Errorf("bwp serve: prediction %d: %w", i, err)
		}
		preds[i] = p
	}
	return preds, nil
}

// Model returns what the served model is (GET /v1/model).
func (c *Client) Model(ctx context.Context) (ModelInfo, error) {
	var m ModelInfo
	err := c.do(ctx, http.MethodGet, "/v1/model", nil, &m)
	return m, err
}

// Ready returns the served model version when the server is ready (GET /v2/health/ready);
// before a model is loaded it returns an *APIError with Code "not_ready".
func (c *Client) Ready(ctx context.Context) (string, error) {
	var r struct {
		ModelVersion string `json:"model_version"`
	}
	err := c.do(ctx, http.MethodGet, "/v2/health/ready", nil, &r)
	return r.ModelVersion, err
}

// do sends one request, retrying as c.Retry says, and decodes a 200 answer into out, or an
// error body into *APIError.
func (c *Client) do(ctx context.Context, method, path string, in, out interface{}) error {
	var payload []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding the request: %w", err)
		}
		payload = b
	}
	for attempt := 0; ; attempt++ {
		retryAfter, err := c.once(ctx, method, path, payload, out)
		if err == nil || attempt >= c.Retry.Max || !retryable(err) {
			return err
		}
		wait := c.backoff(attempt, retryAfter)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return err // waiting would outlast the caller's deadline: give the last answer now
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// retryable: the server could not take the request now (429, 503), or it never got it.
func retryable(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status == http.StatusTooManyRequests || ae.Status == http.StatusServiceUnavailable
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// backoff is the wait before retry attempt+1: Retry-After when the server gave one, else
// full jitter over Base * 2^attempt, capped.
func (c *Client) backoff(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return retryAfter
	}
	d := c.Retry.delay(attempt)
	if d <= 0 {
		return 0
	}
	return time.Duration(rand.Int63n(int64(d)) + 1)
}

// once sends the request one time: the answer's Retry-After (0 if none) and its error.
func (c *Client) once(ctx context.Context, method, path string, payload []byte, out interface{}) (time.Duration, error) {
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return 0, err
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, fmt.Errorf("bwp serve: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var wait time.Duration
		if secs, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); err == nil && secs > 0 {
			wait = time.Duration(secs) * time.Second
		}
		return wait, apiError(resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return 0, fmt.Errorf("bwp serve: %s %s: expected a JSON answer, got %.80q: %w", method, path, data, err)
	}
	return 0, nil
}

func apiError(status int, data []byte) *APIError {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &e) != nil || e.Error.Code == "" {
		return &APIError{Status: status, Code: "http_error", Message: fmt.Sprintf("%.200s", data)}
	}
	return &APIError{Status: status, Code: e.Error.Code, Message: e.Error.Message}
}
