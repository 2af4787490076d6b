package bench

import (
	"math"
	"slices"
	"time"
)

// Summary condenses one contender's samples. Medians and tails, not means,
// lead: these machines are shared and noisy, and a mean hides both.
type Summary struct {
	N    int           `json:"n"`
	Min  time.Duration `json:"min_ns"`
	P25  time.Duration `json:"p25_ns"`
	P50  time.Duration `json:"p50_ns"`
	P75  time.Duration `json:"p75_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	Max  time.Duration `json:"max_ns"`
	Mean time.Duration `json:"mean_ns"`
}

// Quantile returns the q-quantile (0 ≤ q ≤ 1) of sorted samples, linearly
// interpolated between the two nearest ranks, so that small samples (QEMU
// gets only a few dozen) do not snap to one neighbour. Zero for no samples.
func Quantile(sorted []time.Duration, q float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	q = math.Max(0, math.Min(1, q))
	pos := q * float64(n-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, n-1)
	frac := pos - float64(lo)
	return sorted[lo] + time.Duration(math.Round(frac*float64(sorted[hi]-sorted[lo])))
}

// Summarize sorts a copy of samples and summarizes it.
func Summarize(samples []time.Duration) Summary {
	s := slices.Clone(samples)
	slices.Sort(s)
	if len(s) == 0 {
		return Summary{}
	}
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return Summary{
		N: len(s), Min: s[0], Max: s[len(s)-1], Mean: sum / time.Duration(len(s)),
		P25: Quantile(s, 0.25), P50: Quantile(s, 0.50), P75: Quantile(s, 0.75),
		P90: Quantile(s, 0.90), P99: Quantile(s, 0.99),
	}
}

// Ratio is how many times faster a is than b (b/a): 2 means a takes half
// b's time. NaN when either is missing, so a skipped contender never shows
// as an infinitely good or bad ratio.
func Ratio(a, b time.Duration) float64 {
	if a <= 0 || b <= 0 {
		return math.NaN()
	}
	return float64(b) / float64(a)
}
