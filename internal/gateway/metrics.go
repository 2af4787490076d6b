package gateway

import (
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
	}
	m.reg.MustRegister(m.requests, m.latency, m.prepare, m.coldStart, m.run, m.exits,
		m.poolHits, m.poolMisses, m.poolReady, m.live, m.queue, m.bytesIn, m.bytesOut,
		m.restored, m.restoreErrors, m.appInfo, m.unsupported,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// setAppInfo makes app's info series the only one: a redeploy may change
// its kind or isolation mode.
func (m *metrics) setAppInfo(app, kind, isolation string) {
	m.appInfo.DeletePartialMatch(prometheus.Labels{"app": app})
	m.appInfo.WithLabelValues(app, kind, isolation).Set(1)
}

// forgetApp drops every series of a removed app, so that removed apps do
// not accumulate in the scrape.
func (m *metrics) forgetApp(app string) {
	l := prometheus.Labels{"app": app}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.requests, m.latency, m.run, m.exits, m.poolHits, m.poolMisses, m.poolReady,
		m.queue, m.bytesIn, m.bytesOut, m.restored, m.restoreErrors, m.appInfo, m.unsupported,
	} {
		v.DeletePartialMatch(l)
	}
}

// histogram is a small latency histogram for the status page.
type histogram struct {
	mu     sync.Mutex
	counts []int64 // bucket i: < histBounds[i]; last: everything above
}

var histBounds = []time.Duration{100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 100 * time.Millisecond, time.Second}

func newHistogram() *histogram { return &histogram{counts: make([]int64, len(histBounds)+1)} }

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(histBounds) && d >= histBounds[i] {
		i++
	}
	h.mu.Lock()
	h.counts[i]++
	h.mu.Unlock()
}

func (h *histogram) snapshot() []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int64(nil), h.counts...)
}
