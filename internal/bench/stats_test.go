package bench

import (
	"math"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	s := []time.Duration{10, 20, 30, 40, 50}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0, 10}, {0.25, 20}, {0.5, 30}, {0.75, 40}, {1, 50}, {0.1, 14}, {0.99, 50}, {-1, 10}, {2, 50}} {
		if got := Quantile(s, c.q); got != c.want {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := Quantile([]time.Duration{7}, 0.99); got != 7 {
		t.Errorf("single sample: %v", got)
	}
	if got := Quantile(nil, 0.5); got != 0 {
		t.Errorf("no samples: %v", got)
	}
	// Interpolation between ranks: the median of an even count is the
	// midpoint, not one neighbour.
	if got := Quantile([]time.Duration{100, 200}, 0.5); got != 150 {
		t.Errorf("median of two = %v", got)
	}
}

func TestSummarizeDoesNotReorderInput(t *testing.T) {
	in := []time.Duration{5, 1, 4, 2, 3}
	s := Summarize(in)
	if s.N != 5 || s.Min != 1 || s.Max != 5 || s.P50 != 3 || s.Mean != 3 || s.P25 != 2 || s.P75 != 4 {
		t.Fatalf("%+v", s)
	}
	if in[0] != 5 || in[4] != 3 {
		t.Fatalf("input reordered: %v", in)
	}
	if (Summarize(nil) != Summary{}) {
		t.Fatal("empty summary not zero")
	}
}

func TestRatio(t *testing.T) {
	if got := Ratio(100*time.Microsecond, 500*time.Microsecond); got != 5 {
		t.Errorf("Ratio = %v, want 5", got)
	}
	if got := Ratio(2, 1); got != 0.5 {
		t.Errorf("Ratio = %v, want 0.5", got)
	}
	for _, c := range [][2]time.Duration{{0, 1}, {1, 0}, {-1, 5}} {
		if got := Ratio(c[0], c[1]); !math.IsNaN(got) {
			t.Errorf("Ratio(%v, %v) = %v, want NaN for a missing figure", c[0], c[1], got)
		}
	}
	b, err := jsonFloat(math.NaN()).MarshalJSON()
	if err != nil || string(b) != "null" {
		t.Errorf("NaN encodes as %s, %v", b, err)
	}
}
