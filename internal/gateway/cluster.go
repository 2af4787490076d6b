package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dust-run/dust/internal/cluster"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
)

// Cluster is what the gateway asks of a Dust cluster (internal/cluster's
// Node). With Config.Cluster set, deploys, rollbacks, removals and secret
// changes are committed to the shared state first and then applied to the
// local store, which stays the view every request is served from; and a
// request that finds its app full here is offered to another node before
// it queues.
type Cluster interface {
	Name() string
	Deploy(ctx context.Context, d cluster.DeployRequest) (cluster.Update, error)
	Rollback(ctx context.Context, name string, expect, to int) (cluster.Update, error)
	Remove(ctx context.Context, name string, expect int) (cluster.Update, error)
	ChangeSecrets(ctx context.Context, name string, expect int, sc store.SecretChange) (cluster.Update, error)
	FetchImage(ctx context.Context, digest string) error
	Forward(ctx context.Context, app string, r *http.Request, id string, body io.Reader, w http.ResponseWriter) (cluster.Forwarded, error)
	Status(ctx context.Context) cluster.Status
	// Known lists the apps the shared state has and their current
	// settings, prepared here or not.
	Known() map[string]store.Settings
}

// NodeHeader names the node that served a response, in cluster mode.
const NodeHeader = "Dust-Node"

// clusterGlue is the gateway's cluster-mode state.
type clusterGlue struct {
	c Cluster
	// rev is the shared-state revision last applied per app (under
	// deployMu): an update older than what this node committed itself is
	// not applied over it.
	rev      map[string]uint64
	requests *prometheus.CounterVec
	forward  prometheus.Histogram
}

func newClusterGlue(c Cluster, reg *prometheus.Registry) *clusterGlue {
	if c == nil {
		return nil
	}
	g := &clusterGlue{c: c, rev: map[string]uint64{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dust_cluster_requests_total",
			Help: "Requests by where they were served: local, forwarded_out (to another node), forwarded_in (from another node)."},
			[]string{"app", "path"}),
		forward: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dust_cluster_forward_seconds",
			Help:    "Latency of requests forwarded to another node, as the forwarding node sees it.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18)}),
	}
	reg.MustRegister(g.requests, g.forward)
	return g
}

// clusterTimeout bounds one commit to the shared state, image upload
// included (the cluster bounds its own steps more tightly).
const clusterTimeout = 3 * time.Minute

// commitDeploy records a deploy: in the local store alone, or in the
// shared state and then in the local view with the number it gave.
func (s *Server) commitDeploy(name, kind, digest string, set store.Settings, sc store.SecretChange, cur *store.App) (store.App, error) {
	if s.clu == nil {
		return s.store.DeployWithSecrets(name, kind, digest, set, sc)
	}
	size, err := s.store.StatImage(digest)
	if err != nil {
		return store.App{}, err
	}
	expect := 0
	if cur != nil {
		expect = cur.Current.Number
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	u, err := s.clu.c.Deploy(ctx, cluster.DeployRequest{Name: name, Kind: kind, Digest: digest, Size: size,
		Settings: set, Secrets: sc, Expect: expect})
	if err != nil {
		return store.App{}, err
	}
	return s.applyCommitted(u)
}

func (s *Server) commitRollback(name string, n int, cur store.App, target store.Version) (store.App, error) {
	if s.clu == nil {
		return s.store.RollbackTo(name, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	u, err := s.clu.c.Rollback(ctx, name, cur.Current.Number, target.Number)
	if err != nil {
		return store.App{}, err
	}
	return s.applyCommitted(u)
}

func (s *Server) commitRemove(name string, old store.App) error {
	if s.clu == nil {
		return s.store.Delete(name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	u, err := s.clu.c.Remove(ctx, name, old.Current.Number)
	if err != nil {
		return err
	}
	s.clu.rev[name] = u.Revision
	return s.store.Delete(name)
}

func (s *Server) commitSecrets(name string, sc store.SecretChange) error {
	if s.clu == nil {
		_, err := s.store.ChangeSecrets(name, sc)
		return err
	}
	cur, err := s.store.Get(name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	u, err := s.clu.c.ChangeSecrets(ctx, name, cur.Current.Number, sc)
	if err != nil {
		return err
	}
	_, err = s.applyCommitted(u)
	return err
}

// applyCommitted writes what this node committed into its view. The
// caller holds deployMu and installs the live version itself.
func (s *Server) applyCommitted(u cluster.Update) (store.App, error) {
	if u.App == nil {
		return store.App{}, fmt.Errorf("app %q: %w", u.Name, store.ErrNotFound)
	}
	if err := s.store.Replace(*u.App, u.Secrets); err != nil {
		return store.App{}, fmt.Errorf("the cluster recorded the change but this node's view did not take it: %w", err)
	}
	s.clu.rev[u.Name] = u.Revision
	return *u.App, nil
}

// fetchVersion makes sure the image and files layer a rollback to v
// needs are in the local store.
func (s *Server) fetchVersion(v store.Version) error {
	if s.clu == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	for _, d := range []string{v.Digest, v.Settings.Files} {
		if d == "" {
			continue
		}
		if err := s.clu.c.FetchImage(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// Apply installs an app as the shared state has it (cluster.Local): the
// view first, then the live version, prepared before it is swapped in.
// A version this node cannot prepare is not served here; the others
// still serve it.
func (s *Server) Apply(u cluster.Update) error {
	if s.clu == nil {
		return errors.New("gateway: not in cluster mode")
	}
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	if u.Revision <= s.clu.rev[u.Name] {
		return nil
	}
	if u.App == nil {
		old, err := s.store.Get(u.Name)
		if errors.Is(err, store.ErrNotFound) {
			s.clu.rev[u.Name] = u.Revision
			return nil
		}
		if err == nil {
			err = s.store.Delete(u.Name)
		}
		if err != nil {
			return err
		}
		s.clu.rev[u.Name] = u.Revision
		s.swap(u.Name, nil)
		s.logs.remove(u.Name)
		var digests []string
		for _, v := range old.History {
			digests = append(digests, v.Digest)
		}
		s.dropImages(digests...)
		s.log.Info("removed by the cluster", "app", u.Name)
		return nil
	}
	if err := s.store.Replace(*u.App, u.Secrets); err != nil {
		return err
	}
	s.clu.rev[u.Name] = u.Revision
	cur := u.App.Current
	s.mu.RLock()
	live := s.apps[u.Name]
	s.mu.RUnlock()
	if live != nil && live.version == cur.Number && live.digest == cur.Digest {
		return s.loadSecrets(live) // a secrets change, or our own commit
	}
	la, err := s.prepare(*u.App)
	if err != nil {
		s.swap(u.Name, nil)
		return fmt.Errorf("app %s v%d is not served on this node: %w", u.Name, cur.Number, err)
	}
	s.swap(u.Name, la)
	s.log.Info("applied from the cluster", "app", u.Name, "version", cur.Number, "digest", cur.Digest)
	return nil
}

// MaxImageSize bounds images fetched from the cluster (cluster.Local).
func (s *Server) MaxImageSize() int64 { return s.cfg.MaxImageSize }

// hasRoom reports whether a request for a could take a machine here now.
func (s *Server) hasRoom(a *liveApp) bool {
	if len(a.gate.slots) >= cap(a.gate.slots) {
		return false
	}
	g := s.global
	g.mu.Lock()
	defer g.mu.Unlock()
	ok, _ := g.slotFor(g.held[a.name])
	return ok
}

// Free lists the live apps with a free slot (cluster.Local).
func (s *Server) Free() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for name, a := range s.apps {
		if !a.retired.Load() && s.hasRoom(a) {
			out = append(out, name)
		}
	}
	return out
}

// Load reports machines in use, the cap, and the live version of each app
// (cluster.Local).
func (s *Server) Load() (live, maxLive int, ready map[string]int) {
	ready = map[string]int{}
	s.mu.RLock()
	for name, a := range s.apps {
		ready[name] = a.version
	}
	s.mu.RUnlock()
	return s.liveMachines(), s.cfg.MaxLive, ready
}

type admittedKey struct{}

// admitted carries the slots a forwarded request took before it was
// accepted: it must not queue on the node it was sent to, whose free slot
// was the reason it was sent.
type admitted struct {
	app            string
	local, global  func()
	localOnce, glo sync.Once
}

func (ad *admitted) releaseLocal()  { ad.localOnce.Do(ad.local) }
func (ad *admitted) releaseGlobal() { ad.glo.Do(ad.global) }

// Admit takes both slots for a forwarded request without waiting
// (cluster.Local).
func (s *Server) Admit(app string) (func(http.ResponseWriter, *http.Request), bool) {
	s.mu.RLock()
	a := s.apps[app]
	s.mu.RUnlock()
	if a == nil || a.retired.Load() {
		return nil, false
	}
	select {
	case a.gate.slots <- struct{}{}:
	default:
		return nil, false
	}
	g := s.global
	g.mu.Lock()
	ok, reserved := g.slotFor(g.held[app])
	if ok {
		g.takeLocked(app, reserved)
	}
	g.mu.Unlock()
	if !ok {
		a.gate.release()
		return nil, false
	}
	ad := &admitted{app: app, local: a.gate.release, global: g.releaser(app, reserved)}
	return func(w http.ResponseWriter, r *http.Request) {
		defer ad.releaseGlobal()
		defer ad.releaseLocal()
		s.serveApp(w, r.WithContext(context.WithValue(r.Context(), admittedKey{}, ad)))
	}, true
}

func admittedFor(r *http.Request, a *liveApp) *admitted {
	ad, _ := r.Context().Value(admittedKey{}).(*admitted)
	if ad == nil || ad.app != a.name {
		return nil
	}
	return ad
}

// acquireApp and acquireGlobal are serveOn's admission: a forwarded
// request uses the slots it was admitted with.
func (s *Server) acquireApp(r *http.Request, a *liveApp) (func(), error) {
	if ad := admittedFor(r, a); ad != nil {
		return ad.releaseLocal, nil
	}
	return a.gate.acquire(r.Context(), a.set.QueueWait)
}

func (s *Server) acquireGlobal(r *http.Request, a *liveApp) (func(), error) {
	if ad := admittedFor(r, a); ad != nil {
		return ad.releaseGlobal, nil
	}
	return s.global.acquire(r.Context(), a.name, a.set.QueueWait)
}

// clusterServe forwards a request whose app has no free slot here to a
// node that has one. It reports false when the request is to be served
// here: not in cluster mode, forwarded here already, room here, or no
// node with room (then it queues here as on a single node).
func (s *Server) clusterServe(a *liveApp, w http.ResponseWriter, r *http.Request, in *countingReader, id string) (int, string, bool) {
	if s.clu == nil {
		return 0, "", false
	}
	w.Header().Set(NodeHeader, s.clu.c.Name())
	if r.Context().Value(admittedKey{}) != nil {
		s.clu.requests.WithLabelValues(a.name, "forwarded_in").Inc()
		return 0, "", false
	}
	if s.hasRoom(a) {
		s.clu.requests.WithLabelValues(a.name, "local").Inc()
		return 0, "", false
	}
	timeout := a.img.Limits().Timeout
	ctx, cancel := context.WithTimeout(r.Context(), a.set.QueueWait+timeout+finishGrace)
	defer cancel()
	t0 := time.Now()
	res, err := s.clu.c.Forward(ctx, a.name, r, id, in, w)
	if errors.Is(err, cluster.ErrNoCapacity) && !res.Committed && res.BodyErr == nil {
		s.clu.requests.WithLabelValues(a.name, "local").Inc()
		return 0, "", false
	}
	s.clu.requests.WithLabelValues(a.name, "forwarded_out").Inc()
	rc := http.NewResponseController(w)
	if res.BodyErr != nil && !res.Committed {
		st, oc := s.bodyFailed(w, rc, a, id, timeout, res.BodyErr)
		return st, oc, true
	}
	st, oc := s.forwarded(w, a.name, id, t0, res, err)
	return st, oc, true
}

// forwarded finishes a request that another node served (or was to).
func (s *Server) forwarded(w http.ResponseWriter, app, id string, t0 time.Time, res cluster.Forwarded, err error) (int, string) {
	if err == nil && !res.Cut {
		s.clu.forward.Observe(time.Since(t0).Seconds())
		return res.Status, "forwarded to " + res.Node
	}
	if res.Committed {
		s.log.Warn("forwarded response cut", "request_id", id, "app", app, "node", res.Node, "err", err)
		panic(http.ErrAbortHandler)
	}
	switch {
	case errors.Is(err, cluster.ErrForwardTimeout), errors.Is(err, context.DeadlineExceeded):
		s.fail(w, app, id, http.StatusGatewayTimeout, "node "+res.Node+" did not answer in time")
		return http.StatusGatewayTimeout, "forward timeout"
	case errors.Is(err, context.Canceled):
		return 499, "client gone while forwarded"
	}
	s.log.Warn("forwarded node lost", "request_id", id, "app", app, "node", res.Node, "err", err)
	s.fail(w, app, id, http.StatusBadGateway, fmt.Sprintf("the node serving the request (%s) stopped answering", res.Node))
	return http.StatusBadGateway, "forwarded node lost"
}

// unreadyPoll is how often a request for an app not prepared here asks
// again for a node that has it ready and a free slot.
const unreadyPoll = 20 * time.Millisecond

// clusterUnready serves a request that matches no app live here but one
// the shared state has: this node has not prepared it yet (its image is
// still on the way) or cannot (a kind it lacks). The request goes to a
// node that has it ready, waiting for one up to the app's queue_wait as it
// would wait for a slot. It reports false when the shared state has no
// such app either: the caller answers 404.
func (s *Server) clusterUnready(w http.ResponseWriter, r *http.Request, id string) (int, string, string, bool) {
	if s.clu == nil || r.Context().Value(admittedKey{}) != nil {
		return 0, "", "", false
	}
	name, set, ok := matchKnown(s.clu.c.Known(), r.Host, r.URL.Path)
	if !ok {
		return 0, "", "", false
	}
	w.Header().Set(NodeHeader, s.clu.c.Name())
	set = appDefaults(set)
	if r.ContentLength > set.MaxBody {
		s.fail(w, name, id, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", set.MaxBody))
		return http.StatusRequestEntityTooLarge, "body too large", name, true
	}
	timeout := set.Timeout
	if timeout <= 0 {
		timeout = machine.DefaultTimeout
	}
	rc := http.NewResponseController(w)
	start := time.Now()
	if r.ContentLength != 0 {
		rc.SetReadDeadline(start.Add(timeout).Add(ioGrace))
	}
	in := &countingReader{r: http.MaxBytesReader(w, r.Body, set.MaxBody), clear: rc}
	if r.ContentLength == 0 {
		in = &countingReader{}
	}
	ctx, cancel := context.WithTimeout(r.Context(), set.QueueWait+timeout+finishGrace)
	defer cancel()
	giveUp := start.Add(set.QueueWait)
	for {
		t0 := time.Now()
		res, err := s.clu.c.Forward(ctx, name, r, id, in, w)
		if errors.Is(err, cluster.ErrNoCapacity) && !res.Committed && res.BodyErr == nil {
			in.unread(res.Unread)
			if time.Now().Before(giveUp) {
				select {
				case <-time.After(unreadyPoll):
					continue
				case <-ctx.Done():
				}
			}
			s.fail(w, name, id, http.StatusServiceUnavailable, fmt.Sprintf("app %s is not ready on this node yet and no node that has it ready had a free slot within its queue_wait of %v", name, set.QueueWait), "Retry-After", "1")
			return http.StatusServiceUnavailable, "not ready here, no node free", name, true
		}
		s.clu.requests.WithLabelValues(name, "forwarded_out").Inc()
		if res.BodyErr != nil && !res.Committed {
			var tooLarge *http.MaxBytesError
			if errors.As(res.BodyErr, &tooLarge) {
				s.fail(w, name, id, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", set.MaxBody))
				return http.StatusRequestEntityTooLarge, "body too large", name, true
			}
			w.Header().Set("Connection", "close")
			s.fail(w, name, id, http.StatusRequestTimeout, "the request body did not arrive in time")
			return http.StatusRequestTimeout, "body failed", name, true
		}
		st, oc := s.forwarded(w, name, id, t0, res, err)
		return st, oc, name, true
	}
}

// matchKnown is match over the shared state's apps: the same order (the
// longest route first, host-specific before any-host, then by name).
func matchKnown(apps map[string]store.Settings, host, path string) (string, store.Settings, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(host)
	best, found := "", false
	var bestSet store.Settings
	for name, set := range apps {
		if set.Host != "" && set.Host != host || !routeMatches(set.Route, path) {
			continue
		}
		if !found || routeBefore(set, name, bestSet, best) {
			best, bestSet, found = name, set, true
		}
	}
	return best, bestSet, found
}

// unread puts back the body bytes a forward that found no node took.
func (in *countingReader) unread(b []byte) {
	if len(b) == 0 {
		return
	}
	rest := in.r
	if rest == nil {
		rest = bytes.NewReader(nil)
	}
	in.r = io.MultiReader(bytes.NewReader(b), rest)
	in.n -= int64(len(b))
}

// clusterStatus is the cluster as this node sees it (nil: single node).
func (s *Server) clusterStatus(ctx context.Context) *cluster.Status {
	if s.clu == nil {
		return nil
	}
	st := s.clu.c.Status(ctx)
	return &st
}

func (s *Server) apiCluster(w http.ResponseWriter, r *http.Request) {
	st := s.clusterStatus(r.Context())
	if st == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "this node is not in cluster mode (dust serve --cluster-listen or --nats)"})
		return
	}
	writeJSON(w, http.StatusOK, st)
}
