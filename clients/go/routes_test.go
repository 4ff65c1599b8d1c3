package bwp

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/Shopify/sarama"
)

const ranking = `{"schema_version":1,"route_group":"g1","published_at_ms":5000,"reason":"order",` +
	`"score_rule":"p10(h) * (1 - packet_loss)","score_horizon":10,"members":[` +
	`{"rank":1,"link_id":"a","score":90.5,"horizon":10,"seq":40,"ts_ms":4900,"age_ms":100,"latency_ms":12,"packet_loss":0.01,"forecast":{"1":{"p10":80,"p50":95,"p90":100},"10":{"p10":85,"p50":92,"p90":99}}},` +
	`{"rank":2,"link_id":"b","score":40,"horizon":1,"seq":7,"ts_ms":4000,"age_ms":1000,"latency_ms":30,"packet_loss":0,"forecast":{"1":{"p10":40,"p50":50,"p90":60}}}]}`

func TestDecodeRanking(t *testing.T) {
	r, err := DecodeRanking([]byte(ranking))
	if err != nil {
		t.Fatal(err)
	}
	best, ok := r.Best()
	if !ok || best.LinkID != "a" || best.Forecast[10].P50 != 92 || len(r.Members) != 2 || r.ScoreHorizon != 10 {
		t.Fatalf("%+v", r)
	}
	cases := map[string]string{
		"{":  "invalid_json",
		"[]": "not_object",
		strings.Replace(ranking, `"schema_version":1`, `"schema_version":2`, 1):     "unsupported_version",
		strings.Replace(ranking, `"reason":"order"`, `"reason":"magic"`, 1):         "out_of_range",
		strings.Replace(ranking, `"route_group":"g1"`, `"route_group":"g 1"`, 1):    "out_of_range",
		strings.Replace(ranking, `"score_horizon":10`, `"score_horizon":0`, 1):      "out_of_range",
		strings.Replace(ranking, `"rank":2`, `"rank":3`, 1):                         "out_of_range",
		strings.Replace(ranking, `"packet_loss":0,`, `"packet_loss":2,`, 1):         "out_of_range",
		strings.Replace(ranking, `"p10":40,"p50":50`, `"p10":55,"p50":50`, 1):       "out_of_range",
		strings.Replace(ranking, `"seq":7,`, `"seq":"7",`, 1):                       "wrong_type",
		strings.Replace(ranking, `"age_ms":100,`, ``, 1):                            "missing_field",
		strings.Replace(ranking, `"reason":"order",`, `"reason":"order","x":1,`, 1): "unknown_field",
		strings.Replace(ranking, `"age_ms":100,`, `"age_ms":100,"y":1,`, 1):         "unknown_field",
	}
	for raw, code := range cases {
		_, err := DecodeRanking([]byte(raw))
		var de *DecodeError
		if !errors.As(err, &de) || de.Code != code || !strings.Contains(err.Error(), "invalid ranking") {
			t.Errorf("%.70s...: want code %s, got %v", raw, code, err)
		}
	}
}

// A group's ranking is delivered only when newer than the last delivered; an invalid one is reported.
func TestRoutesReaderDeliversNewerRankingsOnce(t *testing.T) {
	c := testReader(rankingCodec)
	got := make(chan Ranking, 4)
	go func() {
		for r := range c.out {
			got <- r
		}
	}()
	older := strings.Replace(ranking, `"published_at_ms":5000`, `"published_at_ms":4000`, 1)
	newer := strings.Replace(ranking, `"published_at_ms":5000`, `"published_at_ms":6000`, 1)
	for i, v := range []string{ranking, ranking, older, newer, "{"} {
		if !c.handle(context.Background(), &sarama.ConsumerMessage{Partition: 0, Offset: int64(i), Value: []byte(v)}) {
			t.Fatalf("message %d stopped the reader", i)
		}
	}
	if a, b := <-got, <-got; a.PublishedAtMs != 5000 || b.PublishedAtMs != 6000 || b.Offset != 3 {
		t.Fatalf("delivered %d then %d (offset %d)", a.PublishedAtMs, b.PublishedAtMs, b.Offset)
	}
	s := c.Stats()
	if s.Delivered != 2 || s.Duplicates != 2 || s.Invalid != 1 || c.Offsets()[0] != 5 {
		t.Fatalf("stats %+v offsets %v", s, c.Offsets())
	}
	if err := <-c.errs; !strings.Contains(err.Error(), "invalid ranking at partition 0 offset 4") {
		t.Fatalf("reported %v", err)
	}
}
