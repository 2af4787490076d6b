package gateway

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dust-run/dust/internal/cgi"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
)

// liveApp is one deployed app version, ready to serve: its prepared image,
// its pool of ready machines and its admission gate.
type liveApp struct {
	name    string
	kind    string
	version int
	digest  string
	set     store.Settings
	img     machine.Image
	pool    *machine.Pool
	gate    *gate

	inflight sync.WaitGroup // requests that matched this version
	retired  atomic.Bool
	closed   chan struct{}

	// traffic for pool sizing: requests in the current 100 ms window and
	// the peak window over the last few seconds.
	window atomic.Int64
	peak   []int64
	pidx   int
	last   atomic.Int64 // unix nanos of the last request

	hist *histogram // request latency for the status page

	// secrets are per app, not per version (see store.SecretChange), so
	// they change under a running version: swapped whole, read per request.
	secrets atomic.Pointer[secretEnv]

	// The pool's restore counts already added to the Prometheus counters:
	// those outlive a version's pool, so they grow by differences.
	countedMu                    sync.Mutex
	countedRestored, countedErrs int64
}

// isolation is the mode the app's machines actually get: restore only for
// kinds whose machines can be reset (machine.Resetter); a wasm instance is
// made per request whatever the setting.
func (a *liveApp) isolation() string { return effectiveIsolation(a.kind, a.set.IsolationMode()) }

func effectiveIsolation(kind, mode string) string {
	if kind != store.KindHVT {
		return machine.IsolationFresh
	}
	return mode
}

// secretEnv is an app's secrets as its machines get them, and the
// replacer that hides their values in its log.
type secretEnv struct {
	env    []string // NAME=VALUE, sorted by name
	names  []string
	redact *strings.Replacer
}

func newSecretEnv(m map[string]string) *secretEnv {
	se := &secretEnv{redact: redactor(m)}
	for k := range m {
		se.names = append(se.names, k)
	}
	slices.Sort(se.names)
	for _, k := range se.names {
		se.env = append(se.env, k+"="+m[k])
	}
	return se
}

// env is what a request's machine gets as the app's environment. Secrets
// come last so that, should a rolled-back version's env name a secret
// too, the secret wins.
func (a *liveApp) env() []string {
	se := a.secrets.Load()
	if se == nil || len(se.env) == 0 {
		return a.set.Env
	}
	return append(slices.Clip(a.set.Env), se.env...)
}

// argv is a request's argv: the path, the app's fixed args, and the
// query's items only if the app opted in to them (cgi.Request.Argv).
func (a *liveApp) argv(creq *cgi.Request) []string {
	return creq.Argv(a.set.Args, a.set.QueryArgs)
}

// loadSecrets refreshes la's secrets from the store.
func (s *Server) loadSecrets(la *liveApp) error {
	m, err := s.store.Secrets(la.name)
	if err != nil {
		return err
	}
	la.secrets.Store(newSecretEnv(m))
	return nil
}

// errPrepare wraps failures to turn a stored version into a live app.
var errPrepare = errors.New("preparing app")

func limitsOf(set store.Settings) machine.Limits {
	return machine.Limits{Memory: set.Memory, Timeout: set.Timeout}
}

// appDefaults fills unset per-app settings.
func appDefaults(set store.Settings) store.Settings {
	if set.MaxConcurrency <= 0 {
		set.MaxConcurrency = DefaultMaxConcurrency
	}
	if set.QueueLen < 0 {
		set.QueueLen = 0
	} else if set.QueueLen == 0 {
		set.QueueLen = DefaultQueueLen
	}
	if set.QueueWait <= 0 {
		set.QueueWait = DefaultQueueWait
	}
	if set.MaxBody <= 0 {
		set.MaxBody = DefaultMaxBody
	}
	return set
}

// prepare loads an app's current image and prepares it.
func (s *Server) prepare(a store.App) (*liveApp, error) { return s.prepareWith(a, nil) }

// prepareWith is prepare for a server app whose secrets are about to
// change (a deploy's own): they are part of its start-up. nil: the
// store's.
func (s *Server) prepareWith(a store.App, secrets map[string]string) (*liveApp, error) {
	v := a.Current
	kind, ok := s.cfg.Kinds[v.Kind]
	if !ok {
		return nil, fmt.Errorf("%w %s: machine kind %q is not available here", errPrepare, a.Name, v.Kind)
	}
	img, err := s.store.ReadImage(v.Digest, s.cfg.MaxImageSize)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", errPrepare, a.Name, err)
	}
	var files fs.FS
	if v.Settings.Files != "" {
		l, err := s.store.ReadLayer(v.Settings.Files)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %w", errPrepare, a.Name, err)
		}
		files = l
	}
	app := machine.App{Files: files}
	if v.Settings.Serve == store.ServeHTTP {
		// A server reads its environment once, at start-up: its secrets
		// are part of the snapshot (a secret change prepares it again).
		sec := secrets
		if sec == nil {
			if sec, err = s.store.Secrets(a.Name); err != nil {
				return nil, fmt.Errorf("%w %s: %w", errPrepare, a.Name, err)
			}
		}
		app.Server = serverStart(v.Settings, sec)
	}
	t0 := time.Now()
	pi, err := machine.PrepareApp(kind, img, limitsOf(v.Settings), app)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", errPrepare, a.Name, err)
	}
	s.met.prepare.WithLabelValues(v.Kind).Observe(time.Since(t0).Seconds())
	set := appDefaults(v.Settings)
	la := &liveApp{
		name: a.Name, kind: v.Kind, version: v.Number, digest: v.Digest, set: set, img: pi,
		pool: machine.NewPool(pi, machine.PoolOptions{Size: s.cfg.PoolFloor, MaxSize: s.cfg.PoolMax,
			Reuse: set.Isolation != machine.IsolationFresh}),
		gate:   newGate(set.MaxConcurrency, set.QueueLen),
		closed: make(chan struct{}),
		peak:   make([]int64, 50), // 50 windows of 100 ms: the last 5 seconds
		hist:   newHistogram(),
	}
	if err := s.loadSecrets(la); err != nil {
		la.pool.Close()
		pi.Close()
		return nil, fmt.Errorf("%w %s: %w", errPrepare, a.Name, err)
	}
	return la, nil
}

// retire stops new requests from reaching la; wait destroys it once the
// requests already inside have finished.
func (a *liveApp) retire() { a.retired.Store(true) }

func (a *liveApp) wait() {
	a.inflight.Wait()
	a.pool.Close()
	a.img.Close()
}

// swap installs la as app name (nil removes it) and retires the previous
// version in the background once its in-flight requests are done.
func (s *Server) swap(name string, la *liveApp) {
	s.mu.Lock()
	old := s.apps[name]
	if la == nil {
		delete(s.apps, name)
	} else {
		s.apps[name] = la
	}
	s.rebuildRoutes()
	s.mu.Unlock()
	if la != nil {
		s.met.setAppInfo(la.name, la.kind, la.isolation())
	}
	if old != nil {
		old.retire()
		go func() {
			old.wait()
			if la != nil {
				// Restores finished after the last sizing tick still count,
				// unless the app has been removed since (forgetApp below).
				s.mu.RLock()
				defer s.mu.RUnlock()
				if s.apps[name] != nil {
					s.countRestores(old)
				}
				return
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			// Under the lock, so that a redeploy of the same name cannot
			// be installed between the check and the removal.
			if s.apps[name] == nil {
				s.met.forgetApp(name)
			}
		}()
	}
}

// countRestores moves what a's pool restored (or failed to) since the last
// call into the app's counters.
func (s *Server) countRestores(a *liveApp) {
	st := a.pool.Stats()
	a.countedMu.Lock()
	defer a.countedMu.Unlock()
	s.met.restored.WithLabelValues(a.name).Add(float64(st.Restored - a.countedRestored))
	s.met.restoreErrors.WithLabelValues(a.name).Add(float64(st.RestoreErrors - a.countedErrs))
	a.countedRestored, a.countedErrs = st.Restored, st.RestoreErrors
}

// sizePools resizes every app's pool from its recent traffic: enough ready
// machines for the busiest 100 ms of the last five seconds, at least the
// floor, at most PoolMax. An idle app shrinks to the floor (0: nothing
// waits between requests).
func (s *Server) sizePools() {
	defer s.poolWG.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.stopPool:
			return
		case <-t.C:
		}
		s.mu.RLock()
		want := make(map[*liveApp]int, len(s.apps))
		total := 0
		for _, a := range s.apps {
			n := a.window.Swap(0)
			a.peak[a.pidx] = n
			a.pidx = (a.pidx + 1) % len(a.peak)
			var p int64
			for _, v := range a.peak {
				p = max(p, v)
			}
			want[a] = min(max(int(p), s.cfg.PoolFloor), s.cfg.PoolMax)
			total += want[a]
		}
		for a, w := range want {
			// Ready machines are VMs the kernel keeps (≈ 0.5 MiB and a
			// thread each): past MaxIdle in all, every app's share
			// shrinks in proportion, and a busy app's machines on loan
			// come back restored anyway.
			if total > s.cfg.MaxIdle {
				w = w * s.cfg.MaxIdle / total
			}
			a.pool.SetSize(w)
			st := a.pool.Stats()
			s.met.poolReady.WithLabelValues(a.name).Set(float64(st.Ready))
			s.countRestores(a)
		}
		s.mu.RUnlock()
	}
}

// gate admits at most n concurrent holders and lets at most queue more
// wait; the rest are turned away at once.
type gate struct {
	slots   chan struct{}
	waiting atomic.Int64
	queue   int64
}

func newGate(n, queue int) *gate {
	return &gate{slots: make(chan struct{}, n), queue: int64(queue)}
}

var (
	errQueueFull    = errors.New("queue full")
	errQueueTimeout = errors.New("waited too long in the queue")
)

// acquire takes a slot, waiting at most wait (and only if the queue has
// room). The returned function releases it.
func (g *gate) acquire(ctx context.Context, wait time.Duration) (func(), error) {
	select {
	case g.slots <- struct{}{}:
		return g.release, nil
	default:
	}
	if g.waiting.Add(1) > g.queue {
		g.waiting.Add(-1)
		return nil, errQueueFull
	}
	defer g.waiting.Add(-1)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return g.release, nil
	case <-t.C:
		return nil, errQueueTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (g *gate) release() { <-g.slots }

func (g *gate) live() int { return len(g.slots) }
