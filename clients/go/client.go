package bwp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
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

// Client calls `bwp serve`. It implements BandwidthPredictor; its richer methods
// (Predict, Model, Ready) take a context and return errors.
//
// DecideAllocation keeps a rolling window of the states it was given, so use one Client
// per link for it (PredictBandwidth and Predict keep no state). A Client is safe for
// concurrent use.
type Client struct {
	// BaseURL is the server root, e.g. "http://127.0.0.1:8501".
	BaseURL string
	// Token, when set, is sent as "Authorization: Bearer <Token>" (BWP_SERVE_TOKEN).
	Token string
	// HTTP is the transport; NewClient sets one with a 5 s timeout.
	HTTP *http.Client
	// Timeout bounds each call of PredictBandwidth and DecideAllocation, which take no
	// context (default 5 s).
	Timeout time.Duration

	mu      sync.Mutex
	lastErr error
	window  []NetworkState
}

// NewClient returns a Client for baseURL with an http.Client of a 5 s timeout.
func NewClient(baseURL, token string) *Client {
	return &Client{
		BaseURL: strings.TrimRight(baseURL, "/"),
		Token:   token,
		HTTP:    &http.Client{Timeout: 5 * time.Second},
		Timeout: 5 * time.Second,
	}
}

// LastError returns the error of the most recent PredictBandwidth or DecideAllocation
// call, or nil when it succeeded. The interface methods return only a number, so this
// is where their errors go.
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

// PredictBandwidth sends the last 10 states of sequence (oldest first) to the server and
// returns predicted_bandwidth_mbps. On any error (fewer than 10 states, transport, API
// error) it returns NaN and LastError returns the error; check with math.IsNaN.
func (c *Client) PredictBandwidth(sequence []NetworkState) float64 {
	if len(sequence) < Window {
		err := fmt.Errorf("PredictBandwidth needs at least %d states, got %d", Window, len(sequence))
		c.setErr(err)
		return math.NaN()
	}
	ctx, cancel := c.callCtx()
	defer cancel()
	preds, err := c.Predict(ctx, [][]NetworkState{sequence[len(sequence)-Window:]}, nil)
	c.setErr(err)
	if err != nil {
		return math.NaN()
	}
	return preds[0].PredictedBandwidthMbps
}

// DecideAllocation appends state to this Client's rolling window of the last 10 states,
// padded with the first state ever given until 10 have been seen, and returns the
// server's allocation_pct (10..100) for that window. On error it returns 0 (not a valid
// allocation) and LastError returns the error. One Client per link.
func (c *Client) DecideAllocation(state NetworkState) int {
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

	ctx, cancel := c.callCtx()
	defer cancel()
	preds, err := c.Predict(ctx, [][]NetworkState{window}, nil)
	c.setErr(err)
	if err != nil {
		return 0
	}
	return preds[0].AllocationPct
}

// Predict asks for one prediction per window (each exactly 10 states, oldest first).
// profiles is optional (nil, or one entry per window: "datacenter", "internet", or ""
// for none). The predictions come in the order of the windows.
func (c *Client) Predict(ctx context.Context, windows [][]NetworkState, profiles []string) ([]Prediction, error) {
	if profiles != nil && len(profiles) != len(windows) {
		return nil, fmt.Errorf("Predict: %d profiles for %d windows, want one per window", len(profiles), len(windows))
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

// do sends one request and decodes a 200 answer into out, or an error body into *APIError.
func (c *Client) do(ctx context.Context, method, path string, in, out interface{}) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding the request: %w", err) // NaN/Inf states end here
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return err
	}
	if in != nil {
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
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("bwp serve: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return apiError(resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("bwp serve: %s %s: expected a JSON answer, got %.80q: %w", method, path, data, err)
	}
	return nil
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
