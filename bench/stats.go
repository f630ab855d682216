package main

import (
	"math"
	"slices"
	"time"
)

// Stats summarises samples of one measurement, in milliseconds.
type Stats struct {
	N   int     `json:"n"`
	Min float64 `json:"min_ms"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// summarize returns the nearest-rank percentiles of d. With few samples the
// high percentiles equal the maximum.
func summarize(d []time.Duration) Stats {
	if len(d) == 0 {
		return Stats{}
	}
	ms := make([]float64, len(d))
	for i, x := range d {
		ms[i] = float64(x) / float64(time.Millisecond)
	}
	slices.Sort(ms)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(ms)))) - 1
		return ms[max(0, min(i, len(ms)-1))]
	}
	return Stats{N: len(ms), Min: ms[0], P50: rank(50), P90: rank(90), P99: rank(99), Max: ms[len(ms)-1]}
}

// ratio returns a/b, or 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// sum adds the samples of equal-length series index by index.
func sum(series ...[]time.Duration) []time.Duration {
	if len(series) == 0 {
		return nil
	}
	out := slices.Clone(series[0])
	for _, s := range series[1:] {
		for i := range min(len(out), len(s)) {
			out[i] += s[i]
		}
	}
	return out
}
