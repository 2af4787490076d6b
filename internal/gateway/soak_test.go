package gateway

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine/machinetest"
	"github.com/dust-run/dust/internal/store"
)

// TestSoak runs a mixed load of good and hostile apps for $DUST_SOAK (for
// example 60s; `make soak` runs 10m) at concurrency 64 and checks at the
// end: every request got its app's expected status, and file descriptors,
// threads, goroutines and RSS are back within a bound of where they
// started. Skipped when DUST_SOAK is unset.
func TestSoak(t *testing.T) {
	d := os.Getenv("DUST_SOAK")
	if d == "" {
		t.Skip("set DUST_SOAK=60s (or run `make soak`) to soak the gateway")
	}
	dur, err := time.ParseDuration(d)
	if err != nil {
		t.Fatalf("DUST_SOAK=%q: %v", d, err)
	}
	ts := start(t, t.TempDir())
	type app struct {
		name, example string
		set           store.Settings
		status        int
	}
	apps := []app{
		{"hello", "hello", store.Settings{}, 200},
		{"echo", "echo", store.Settings{}, 200},
		{"sha256", "sha256", store.Settings{}, 200},
		{"crash", "crash", store.Settings{}, 502},
		{"illegal", "illegal", store.Settings{}, 502},
		{"loop", "loop", store.Settings{Timeout: 50 * time.Millisecond}, 504},
		{"oom", "oom", store.Settings{Memory: 4 << 20}, 502},
		// Header sent, then the deadline cuts the stream: a truncated 200.
		{"flood", "flood", store.Settings{Timeout: 100 * time.Millisecond}, 200},
		{"logflood", "logflood", store.Settings{}, 502},
		{"badptr", "badptr", store.Settings{}, 502},
	}
	for i := range apps {
		apps[i].set.Route = "/" + apps[i].name
		apps[i].set.MaxConcurrency = 32
		ts.deploy(t, apps[i].name, example(t, apps[i].example), apps[i].set)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	do := func(a app) (int, time.Duration, error) {
		t0 := time.Now()
		resp, err := client.Post(ts.url+a.set.Route+"/x?soak=1", "text/plain", strings.NewReader("soak body"))
		if err != nil {
			return 0, 0, err
		}
		// A cut connection shows as a read error after the status: that is
		// the expected end of a stream whose machine failed mid-way.
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil && a.name != "flood" {
			return resp.StatusCode, 0, err
		}
		return resp.StatusCode, time.Since(t0), nil
	}
	// Warm up, then take the baseline.
	for _, a := range apps {
		do(a)
	}
	fds0, threads0 := machinetest.HostUsage(t)
	g0 := runtime.NumGoroutine()
	rss0 := rssKiB(t)
	ready0 := ts.readyMachines()

	var mu sync.Mutex
	counts := map[string]int{}
	var good []time.Duration
	var wrong []string
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; time.Now().Before(deadline); i++ {
				a := apps[i%len(apps)]
				code, lat, err := do(a)
				mu.Lock()
				key := fmt.Sprintf("%s %d", a.name, code)
				if err != nil {
					key = a.name + " error"
				}
				counts[key]++
				// Under this load the flood may not reach its first
				// flush before its 100 ms deadline: 504 is right then.
				if err != nil || (code != a.status && !(a.name == "flood" && code == 504)) {
					if len(wrong) < 20 {
						wrong = append(wrong, fmt.Sprintf("%s: %d %v", a.name, code, err))
					}
				} else if a.status == 200 && (a.name == "hello" || a.name == "echo") {
					good = append(good, lat)
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	keys := make([]string, 0, len(counts))
	total := 0
	for k, n := range counts {
		keys = append(keys, k)
		total += n
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("%-16s %d", k, counts[k])
	}
	if len(wrong) > 0 {
		t.Errorf("unexpected answers (first %d): %v", len(wrong), wrong)
	}
	l := machinetest.Latencies(good)
	sortDurations(l)
	if len(l) > 0 {
		t.Logf("%d requests in %v (%.0f/s); well-behaved apps: p50 %.0f µs, p99 %.0f µs", total, dur, float64(total)/dur.Seconds(), l.Quantile(0.5), l.Quantile(0.99))
	}

	// Resources: ready machines legitimately hold a kernel thread each (KVM
	// gives every VM that has run one), so they are allowed for.
	waitIdle(ts, g0)
	fds1, threads1 := machinetest.HostUsage(t)
	ready1 := ts.readyMachines()
	g1 := runtime.NumGoroutine()
	rss1 := rssKiB(t)
	t.Logf("fds %d→%d, threads %d→%d (ready machines %d→%d), goroutines %d→%d, RSS %d→%d MiB",
		fds0, fds1, threads0, threads1, ready0, ready1, g0, g1, rss0>>10, rss1>>10)
	if fds1 > fds0+2*(ready1-ready0)+32 {
		t.Errorf("file descriptors grew from %d to %d", fds0, fds1)
	}
	// The Go runtime keeps the OS threads it started for machines blocked
	// in KVM_RUN (at most one per concurrent request).
	if threads1 > threads0+(ready1-ready0)+64+16 {
		t.Errorf("threads grew from %d to %d", threads0, threads1)
	}
	// hvt keeps up to 64 idle vCPU worker goroutines, each locked to its
	// thread, for the next requests.
	if g1 > g0+64+32 {
		t.Errorf("goroutines grew from %d to %d", g0, g1)
	}
	if rss1 > rss0+256<<10 {
		t.Errorf("RSS grew from %d to %d MiB", rss0>>10, rss1>>10)
	}
}

func sortDurations(l []time.Duration) { sort.Slice(l, func(i, j int) bool { return l[i] < l[j] }) }

func (s *Server) readyMachines() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, a := range s.apps {
		n += a.pool.Stats().Ready
	}
	return n
}

// waitIdle waits (bounded) until the load's goroutines and connections are
// gone: keep-alive connections close when the client's idle ones do.
func waitIdle(ts *testServer, g0 int) {
	http.DefaultClient.CloseIdleConnections()
	end := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > g0+32 && time.Now().Before(end) {
		runtime.Gosched()
	}
}

func rssKiB(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var n int64
			fmt.Sscan(v, &n)
			return n
		}
	}
	return 0
}
