package bwp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
)

// Quantiles is the forecast of one horizon: the mean bandwidth over the next h steps at
// quantiles 0.1, 0.5 and 0.9, Mbit/s, with 0 <= P10 <= P50 <= P90.
type Quantiles struct {
	P10 float64 `json:"p10"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
}

// Forecast maps a horizon in steps (1 is always present) to its quantiles.
type Forecast map[int]Quantiles

// Horizons returns the forecast's horizons in increasing order.
func (f Forecast) Horizons() []int {
	hs := make([]int, 0, len(f))
	for h := range f {
		hs = append(hs, h)
	}
	sort.Ints(hs)
	return hs
}

// Compression is the optional codec hint of schema v3: {"codec": "zstd", "level": N}
// or {"codec": "none"}.
type Compression struct {
	Codec string `json:"codec"`
	Level *int   `json:"level,omitempty"` // nil when the record has no level
}

// Prediction is the answer of `bwp serve` for one window: the decision record's fields
// without the per-record identity (link_id, seq, ts_ms, decided_at_ms, profile).
type Prediction struct {
	SchemaVersion          int     `json:"schema_version"`
	PredictedBandwidthMbps float64 `json:"predicted_bandwidth_mbps"`
	Action                 int     `json:"action"`
	AllocationPct          int     `json:"allocation_pct"`
	ReferenceBandwidthMbps float64 `json:"reference_bandwidth_mbps"`
	AllocatedBandwidthMbps float64 `json:"allocated_bandwidth_mbps"`
	ModelVersion           string  `json:"model_version"`
	// Schema v2 and later; zero values (nil Forecast, "" strings) in a v1 record.
	Forecast          Forecast `json:"-"`
	SafeBandwidthMbps float64  `json:"safe_bandwidth_mbps"`
	ForecastSource    string   `json:"forecast_source"`
	Policy            string   `json:"policy"`
	// Schema v3 (required there); nil in v1/v2 records.
	Compression *Compression `json:"compression,omitempty"`
}

// SafeOrPredicted returns the conservative rate of a v2+ decision (safe_bandwidth_mbps)
// and falls back to predicted_bandwidth_mbps for v1 records, as docs/wire.md advises.
func (p *Prediction) SafeOrPredicted() float64 {
	if p.Forecast == nil {
		return p.PredictedBandwidthMbps
	}
	return p.SafeBandwidthMbps
}

// Decision is one record of the decisions topic (schema version 1, 2 or 3).
type Decision struct {
	Prediction
	LinkID      string `json:"link_id"`
	Seq         int64  `json:"seq"`
	TsMs        int64  `json:"ts_ms"`
	DecidedAtMs int64  `json:"decided_at_ms"`
	Profile     string `json:"profile,omitempty"` // "" when absent

	// Where the record was read (not part of the JSON).
	Partition int32 `json:"-"`
	Offset    int64 `json:"-"`
}

// DecodeError says why a record is not a valid decision. Code is machine-readable
// (invalid_json, not_object, missing_field, unknown_field, wrong_type, out_of_range,
// unsupported_version); Message says what was expected and what came.
type DecodeError struct {
	Code      string
	Message   string
	Partition int32 // where the record was read; -1 when decoded outside a consumer
	Offset    int64
	Record    string // what was decoded: "decision" (when empty) or "ranking"
}

func (e *DecodeError) Error() string {
	what := e.Record
	if what == "" {
		what = "decision"
	}
	if e.Partition < 0 {
		return fmt.Sprintf("invalid %s (%s): %s", what, e.Code, e.Message)
	}
	return fmt.Sprintf("invalid %s at partition %d offset %d (%s): %s",
		what, e.Partition, e.Offset, e.Code, e.Message)
}

func decodeErr(code, format string, args ...interface{}) *DecodeError {
	return &DecodeError{Code: code, Message: fmt.Sprintf(format, args...), Partition: -1, Offset: -1}
}

var (
	linkIDPattern  = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)
	horizonPattern = regexp.MustCompile(`^[1-9][0-9]{0,3}$`)
	v1Fields       = []string{"schema_version", "link_id", "seq", "ts_ms", "predicted_bandwidth_mbps", "action",
		"allocation_pct", "reference_bandwidth_mbps", "allocated_bandwidth_mbps", "model_version", "decided_at_ms"}
	v2Fields       = []string{"forecast", "safe_bandwidth_mbps", "forecast_source", "policy"}
	forecastSource = map[string]bool{"lstm": true, "last_value": true, "ewma": true, "moving_average": true}
	policies       = map[string]bool{"ddqn": true, "quantile_rule": true, "ewma_rule": true, "fixed": true,
		"predict_then_allocate": true}
	profiles = map[string]bool{"datacenter": true, "internet": true}
)

// DecodeDecision parses and validates one decisions-topic value against the schema of
// its schema_version (1, 2, or 3 = 2 plus "compression"): required fields,
// no unknown fields, types, ranges, enums, and p10 <= p50 <= p90 in every horizon (the
// rule JSON Schema cannot express). It returns a *DecodeError when the record is invalid.
func DecodeDecision(raw []byte) (Decision, error) {
	var d Decision
	fields, err := objectFields(raw)
	if err != nil {
		return d, err
	}
	var version int
	if err := field(fields, "schema_version", &version); err != nil {
		return d, err
	}
	if version < 1 || version > 3 {
		return d, decodeErr("unsupported_version", "schema_version must be 1, 2 or 3, got %d", version)
	}
	required := v1Fields
	allowed := map[string]bool{"profile": true}
	if version >= 2 {
		required = append(append([]string{}, v1Fields...), v2Fields...)
	}
	if version == 3 {
		required = append(required, "compression") // required in decisions.v3.schema.json
	}
	for _, k := range required {
		allowed[k] = true
		if _, ok := fields[k]; !ok {
			return d, decodeErr("missing_field", "schema v%d requires %q, it is missing", version, k)
		}
	}
	for k := range fields {
		if !allowed[k] {
			return d, decodeErr("unknown_field", "schema v%d allows no field %q", version, k)
		}
	}
	for _, f := range []struct {
		name string
		dst  interface{}
	}{
		{"link_id", &d.LinkID}, {"seq", &d.Seq}, {"ts_ms", &d.TsMs}, {"decided_at_ms", &d.DecidedAtMs},
		{"predicted_bandwidth_mbps", &d.PredictedBandwidthMbps}, {"action", &d.Action},
		{"allocation_pct", &d.AllocationPct}, {"reference_bandwidth_mbps", &d.ReferenceBandwidthMbps},
		{"allocated_bandwidth_mbps", &d.AllocatedBandwidthMbps}, {"model_version", &d.ModelVersion},
		{"profile", &d.Profile},
	} {
		if err := field(fields, f.name, f.dst); err != nil {
			return d, err
		}
	}
	d.SchemaVersion = version
	if err := checkIdentity(&d); err != nil {
		return d, err
	}
	if err := checkV1(&d.Prediction); err != nil {
		return d, err
	}
	if version >= 2 {
		if err := decodeV2(fields, &d.Prediction); err != nil {
			return d, err
		}
	}
	return d, nil
}

// objectFields splits a JSON object into its raw fields (duplicate keys: the last wins).
func objectFields(raw []byte) (map[string]json.RawMessage, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || !json.Valid(trimmed) {
		return nil, decodeErr("invalid_json", "expected a JSON object, got %d bytes that are not valid JSON", len(raw))
	}
	if trimmed[0] != '{' {
		return nil, decodeErr("not_object", "expected a JSON object, got %.40s", trimmed)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &fields); err != nil {
		return nil, decodeErr("invalid_json", "%v", err)
	}
	return fields, nil
}

// field decodes fields[name] into dst when present; a null or a wrong type is wrong_type.
func field(fields map[string]json.RawMessage, name string, dst interface{}) error {
	raw, ok := fields[name]
	if !ok {
		return nil
	}
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return decodeErr("wrong_type", "%s must not be null", name)
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return decodeErr("wrong_type", "%s has the wrong type: got %.40s (%v)", name, raw, err)
	}
	return nil
}

func checkIdentity(d *Decision) error {
	if !linkIDPattern.MatchString(d.LinkID) {
		return decodeErr("out_of_range", "link_id must be 1..128 chars of [A-Za-z0-9._:-], got %q", d.LinkID)
	}
	for name, v := range map[string]int64{"seq": d.Seq, "ts_ms": d.TsMs, "decided_at_ms": d.DecidedAtMs} {
		if v < 0 {
			return decodeErr("out_of_range", "%s must be >= 0, got %d", name, v)
		}
	}
	if d.Profile != "" && !profiles[d.Profile] {
		return decodeErr("out_of_range", "profile must be datacenter or internet, got %q", d.Profile)
	}
	return nil
}

// checkV1 checks the fields a prediction shares with every decision schema version.
func checkV1(p *Prediction) error {
	if p.Action < 0 || p.Action > 9 {
		return decodeErr("out_of_range", "action must be in 0..9, got %d", p.Action)
	}
	if p.AllocationPct < 10 || p.AllocationPct > 100 || p.AllocationPct%10 != 0 {
		return decodeErr("out_of_range", "allocation_pct must be one of 10, 20, .., 100, got %d", p.AllocationPct)
	}
	for name, v := range map[string]float64{"predicted_bandwidth_mbps": p.PredictedBandwidthMbps,
		"reference_bandwidth_mbps": p.ReferenceBandwidthMbps, "allocated_bandwidth_mbps": p.AllocatedBandwidthMbps} {
		if err := nonNegative(name, v); err != nil {
			return err
		}
	}
	if p.ModelVersion == "" {
		return decodeErr("out_of_range", "model_version must be a non-empty string, got \"\"")
	}
	return nil
}

func nonNegative(name string, v float64) error {
	if !(v >= 0) || math.IsInf(v, 1) {
		return decodeErr("out_of_range", "%s must be a finite number >= 0, got %v", name, v)
	}
	return nil
}

// decodeV2 decodes and checks the fields schema v2 adds (and v3's optional compression).
func decodeV2(fields map[string]json.RawMessage, p *Prediction) error {
	var raw map[string]Quantiles
	for _, f := range []struct {
		name string
		dst  interface{}
	}{
		{"forecast", &raw}, {"safe_bandwidth_mbps", &p.SafeBandwidthMbps},
		{"forecast_source", &p.ForecastSource}, {"policy", &p.Policy}, {"compression", &p.Compression},
	} {
		if err := field(fields, f.name, f.dst); err != nil {
			return err
		}
	}
	forecast, err := checkForecast(raw, fields["forecast"])
	if err != nil {
		return err
	}
	p.Forecast = forecast
	if err := nonNegative("safe_bandwidth_mbps", p.SafeBandwidthMbps); err != nil {
		return err
	}
	if !forecastSource[p.ForecastSource] {
		return decodeErr("out_of_range", "forecast_source must be lstm, last_value, ewma or moving_average, got %q",
			p.ForecastSource)
	}
	if !policies[p.Policy] {
		return decodeErr("out_of_range",
			"policy must be ddqn, quantile_rule, ewma_rule, fixed or predict_then_allocate, got %q", p.Policy)
	}
	if c := p.Compression; c != nil {
		return checkCompression(c, fields["compression"])
	}
	return nil
}

// checkCompression applies decisions.v3.schema.json's oneOf: {"codec": "none"} alone, or
// {"codec": "zstd", "level": 1..19}; no other codec, level or key.
func checkCompression(c *Compression, raw json.RawMessage) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return decodeErr("wrong_type", "compression must be an object: %v", err)
	}
	switch c.Codec {
	case "none":
		if len(keys) != 1 {
			return decodeErr("out_of_range", `compression {"codec": "none"} takes no other key, got %s`, raw)
		}
	case "zstd":
		if c.Level == nil || *c.Level < 1 || *c.Level > 19 || len(keys) != 2 {
			return decodeErr("out_of_range", `compression {"codec": "zstd"} needs "level" 1..19 and no other key, got %s`, raw)
		}
	default:
		return decodeErr("out_of_range", `compression.codec must be "zstd" or "none", got %q`, c.Codec)
	}
	return nil
}

// checkForecast converts the horizon keys and checks every horizon's quantiles.
func checkForecast(raw map[string]Quantiles, rawJSON json.RawMessage) (Forecast, error) {
	var shape map[string]map[string]json.RawMessage
	if err := json.Unmarshal(rawJSON, &shape); err != nil {
		return nil, decodeErr("wrong_type", "forecast must map horizons to {p10, p50, p90} objects: %v", err)
	}
	out := make(Forecast, len(raw))
	for key, q := range raw {
		if !horizonPattern.MatchString(key) {
			return nil, decodeErr("out_of_range", "forecast keys must be horizons matching ^[1-9][0-9]{0,3}$, got %q", key)
		}
		if len(shape[key]) != 3 {
			return nil, decodeErr("wrong_type", "forecast[%q] must have exactly p10, p50, p90, got %d fields", key,
				len(shape[key]))
		}
		for _, name := range []string{"p10", "p50", "p90"} {
			if _, ok := shape[key][name]; !ok {
				return nil, decodeErr("missing_field", "forecast[%q] requires %s", key, name)
			}
		}
		if !(q.P10 >= 0 && q.P10 <= q.P50 && q.P50 <= q.P90) || math.IsInf(q.P90, 1) {
			return nil, decodeErr("out_of_range", "forecast[%q] must have 0 <= p10 <= p50 <= p90, got p10=%v, p50=%v, p90=%v",
				key, q.P10, q.P50, q.P90)
		}
		h, _ := strconv.Atoi(key) // the pattern guarantees 1..9999
		out[h] = q
	}
	if _, ok := out[1]; !ok {
		return nil, decodeErr("missing_field", `forecast must have the horizon "1", got %d other horizons`, len(out))
	}
	return out, nil
}

// decodePrediction decodes one prediction object of a /v1/predict answer (a decision
// without the identity fields). It is lenient about extra fields: the server may add
// fields in later versions.
func decodePrediction(raw json.RawMessage) (Prediction, error) {
	var p Prediction
	fields, err := objectFields(raw)
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return p, decodeErr("wrong_type", "%v", err)
	}
	if err := checkV1(&p); err != nil {
		return p, err
	}
	if _, ok := fields["forecast"]; ok {
		if err := decodeV2(fields, &p); err != nil {
			return p, err
		}
	}
	return p, nil
}
