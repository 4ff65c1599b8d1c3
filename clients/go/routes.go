package bwp

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
)

// Member is one ranked path of a route group (routes.schema.json, members[]).
type Member struct {
	Rank       int      `json:"rank"` // 1 = best
	LinkID     string   `json:"link_id"`
	Score      float64  `json:"score"`   // risk-adjusted bandwidth, Mbit/s
	Horizon    int      `json:"horizon"` // forecast horizon the score used, steps
	Seq        int64    `json:"seq"`     // the member's latest decided state
	TsMs       int64    `json:"ts_ms"`
	AgeMs      int64    `json:"age_ms"`
	LatencyMs  float64  `json:"latency_ms"`
	PacketLoss float64  `json:"packet_loss"`
	Forecast   Forecast `json:"-"` // keyed by horizon; decoded and checked as a decision's
}

// Ranking is one record of the routes topic (bwp.routes, key = route_group): the fresh
// members of a route group in rank order.
type Ranking struct {
	SchemaVersion int      `json:"schema_version"` // 1
	RouteGroup    string   `json:"route_group"`
	PublishedAtMs int64    `json:"published_at_ms"`
	Reason        string   `json:"reason"` // "order" (the order changed) or "interval"
	ScoreRule     string   `json:"score_rule"`
	ScoreHorizon  int      `json:"score_horizon"`
	Members       []Member `json:"members"`

	// Where the record was read (set by RoutesConsumer).
	Partition int32 `json:"-"`
	Offset    int64 `json:"-"`
}

// Best returns the rank-1 member, or false for a group with no fresh member.
func (r Ranking) Best() (Member, bool) {
	if len(r.Members) == 0 {
		return Member{}, false
	}
	return r.Members[0], true
}

// DecodeRanking parses and validates one routes record as routes.schema.json says: required
// fields, types, ranges, no unknown fields, ranks 1..n in order; errors are *DecodeError.
func DecodeRanking(value []byte) (Ranking, error) {
	r, err := decodeRanking(value)
	if err != nil {
		err.Record = "ranking"
		return r, err
	}
	return r, nil
}

func decodeRanking(value []byte) (Ranking, *DecodeError) {
	var r Ranking
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(value, &fields); err != nil {
		if bytes.HasPrefix(bytes.TrimSpace(value), []byte("{")) || len(bytes.TrimSpace(value)) == 0 {
			return r, decodeErr("invalid_json", "ranking is not valid JSON: %v", err)
		}
		return r, decodeErr("not_object", "ranking must be a JSON object")
	}
	known := map[string]bool{"schema_version": true, "route_group": true, "published_at_ms": true, "reason": true,
		"score_rule": true, "score_horizon": true, "members": true}
	for k := range fields {
		if !known[k] {
			return r, decodeErr("unknown_field", "ranking has an unknown field %q", k)
		}
	}
	if err := required(fields, []namedField{{"schema_version", &r.SchemaVersion}, {"route_group", &r.RouteGroup},
		{"published_at_ms", &r.PublishedAtMs}, {"reason", &r.Reason}, {"score_rule", &r.ScoreRule},
		{"score_horizon", &r.ScoreHorizon}}); err != nil {
		return r, err
	}
	switch {
	case r.SchemaVersion != 1:
		return r, decodeErr("unsupported_version", "ranking schema_version must be 1, got %d", r.SchemaVersion)
	case !linkIDPattern.MatchString(r.RouteGroup):
		return r, decodeErr("out_of_range", "route_group must match %s, got %q", linkIDPattern, r.RouteGroup)
	case r.PublishedAtMs < 0:
		return r, decodeErr("out_of_range", "published_at_ms must be >= 0, got %d", r.PublishedAtMs)
	case r.Reason != "order" && r.Reason != "interval":
		return r, decodeErr("out_of_range", "reason must be order or interval, got %q", r.Reason)
	case r.ScoreHorizon < 1:
		return r, decodeErr("out_of_range", "score_horizon must be >= 1, got %d", r.ScoreHorizon)
	}
	raw, ok := fields["members"]
	if !ok {
		return r, decodeErr("missing_field", "ranking needs %q", "members")
	}
	var members []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return r, decodeErr("wrong_type", "members must be an array of objects: %v", err)
	}
	for i, m := range members {
		mem, derr := decodeMember(m)
		if derr != nil {
			derr.Message = "members[" + strconv.Itoa(i) + "]: " + derr.Message
			return r, derr
		}
		if mem.Rank != i+1 {
			return r, decodeErr("out_of_range", "members[%d] has rank %d, want %d (rank order)", i, mem.Rank, i+1)
		}
		r.Members = append(r.Members, mem)
	}
	return r, nil
}

func decodeMember(m map[string]json.RawMessage) (Member, *DecodeError) {
	var mem Member
	known := map[string]bool{"rank": true, "link_id": true, "score": true, "horizon": true, "seq": true, "ts_ms": true,
		"age_ms": true, "latency_ms": true, "packet_loss": true, "forecast": true}
	for k := range m {
		if !known[k] {
			return mem, decodeErr("unknown_field", "unknown field %q", k)
		}
	}
	if err := required(m, []namedField{{"rank", &mem.Rank}, {"link_id", &mem.LinkID}, {"score", &mem.Score},
		{"horizon", &mem.Horizon}, {"seq", &mem.Seq}, {"ts_ms", &mem.TsMs}, {"age_ms", &mem.AgeMs},
		{"latency_ms", &mem.LatencyMs}, {"packet_loss", &mem.PacketLoss}}); err != nil {
		return mem, err
	}
	switch {
	case mem.Rank < 1 || mem.Horizon < 1 || mem.Seq < 0 || mem.TsMs < 0 || mem.AgeMs < 0:
		return mem, decodeErr("out_of_range", "rank and horizon must be >= 1, seq, ts_ms and age_ms >= 0")
	case !linkIDPattern.MatchString(mem.LinkID):
		return mem, decodeErr("out_of_range", "link_id must match %s, got %q", linkIDPattern, mem.LinkID)
	case math.IsNaN(mem.Score) || math.IsInf(mem.Score, 0):
		return mem, decodeErr("out_of_range", "score must be finite, got %v", mem.Score)
	case !(mem.LatencyMs >= 0) || math.IsInf(mem.LatencyMs, 0):
		return mem, decodeErr("out_of_range", "latency_ms must be a finite number >= 0, got %v", mem.LatencyMs)
	case !(mem.PacketLoss >= 0 && mem.PacketLoss <= 1):
		return mem, decodeErr("out_of_range", "packet_loss must be in [0, 1], got %v", mem.PacketLoss)
	}
	var raw map[string]Quantiles
	fc, ok := m["forecast"]
	if !ok {
		return mem, decodeErr("missing_field", "needs %q", "forecast")
	}
	if err := json.Unmarshal(fc, &raw); err != nil {
		return mem, decodeErr("wrong_type", "forecast must map horizons to {p10, p50, p90}: %v", err)
	}
	if len(raw) == 0 {
		return mem, decodeErr("out_of_range", "forecast needs at least one horizon")
	}
	forecast, err := checkForecast(raw, fc)
	if err != nil {
		var de *DecodeError
		if e, ok := err.(*DecodeError); ok {
			de = e
		} else {
			de = decodeErr("out_of_range", "%v", err)
		}
		return mem, de
	}
	mem.Forecast = forecast
	return mem, nil
}

// namedField is one required field of a record and where it is decoded to.
type namedField struct {
	name string
	dst  interface{}
}

// required decodes every field into its destination with the decisions' field(): missing_field,
// or wrong_type (null included).
func required(fields map[string]json.RawMessage, want []namedField) *DecodeError {
	for _, f := range want {
		if _, ok := fields[f.name]; !ok {
			return decodeErr("missing_field", "needs %q", f.name)
		}
		if err := field(fields, f.name, f.dst); err != nil {
			var de *DecodeError
			if errors.As(err, &de) {
				return de
			}
			return decodeErr("wrong_type", "%s: %v", f.name, err)
		}
	}
	return nil
}
