package gateway

import (
	"sync"
	"time"
)

// The status page charts each app's traffic over the last minutes. The
// Prometheus counters cannot give that without a Prometheus server, so the
// gateway keeps a small ring of per-interval counters per app: fixed in
// size whatever the traffic, made when an app goes live and dropped when
// it is removed.
const (
	historyInterval = 10 * time.Second
	historyLen      = 90 // 15 minutes
	// rateWindow is what the "now" figures (rate, error rate) average over.
	rateWindow = time.Minute
)

// machineUse says what kind of machine served a request.
type machineUse uint8

const (
	noMachine   machineUse = iota // answered before a machine was taken (413, 503 at capacity...)
	warmMachine                   // a ready machine from the pool: pre-created or restored
	coldMachine                   // created on the request path: the pool had none ready
)

func (u machineUse) String() string {
	switch u {
	case warmMachine:
		return "warm"
	case coldMachine:
		return "cold"
	}
	return "none"
}

// served is what the request path learns about a request's machine, for
// the metrics, the history and the log.
type served struct {
	use    machineUse
	memory int64 // bytes the machine touched (0: no machine, or a kind that does not report it)
}

func useOf(poolHit bool) machineUse {
	if poolHit {
		return warmMachine
	}
	return coldMachine
}

// trafficBucket counts one interval. epoch is the interval's number since
// the Unix epoch; a slot whose epoch is not the one asked for is stale
// (the app was idle then) and reads as zeros.
type trafficBucket struct {
	epoch                        int64
	requests, errors, cold, warm int64
}

type appTraffic struct {
	mu   sync.Mutex
	ring [historyLen]trafficBucket
}

// trafficHistory holds the rings of the live apps.
type trafficHistory struct {
	mu   sync.RWMutex
	apps map[string]*appTraffic
}

func newTrafficHistory() *trafficHistory {
	return &trafficHistory{apps: map[string]*appTraffic{}}
}

// add starts app's history, keeping what it has (a redeploy is the same app).
func (h *trafficHistory) add(app string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.apps[app] == nil {
		h.apps[app] = &appTraffic{}
	}
}

// drop forgets app's history.
func (h *trafficHistory) drop(app string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.apps, app)
}

func (h *trafficHistory) get(app string) *appTraffic {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.apps[app]
}

func epochOf(t time.Time) int64 { return t.UnixNano() / int64(historyInterval) }

// record counts one answered request of app. Errors are the 5xx answers:
// the app failed, or the gateway could not serve it. A request of an app
// without a history (removed meanwhile, or never live) is not counted, so
// late requests cannot bring a removed app's history back.
func (h *trafficHistory) record(app string, status int, use machineUse, now time.Time) {
	t := h.get(app)
	if t == nil {
		return
	}
	e := epochOf(now)
	t.mu.Lock()
	defer t.mu.Unlock()
	b := &t.ring[e%historyLen]
	if b.epoch != e {
		*b = trafficBucket{epoch: e}
	}
	b.requests++
	if status >= 500 {
		b.errors++
	}
	switch use {
	case coldMachine:
		b.cold++
	case warmMachine:
		b.warm++
	}
}

// TrafficView is an app's recent traffic as GET /v1/status reports it:
// one value per interval of interval_seconds, oldest first, the last one
// being the interval in progress (it ends at end).
type TrafficView struct {
	IntervalSeconds int       `json:"interval_seconds"`
	End             time.Time `json:"end"`
	Requests        []int64   `json:"requests"`
	Errors          []int64   `json:"errors"`
	Cold            []int64   `json:"cold"`
	Warm            []int64   `json:"warm"`
	// Rate and ErrorRate are requests and 5xx answers per second over the
	// last minute.
	Rate      float64 `json:"rate"`
	ErrorRate float64 `json:"error_rate"`
}

// view is app's history at now (all zeros for an app without one).
func (h *trafficHistory) view(app string, now time.Time) TrafficView {
	e := epochOf(now)
	v := TrafficView{
		IntervalSeconds: int(historyInterval / time.Second),
		End:             time.Unix(0, (e+1)*int64(historyInterval)).UTC(),
		Requests:        make([]int64, historyLen),
		Errors:          make([]int64, historyLen),
		Cold:            make([]int64, historyLen),
		Warm:            make([]int64, historyLen),
	}
	t := h.get(app)
	if t == nil {
		return v
	}
	t.mu.Lock()
	for i := range historyLen {
		want := e - historyLen + 1 + int64(i)
		if want < 0 {
			continue
		}
		b := t.ring[want%historyLen]
		if b.epoch != want {
			continue
		}
		v.Requests[i], v.Errors[i], v.Cold[i], v.Warm[i] = b.requests, b.errors, b.cold, b.warm
	}
	t.mu.Unlock()
	// The window is the interval in progress (as far as it has gone) and
	// the whole ones before it that make up rateWindow.
	whole := int(rateWindow/historyInterval) - 1
	span := time.Duration(whole)*historyInterval + time.Duration(now.UnixNano()-e*int64(historyInterval))
	var req, errs int64
	for i := historyLen - 1 - whole; i < historyLen; i++ {
		req += v.Requests[i]
		errs += v.Errors[i]
	}
	if span > 0 {
		v.Rate = float64(req) / span.Seconds()
		v.ErrorRate = float64(errs) / span.Seconds()
	}
	return v
}
