package bwp

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func goodTelemetry() Telemetry {
	return Telemetry{LinkID: "lk-1", Seq: 3, TsMs: 1000, LatencyMs: 12, BandwidthMbps: 95, PacketLoss: 0.01,
		Reliability: 0.99, Profile: "internet"}
}

func TestTelemetryValidateAsTheWorkerDecodes(t *testing.T) {
	if err := goodTelemetry().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(*Telemetry){
		"link_id":      func(x *Telemetry) { x.LinkID = "a b" },
		"empty id":     func(x *Telemetry) { x.LinkID = "" },
		"seq":          func(x *Telemetry) { x.Seq = -1 },
		"nan":          func(x *Telemetry) { x.BandwidthMbps = math.NaN() },
		"inf":          func(x *Telemetry) { x.LatencyMs = math.Inf(1) },
		"too fast":     func(x *Telemetry) { x.BandwidthMbps = 2e7 },
		"loss":         func(x *Telemetry) { x.PacketLoss = 1.5 },
		"profile":      func(x *Telemetry) { x.Profile = "moon" },
		"route group":  func(x *Telemetry) { x.RouteGroup = "x/y" },
		"imputed":      func(x *Telemetry) { x.Imputed = []string{"bandwidth_mbps"} },
		"negative rel": func(x *Telemetry) { x.Reliability = -0.1 },
	}
	for name, mutate := range bad {
		x := goodTelemetry()
		mutate(&x)
		if err := x.Validate(); err == nil {
			t.Errorf("%s: accepted %+v", name, x)
		}
	}
}

func TestTelemetryJSONHasTheSchemaFieldNames(t *testing.T) {
	b, _ := json.Marshal(goodTelemetry())
	s := string(b)
	for _, f := range []string{`"link_id":"lk-1"`, `"seq":3`, `"ts_ms":1000`, `"latency_ms":12`, `"bandwidth_mbps":95`,
		`"packet_loss":0.01`, `"reliability":0.99`, `"profile":"internet"`} {
		if !strings.Contains(s, f) {
			t.Errorf("%s missing in %s", f, s)
		}
	}
	if strings.Contains(s, "route_group") || strings.Contains(s, "imputed") {
		t.Errorf("empty optional fields must be left out: %s", s)
	}
}
