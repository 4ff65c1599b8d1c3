package bwp

import (
	"errors"
	"strings"
	"testing"
)

const v2 = `{"schema_version":2,"link_id":"lk-1","seq":12,"ts_ms":1000,"predicted_bandwidth_mbps":10.0,"action":4,"allocation_pct":50,"reference_bandwidth_mbps":20.0,"allocated_bandwidth_mbps":10.0,"model_version":"m7","decided_at_ms":1050,"forecast":{"1":{"p10":9.0,"p50":10.0,"p90":11.0},"10":{"p10":8.0,"p50":10.0,"p90":12.0}},"safe_bandwidth_mbps":9.0,"forecast_source":"lstm","policy":"ddqn","profile":"internet"}`

const v1 = `{"schema_version":1,"link_id":"lk-1","seq":3,"ts_ms":1,"predicted_bandwidth_mbps":5,"action":9,"allocation_pct":100,"reference_bandwidth_mbps":6,"allocated_bandwidth_mbps":6,"model_version":"m1","decided_at_ms":2}`

func v3(compression string) string {
	return strings.Replace(strings.Replace(v2, `"schema_version":2`, `"schema_version":3`, 1),
		`"policy":"ddqn"`, `"policy":"ddqn","compression":`+compression, 1)
}

func TestDecodeVersions(t *testing.T) {
	d, err := DecodeDecision([]byte(v1))
	if err != nil || d.SchemaVersion != 1 || d.Forecast != nil || d.SafeOrPredicted() != 5 || d.AllocationPct != 100 {
		t.Fatalf("v1: %+v %v", d, err)
	}
	d, err = DecodeDecision([]byte(v2))
	if err != nil || d.LinkID != "lk-1" || d.Seq != 12 || d.Profile != "internet" || d.SafeOrPredicted() != 9 {
		t.Fatalf("v2: %+v %v", d, err)
	}
	if hs := d.Forecast.Horizons(); len(hs) != 2 || hs[0] != 1 || hs[1] != 10 || d.Forecast[10].P90 != 12 {
		t.Fatalf("v2 forecast: %+v", d.Forecast)
	}
	d, err = DecodeDecision([]byte(v3(`{"codec":"zstd","level":3}`)))
	if err != nil || d.Compression == nil || d.Compression.Codec != "zstd" || *d.Compression.Level != 3 {
		t.Fatalf("v3: %+v %v", d.Compression, err)
	}
	d, err = DecodeDecision([]byte(v3(`{"codec":"none"}`)))
	if err != nil || d.Compression.Level != nil {
		t.Fatalf("v3 none: %+v %v", d.Compression, err)
	}
}

func TestDecodeInvalid(t *testing.T) {
	cases := map[string]string{
		"":                     "invalid_json",
		`{"schema_version":2`:  "invalid_json",
		`[1,2]`:                "not_object",
		`{"schema_version":7}`: "unsupported_version",
		strings.Replace(v2, `"schema_version":2`, `"schema_version":1`, 1):              "unknown_field",
		strings.Replace(v2, `"policy":"ddqn",`, ``, 1):                                  "missing_field",
		strings.Replace(v2, `"seq":12`, `"seq":"12"`, 1):                                "wrong_type",
		strings.Replace(v2, `"seq":12`, `"seq":1.5`, 1):                                 "wrong_type",
		strings.Replace(v2, `"seq":12`, `"seq":-1`, 1):                                  "out_of_range",
		strings.Replace(v2, `"action":4`, `"action":10`, 1):                             "out_of_range",
		strings.Replace(v2, `"allocation_pct":50`, `"allocation_pct":55`, 1):            "out_of_range",
		strings.Replace(v2, `"link_id":"lk-1"`, `"link_id":"a b"`, 1):                   "out_of_range",
		strings.Replace(v2, `"profile":"internet"`, `"profile":"moon"`, 1):              "out_of_range",
		strings.Replace(v2, `"policy":"ddqn"`, `"policy":"magic"`, 1):                   "out_of_range",
		strings.Replace(v2, `"p10":9.0,"p50":10.0`, `"p10":11.0,"p50":10.0`, 1):         "out_of_range",
		strings.Replace(v2, `"1":{"p10":9.0`, `"01":{"p10":9.0`, 1):                     "out_of_range",
		strings.Replace(v2, `"1":{"p10":9.0`, `"2":{"p10":9.0`, 1):                      "missing_field",
		strings.Replace(v2, `"model_version":"m7"`, `"model_version":null`, 1):          "wrong_type",
		strings.Replace(v2, `"safe_bandwidth_mbps":9.0`, `"safe_bandwidth_mbps":-1`, 1): "out_of_range",
		strings.Replace(v2, `"schema_version":2`, `"schema_version":3`, 1):              "missing_field",
		v3(`{"level":3}`):                      "out_of_range",
		v3(`{"codec":"gzip"}`):                 "out_of_range",
		v3(`{"codec":"gzip","level":3}`):       "out_of_range",
		v3(`{"codec":"zstd"}`):                 "out_of_range",
		v3(`{"codec":"zstd","level":0}`):       "out_of_range",
		v3(`{"codec":"zstd","level":99}`):      "out_of_range",
		v3(`{"codec":"zstd","level":3,"x":1}`): "out_of_range",
		v3(`{"codec":"none","level":3}`):       "out_of_range",
		v3(`{"codec":"zstd","level":2.5}`):     "wrong_type",
		v3(`"zstd"`):                           "wrong_type",
	}
	for raw, code := range cases {
		_, err := DecodeDecision([]byte(raw))
		var de *DecodeError
		if !errors.As(err, &de) || de.Code != code {
			t.Errorf("%.60s...: want code %s, got %v", raw, code, err)
		}
	}
}
