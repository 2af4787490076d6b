package gateway

import (
	"testing"
	"time"
)

// at is a time inside interval n (counted from the Unix epoch), off into it.
func at(n int64, off time.Duration) time.Time {
	return time.Unix(0, n*int64(historyInterval)+int64(off))
}

func TestHistoryCountsPerInterval(t *testing.T) {
	h := newTrafficHistory()
	h.add("a")
	const base = 1_000_000
	// Interval base: 3 requests (one 502 on a cold machine); base+2: one
	// 404 answered without a machine; base+3 (in progress): two warm.
	h.record("a", 200, warmMachine, at(base, time.Second))
	h.record("a", 200, warmMachine, at(base, 2*time.Second))
	h.record("a", 502, coldMachine, at(base, 9*time.Second))
	h.record("a", 404, noMachine, at(base+2, 0))
	h.record("a", 200, warmMachine, at(base+3, time.Second))
	h.record("a", 503, warmMachine, at(base+3, 2*time.Second))

	v := h.view("a", at(base+3, 4*time.Second))
	if v.IntervalSeconds != 10 || len(v.Requests) != historyLen || len(v.Errors) != historyLen || len(v.Cold) != historyLen || len(v.Warm) != historyLen {
		t.Fatalf("shape: interval %d, lengths %d %d %d %d", v.IntervalSeconds, len(v.Requests), len(v.Errors), len(v.Cold), len(v.Warm))
	}
	if want := at(base+4, 0).UTC(); !v.End.Equal(want) {
		t.Errorf("end %v, want %v", v.End, want)
	}
	last := historyLen - 1
	type row struct{ req, errs, cold, warm int64 }
	for i, want := range map[int]row{last - 3: {3, 1, 1, 2}, last - 2: {}, last - 1: {1, 0, 0, 0}, last: {2, 1, 0, 2}} {
		got := row{v.Requests[i], v.Errors[i], v.Cold[i], v.Warm[i]}
		if got != want {
			t.Errorf("interval %d: got %+v, want %+v", i-last, got, want)
		}
	}
	var total int64
	for _, n := range v.Requests {
		total += n
	}
	if total != 6 {
		t.Errorf("%d requests in the view, want 6", total)
	}
	// The rate window: the interval in progress (4 s so far) and the five
	// whole ones before it, 54 s holding all 6 requests and 2 errors.
	if want := 6 / 54.0; !near(v.Rate, want) {
		t.Errorf("rate %v, want %v", v.Rate, want)
	}
	if want := 2 / 54.0; !near(v.ErrorRate, want) {
		t.Errorf("error rate %v, want %v", v.ErrorRate, want)
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// The ring holds historyLen intervals: older ones, and slots left from an
// earlier lap, read as zeros.
func TestHistoryForgetsOldIntervals(t *testing.T) {
	h := newTrafficHistory()
	h.add("a")
	const base = 5_000_000
	h.record("a", 200, warmMachine, at(base, 0))
	h.record("a", 200, warmMachine, at(base+historyLen-1, 0))
	v := h.view("a", at(base+historyLen-1, 0))
	if v.Requests[0] != 1 || v.Requests[historyLen-1] != 1 {
		t.Fatalf("a full window: first %d, last %d, want 1 and 1", v.Requests[0], v.Requests[historyLen-1])
	}
	// One interval later the first has left the window.
	v = h.view("a", at(base+historyLen, 0))
	if v.Requests[historyLen-2] != 1 || sum(v.Requests) != 1 {
		t.Errorf("one interval on: %v", v.Requests)
	}
	// A lap later the slot of base is reused: the old count must not leak in.
	h.record("a", 500, coldMachine, at(base+historyLen, 0))
	v = h.view("a", at(base+historyLen, 0))
	if got := v.Requests[historyLen-1]; got != 1 || v.Errors[historyLen-1] != 1 {
		t.Errorf("reused slot: %d requests, %d errors, want 1 and 1", got, v.Errors[historyLen-1])
	}
	// Idle for longer than the window: nothing left, rates zero.
	v = h.view("a", at(base+10*historyLen, 0))
	if sum(v.Requests) != 0 || v.Rate != 0 || v.ErrorRate != 0 {
		t.Errorf("after a long idle: %v, rate %v", v.Requests, v.Rate)
	}
}

func sum(xs []int64) int64 {
	var n int64
	for _, x := range xs {
		n += x
	}
	return n
}

// Only live apps have a history; a removed app's is gone, and requests
// finishing after the removal do not bring it back.
func TestHistoryDroppedWithApp(t *testing.T) {
	m := newMetrics()
	now := time.Now()
	m.history.record("ghost", 200, warmMachine, now)
	if sum(m.history.view("ghost", now).Requests) != 0 || len(m.history.apps) != 0 {
		t.Fatal("a request of an app that was never live made a history")
	}
	m.setAppInfo("a", "hvt", "restore")
	m.observe("a", 200, time.Millisecond, served{use: warmMachine, memory: 1 << 20})
	if sum(m.history.view("a", time.Now()).Requests) != 1 {
		t.Fatal("observe did not reach the history")
	}
	// A redeploy keeps the history.
	m.setAppInfo("a", "hvt", "fresh")
	if sum(m.history.view("a", time.Now()).Requests) != 1 {
		t.Fatal("a redeploy lost the history")
	}
	m.forgetApp("a")
	m.observe("a", 200, time.Millisecond, served{use: warmMachine})
	if len(m.history.apps) != 0 || sum(m.history.view("a", time.Now()).Requests) != 0 {
		t.Error("the history of a removed app survived")
	}
}

func TestQuantileBuckets(t *testing.T) {
	counts := make([]int64, len(histBounds)+1)
	if quantile(counts, 0.5) != "" {
		t.Error("quantile of nothing is not empty")
	}
	counts[1] = 98 // <250µs
	counts[5] = 1  // <5ms
	counts[len(counts)-1] = 1
	for q, want := range map[float64]string{0.5: "<250µs", 0.98: "<250µs", 0.99: "<5ms", 1: ">=1s"} {
		if got := quantile(counts, q); got != want {
			t.Errorf("q%v = %q, want %q", q, got, want)
		}
	}
	h := newHistogram()
	h.observe(50*time.Microsecond, coldMachine)
	h.observe(2*time.Second, warmMachine)
	h.observe(time.Millisecond, noMachine)
	cold, warm := h.split()
	all := h.snapshot()
	if cold[0] != 1 || warm[len(warm)-1] != 1 || sum(cold) != 1 || sum(warm) != 1 || sum(all) != 3 || all[4] != 1 {
		t.Errorf("cold %v warm %v all %v", cold, warm, all)
	}
}
