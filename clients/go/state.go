package bwp

// Window is the number of states one prediction needs (oldest first).
const Window = 10

// NetworkState is one measured state of a link, as the DWCP design names it.
type NetworkState struct {
	Latency     float64 // round-trip latency, ms (>= 0)
	Bandwidth   float64 // measured bandwidth, Mbit/s (>= 0)
	PacketLoss  float64 // loss ratio in [0, 1]
	Reliability float64 // probe success ratio in [0, 1]
}

// BandwidthPredictor is the original DWCP interface of a bandwidth predictor.
type BandwidthPredictor interface {
	// PredictBandwidth forecasts the next step's bandwidth (Mbit/s) from a sequence of
	// states, oldest first.
	PredictBandwidth(sequence []NetworkState) float64
	// DecideAllocation returns the share of the link to schedule, in percent (10..100).
	DecideAllocation(state NetworkState) int
}

// wireState is the JSON form of a NetworkState in the HTTP API.
type wireState struct {
	LatencyMs     float64 `json:"latency_ms"`
	BandwidthMbps float64 `json:"bandwidth_mbps"`
	PacketLoss    float64 `json:"packet_loss"`
	Reliability   float64 `json:"reliability"`
}

func toWire(window []NetworkState) []wireState {
	out := make([]wireState, len(window))
	for i, s := range window {
		out[i] = wireState{s.Latency, s.Bandwidth, s.PacketLoss, s.Reliability}
	}
	return out
}
