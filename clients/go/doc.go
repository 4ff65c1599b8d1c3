// Package bwp is the Go client of the bwp bandwidth predictor.
//
// It has three parts:
//
//   - [Client]: the HTTP client of `bwp serve` (POST /v1/predict, GET /v1/model,
//     GET /v2/health/ready). It implements the DWCP [BandwidthPredictor] interface.
//   - [Consumer]: a reader of the decisions topic (bwp.decisions) on sarama, in
//     consumer-group mode (Apache Kafka) or explicit-partition mode (the embedded
//     tansu broker, tests). It yields typed [Decision] values (schema v1, v2, v3),
//     drops repeats by (link_id, seq) and reports invalid records without stopping.
//   - [TokenBucket]: a rate limiter a DWCP node sets to a decision's
//     allocated_bandwidth_mbps.
//
// The wire contract is docs/wire.md in the bwp repository.
package bwp
