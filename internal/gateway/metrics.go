package gateway

import (
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus metrics, on their own registry so
// that tests can run several servers in one process.
type metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	prepare    *prometheus.HistogramVec
	coldStart  *prometheus.HistogramVec
	run        *prometheus.HistogramVec
	exits      *prometheus.CounterVec
	poolHits   *prometheus.CounterVec
	poolMisses *prometheus.CounterVec
	poolReady  *prometheus.GaugeVec
	live       prometheus.Gauge
	queue      *prometheus.GaugeVec
	bytesIn    *prometheus.CounterVec
	bytesOut   *prometheus.CounterVec

	restored      *prometheus.CounterVec
	restoreErrors *prometheus.CounterVec
	appInfo       *prometheus.GaugeVec
	unsupported   *prometheus.CounterVec
	memory        *prometheus.HistogramVec

	// history is each live app's recent traffic, for the status page.
	history *trafficHistory
}

func newMetrics() *metrics {
	buckets := prometheus.ExponentialBuckets(50e-6, 2, 18) // 50 µs .. 6.5 s
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_requests_total",
			Help: "Requests by app and HTTP status."}, []string{"app", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "dust_request_duration_seconds",
			Help: "End-to-end request latency in the gateway.", Buckets: buckets}, []string{"app"}),
		prepare: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "dust_image_prepare_seconds",
			Help: "Time to validate and prepare an image (template, compiled module).", Buckets: buckets}, []string{"kind"}),
		coldStart: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "dust_cold_start_seconds",
			Help: "Time to a machine when the pool had none ready (machine created on the request path).", Buckets: buckets}, []string{"kind"}),
		run: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "dust_machine_run_seconds",
			Help: "Machine run time per request.", Buckets: buckets}, []string{"app"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_vm_exits_total",
			Help: "VM exits (hvt) or host calls (wasm)."}, []string{"app"}),
		poolHits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_pool_hits_total",
			Help: "Requests that found a prepared machine."}, []string{"app"}),
		poolMisses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_pool_misses_total",
			Help: "Requests that had to create their machine."}, []string{"app"}),
		poolReady: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "dust_pool_ready",
			Help: "Prepared, never-used machines waiting."}, []string{"app"}),
		live: prometheus.NewGauge(prometheus.GaugeOpts{Name: "dust_live_machines",
			Help: "Machines serving a request now."}),
		queue: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "dust_queue_depth",
			Help: "Requests waiting for a machine slot."}, []string{"app"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_request_bytes_total",
			Help: "Request body bytes read by machines."}, []string{"app"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_response_bytes_total",
			Help: "Response body bytes sent to clients."}, []string{"app"}),
		restored: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_machines_restored_total",
			Help: "Machines restored to their template state after a request and made ready again (restore isolation)."}, []string{"app"}),
		restoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_restore_errors_total",
			Help: "Machines whose restore failed; they were destroyed instead."}, []string{"app"}),
		appInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "dust_app_info",
			Help: "1 per live app; isolation is the mode its machines actually get (restore or fresh)."}, []string{"app", "kind", "isolation"}),
		unsupported: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_syscalls_unsupported_total",
			Help: "System calls of Linux guests answered ENOSYS or refused with EPERM, by name (unknown numbers as \"unknown\")."}, []string{"app", "call"}),
		// 64 KiB .. 1 GiB: a small wasm module touches a few hundred KiB,
		// nothing may touch more than its memory limit.
		memory: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "dust_machine_memory_bytes",
			Help:    "Memory a machine touched serving one request, whatever its outcome (kinds that report it: wasm).",
			Buckets: prometheus.ExponentialBuckets(64<<10, 2, 15)}, []string{"app"}),
		history: newTrafficHistory(),
	}
	m.reg.MustRegister(m.requests, m.latency, m.prepare, m.coldStart, m.run, m.exits,
		m.poolHits, m.poolMisses, m.poolReady, m.live, m.queue, m.bytesIn, m.bytesOut,
		m.restored, m.restoreErrors, m.appInfo, m.unsupported, m.memory,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// setAppInfo makes app's info series the only one: a redeploy may change
// its kind or isolation mode.
func (m *metrics) setAppInfo(app, kind, isolation string) {
	m.appInfo.DeletePartialMatch(prometheus.Labels{"app": app})
	m.appInfo.WithLabelValues(app, kind, isolation).Set(1)
	m.history.add(app)
}

// forgetApp drops every series of a removed app, so that removed apps do
// not accumulate in the scrape.
func (m *metrics) forgetApp(app string) {
	l := prometheus.Labels{"app": app}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.requests, m.latency, m.run, m.exits, m.poolHits, m.poolMisses, m.poolReady,
		m.queue, m.bytesIn, m.bytesOut, m.restored, m.restoreErrors, m.appInfo, m.unsupported, m.memory,
	} {
		v.DeletePartialMatch(l)
	}
	m.history.drop(app)
}

// observe counts one answered request of app (a live app: the requests no
// app matched are counted under app "" by the caller).
func (m *metrics) observe(app string, status int, elapsed time.Duration, sv served) {
	m.requests.WithLabelValues(app, strconv.Itoa(status)).Inc()
	m.latency.WithLabelValues(app).Observe(elapsed.Seconds())
	if sv.memory > 0 {
		m.memory.WithLabelValues(app).Observe(float64(sv.memory))
	}
	m.history.record(app, status, sv.use, time.Now())
}

// histogram is a small latency histogram for the status page, kept
// separately for requests served by cold and by warm machines.
type histogram struct {
	mu   sync.Mutex
	cold []int64 // bucket i: < histBounds[i]; last: everything above
	warm []int64
	none []int64 // answered without a machine
}

var histBounds = []time.Duration{100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 100 * time.Millisecond, time.Second}

func newHistogram() *histogram {
	n := len(histBounds) + 1
	return &histogram{cold: make([]int64, n), warm: make([]int64, n), none: make([]int64, n)}
}

func (h *histogram) observe(d time.Duration, use machineUse) {
	i := 0
	for i < len(histBounds) && d >= histBounds[i] {
		i++
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch use {
	case coldMachine:
		h.cold[i]++
	case warmMachine:
		h.warm[i]++
	default:
		h.none[i]++
	}
}

// snapshot returns every request's counts.
func (h *histogram) snapshot() []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]int64, len(h.cold))
	for i := range out {
		out[i] = h.cold[i] + h.warm[i] + h.none[i]
	}
	return out
}

// split returns the counts of the requests served by cold and by warm machines.
func (h *histogram) split() (cold, warm []int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.cold), slices.Clone(h.warm)
}

// bucketLabel names histogram bucket i as the status page labels it.
func bucketLabel(i int) string {
	if i < len(histBounds) {
		return "<" + histBounds[i].String()
	}
	return ">=" + histBounds[len(histBounds)-1].String()
}

// bucketLabels are the labels of every bucket.
func bucketLabels() []string {
	out := make([]string, len(histBounds)+1)
	for i := range out {
		out[i] = bucketLabel(i)
	}
	return out
}

// quantile is the bucket holding quantile q (0 < q <= 1) of counts, as its
// label ("" when counts are all zero). A bucket, not a figure: the
// histogram knows no more, and an interpolated "0.73ms" would claim to.
func quantile(counts []int64, q float64) string {
	var total int64
	for _, n := range counts {
		total += n
	}
	if total == 0 {
		return ""
	}
	// The smallest bucket whose cumulative count reaches q of the total,
	// ceil(q*total) requests at or below it (the epsilon keeps 0.99*100
	// from rounding up to 100).
	need := max(int64(math.Ceil(q*float64(total)-1e-9)), 1)
	var seen int64
	for i, n := range counts {
		seen += n
		if seen >= need {
			return bucketLabel(i)
		}
	}
	return bucketLabel(len(counts) - 1)
}

// MachineFigures are the requests one kind of machine (cold or warm)
// served for the current version.
type MachineFigures struct {
	Requests  int64   `json:"requests"`
	P50       string  `json:"p50,omitempty"`
	P99       string  `json:"p99,omitempty"`
	Histogram []int64 `json:"latency_histogram"`
}

func machineFigures(counts []int64) MachineFigures {
	f := MachineFigures{P50: quantile(counts, 0.5), P99: quantile(counts, 0.99), Histogram: counts}
	for _, n := range counts {
		f.Requests += n
	}
	return f
}

// StatusApp is one app in GET /v1/status: its status and the figures the
// status page charts. (GET /v1/apps has the status only: the series are
// for the page.)
type StatusApp struct {
	AppStatus
	LiveFigures
}

// LiveFigures are what the status page charts beside an app's settings:
// tail latency, cold against warm machines, and the last minutes' traffic.
type LiveFigures struct {
	P99 string `json:"p99,omitempty"`
	// Cold: machines created on the request path (the pool had none
	// ready); Warm: ready machines from the pool, pre-created or restored.
	Cold    MachineFigures `json:"cold"`
	Warm    MachineFigures `json:"warm"`
	Traffic TrafficView    `json:"traffic"`
}

func (m *metrics) liveFigures(a *liveApp, all []int64, now time.Time) LiveFigures {
	cold, warm := a.hist.split()
	return LiveFigures{P99: quantile(all, 0.99), Cold: machineFigures(cold), Warm: machineFigures(warm),
		Traffic: m.history.view(a.name, now)}
}

// writeCompactJSON answers 200 with v unindented: GET /v1/status is polled
// by the status page, and its series, indented one number a line, would
// make it four times the size.
func writeCompactJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
