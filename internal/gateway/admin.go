package gateway

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
)

//go:embed status.html
var statusPage []byte

func (s *Server) adminMux() http.Handler {
	mux := http.NewServeMux()
	// The status page itself holds no data; it asks /v1/status with the
	// token the user pastes (kept in the URL fragment, never sent).
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		adminDeadlines(w, r)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Write(statusPage)
	})
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			adminDeadlines(w, r)
			if !s.checkToken(r) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="dust"`)
				writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
				return
			}
			h(w, r)
		}
	}
	mux.Handle("GET /metrics", auth(promhttp.HandlerFor(s.met.reg, promhttp.HandlerOpts{}).ServeHTTP))
	mux.HandleFunc("GET /v1/status", auth(s.apiStatus))
	mux.HandleFunc("GET /v1/apps", auth(s.apiList))
	mux.HandleFunc("GET /v1/apps/{name}", auth(s.apiGet))
	mux.HandleFunc("PUT /v1/apps/{name}", auth(s.apiDeploy))
	mux.HandleFunc("POST /v1/apps/{name}/rollback", auth(s.apiRollback))
	mux.HandleFunc("DELETE /v1/apps/{name}", auth(s.apiDelete))
	mux.HandleFunc("GET /v1/apps/{name}/logs", auth(s.apiLogs))
	mux.HandleFunc("/", auth(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such admin endpoint"})
	}))
	return mux
}

// Admin deadlines. An upload may be large and its client far away, but not
// endless; a response is small. Logs that follow extend their write
// deadline at every line instead.
const (
	adminUploadTimeout = 10 * time.Minute
	adminWriteTimeout  = 30 * time.Second
)

// adminDeadlines bounds how long an admin client may take to send its body
// and to take the response. A read deadline is set only when there is a
// body: once set it also ends Go's watch for a client that goes away,
// which a long logs follow needs.
func adminDeadlines(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	if r.ContentLength != 0 {
		rc.SetReadDeadline(time.Now().Add(adminUploadTimeout))
	}
	rc.SetWriteDeadline(time.Now().Add(adminWriteTimeout))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// adminStatus maps an admin error to its HTTP status.
func adminStatus(err error) int {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, store.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, store.ErrImageTooLarge), errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, machine.ErrBadImage), errors.Is(err, machine.ErrBadLimits):
		return http.StatusUnprocessableEntity
	case errors.Is(err, store.ErrInvalid), errors.Is(err, errBadSetting):
		return http.StatusBadRequest
	case errors.Is(err, errUploadTimeout):
		return http.StatusRequestTimeout
	}
	return http.StatusInternalServerError
}

func (s *Server) apiError(w http.ResponseWriter, err error) {
	writeJSON(w, adminStatus(err), map[string]string{"error": err.Error()})
}

var errBadSetting = errors.New("bad setting")

// settingsFromQuery reads deploy settings from query parameters.
func settingsFromQuery(q map[string][]string) (store.Settings, error) {
	var set store.Settings
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	bad := func(k, v string, err error) error {
		return fmt.Errorf("%w: %s=%q: %v", errBadSetting, k, v, err)
	}
	set.Route = get("route")
	if set.Route == "" {
		set.Route = "/"
	}
	set.Host = get("host")
	set.Env = q["env"]
	ints := []struct {
		k string
		p *int64
	}{{"memory", &set.Memory}, {"max_body", &set.MaxBody}}
	for _, f := range ints {
		if v := get(f.k); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return set, bad(f.k, v, err)
			}
			*f.p = n
		}
	}
	smalls := []struct {
		k string
		p *int
	}{{"max_concurrency", &set.MaxConcurrency}, {"queue_len", &set.QueueLen}}
	for _, f := range smalls {
		if v := get(f.k); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return set, bad(f.k, v, err)
			}
			*f.p = n
		}
	}
	durs := []struct {
		k string
		p *time.Duration
	}{{"timeout", &set.Timeout}, {"queue_wait", &set.QueueWait}}
	for _, f := range durs {
		if v := get(f.k); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				return set, bad(f.k, v, err)
			}
			*f.p = d
		}
	}
	if v := get("pass_authorization"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return set, bad("pass_authorization", v, err)
		}
		set.PassAuthorization = b
	}
	if v := get("isolation"); v != "" {
		set.Isolation = strings.ToLower(v)
		if !machine.ValidIsolation(set.Isolation) {
			return set, bad("isolation", v, fmt.Errorf("want %s or %s", machine.IsolationRestore, machine.IsolationFresh))
		}
	}
	set = set.Normalize()
	return set, set.Validate()
}

func (s *Server) apiDeploy(w http.ResponseWriter, r *http.Request) {
	set, err := settingsFromQuery(r.URL.Query())
	if err != nil {
		s.apiError(w, err)
		return
	}
	app, err := s.Deploy(r.PathValue("name"), http.MaxBytesReader(w, r.Body, s.cfg.MaxImageSize), set)
	// Preparing may have taken longer than a response should.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(adminWriteTimeout))
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: the image did not arrive within %v", errUploadTimeout, adminUploadTimeout)
		}
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, app)
}

var errUploadTimeout = errors.New("upload timeout")

// pin marks an uploaded image as belonging to a deploy in progress, so
// that removing another deploy's refused upload (or a removed app's
// images) of the same bytes cannot take it away. It returns the unpin.
func (s *Server) pin(digest string) func() {
	s.pinMu.Lock()
	s.pins[digest]++
	s.pinMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.pinMu.Lock()
			if s.pins[digest]--; s.pins[digest] <= 0 {
				delete(s.pins, digest)
			}
			s.pinMu.Unlock()
		})
	}
}

// dropImages removes the images among digests that no app version uses
// and no deploy in progress holds: disk is given back at once when an
// upload is refused or an app removed, not only by the periodic GC.
func (s *Server) dropImages(digests ...string) {
	s.pinMu.Lock()
	var free []string
	for _, d := range digests {
		if s.pins[d] == 0 {
			free = append(free, d)
		}
	}
	// Removing under pinMu: an upload that pins these bytes meanwhile
	// either pinned first (kept) or finds them gone when it checks.
	defer s.pinMu.Unlock()
	removed, err := s.store.RemoveUnreferenced(free...)
	if err != nil {
		s.log.Warn("removing unused images", "err", err)
	}
	for _, d := range removed {
		s.log.Info("image removed", "digest", d)
	}
}

// collectGarbage runs the store's GC now and then, for images left behind
// by a crash or by deploys that never finished.
func (s *Server) collectGarbage() {
	defer s.poolWG.Done()
	t := time.NewTicker(gcEvery)
	defer t.Stop()
	for {
		s.pinMu.Lock()
		removed, err := s.store.GC()
		s.pinMu.Unlock()
		if err != nil {
			s.log.Warn("image gc", "err", err)
		}
		if len(removed) > 0 {
			s.log.Info("image gc", "removed", len(removed))
		}
		select {
		case <-s.stopPool:
			return
		case <-t.C:
		}
	}
}

const gcEvery = time.Hour

// Deploy stores image, validates and prepares it, then switches app name to
// it. Until the switch the previous version keeps serving; if any step
// fails, nothing changes.
func (s *Server) Deploy(name string, image io.Reader, set store.Settings) (store.App, error) {
	if err := store.ValidateName(name); err != nil {
		return store.App{}, err
	}
	set = set.Normalize()
	if err := set.Validate(); err != nil {
		return store.App{}, err
	}
	// The upload is read and stored before the deploy lock is taken: a
	// slow uploader must not hold up every other deploy, rollback and rm.
	digest, unpin, err := s.upload(image)
	if err != nil {
		return store.App{}, err
	}
	defer unpin()
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	app, err := s.deployLocked(name, digest, set)
	if err != nil {
		unpin()
		s.dropImages(digest)
	}
	return app, err
}

// upload stores an image and pins it (see pin).
func (s *Server) upload(image io.Reader) (string, func(), error) {
	digest, _, err := s.store.PutImage(image, s.cfg.MaxImageSize)
	if err != nil {
		return "", nil, err
	}
	unpin := s.pin(digest)
	// A refused deploy of the same bytes may have removed them between
	// the store's rename and the pin; now that the pin holds, they stay.
	if _, err := s.store.StatImage(digest); err != nil {
		unpin()
		return "", nil, fmt.Errorf("%w: the same image was removed while uploading; deploy again: %w", store.ErrConflict, err)
	}
	return digest, unpin, nil
}

func (s *Server) deployLocked(name, digest string, set store.Settings) (store.App, error) {
	b, err := s.store.ReadImage(digest, s.cfg.MaxImageSize)
	if err != nil {
		return store.App{}, err
	}
	kind, err := s.cfg.Detect(b)
	if err != nil {
		return store.App{}, err
	}
	// Refuse a route another app holds before the (slow) prepare.
	if err := s.routeFree(name, set); err != nil {
		return store.App{}, err
	}
	la, err := s.prepare(store.App{Name: name, Current: store.Version{Kind: kind, Digest: digest, Settings: set}})
	if err != nil {
		return store.App{}, err
	}
	app, err := s.store.Deploy(name, kind, digest, set)
	if err != nil {
		la.pool.Close()
		la.img.Close()
		return store.App{}, err
	}
	la.version = app.Current.Number
	s.swap(name, la)
	s.log.Info("deployed", "app", name, "version", la.version, "kind", kind, "digest", digest, "route", set.Route, "host", set.Host)
	return app, nil
}

func (s *Server) routeFree(name string, set store.Settings) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, a := range s.apps {
		if a.name != name && a.set.Route == cleanRoute(set.Route) && a.set.Host == strings.ToLower(set.Host) {
			return fmt.Errorf("%w: route %s (host %q) is already served by app %s", store.ErrConflict, set.Route, set.Host, a.name)
		}
	}
	return nil
}

func cleanRoute(r string) string {
	if len(r) > 1 {
		return strings.TrimSuffix(r, "/")
	}
	return r
}

func (s *Server) apiRollback(w http.ResponseWriter, r *http.Request) {
	app, err := s.Rollback(r.PathValue("name"))
	if err != nil {
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, app)
}

// Rollback makes the version before the current one current again. The
// previous version is prepared before the switch.
func (s *Server) Rollback(name string) (store.App, error) {
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	cur, err := s.store.Get(name)
	if err != nil {
		return store.App{}, err
	}
	prev, err := cur.RollbackTarget()
	if err != nil {
		return store.App{}, err
	}
	la, err := s.prepare(store.App{Name: name, Current: prev})
	if err != nil {
		return store.App{}, err
	}
	app, err := s.store.Rollback(name)
	if err != nil {
		la.pool.Close()
		la.img.Close()
		return store.App{}, err
	}
	la.version = app.Current.Number
	la.set = appDefaults(app.Current.Settings)
	s.swap(name, la)
	s.log.Info("rolled back", "app", name, "version", la.version)
	return app, nil
}

func (s *Server) apiDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.deployMu.Lock()
	old, err := s.store.Get(name)
	if err == nil {
		err = s.store.Delete(name)
	}
	if err == nil {
		s.swap(name, nil)
		var digests []string
		for _, v := range old.History {
			digests = append(digests, v.Digest)
		}
		s.dropImages(digests...)
	}
	s.deployMu.Unlock()
	if err != nil {
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"deleted": name})
}

// AppStatus is what the admin API reports about a live app.
type AppStatus struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Version int    `json:"version"`
	Digest  string `json:"digest"`
	Route   string `json:"route"`
	Host    string `json:"host,omitempty"`
	Live    int    `json:"live_machines"`
	Queued  int64  `json:"queued"`
	// Isolation is the mode the app asked for (the default resolved);
	// EffectiveIsolation the one its machines get, "fresh" for a kind
	// that cannot restore (wasm).
	Isolation          string         `json:"isolation"`
	EffectiveIsolation string         `json:"effective_isolation"`
	Pool               machinePool    `json:"pool"`
	Histogram          []int64        `json:"latency_histogram"`
	Settings           store.Settings `json:"settings"`
}

type machinePool struct {
	Ready, Target        int
	Hits, Misses, Errors int64
	// Restored counts machines reset and reused after a request;
	// RestoreErrors those whose reset failed and were destroyed.
	Restored, RestoreErrors int64
}

func (s *Server) statusOf(a *liveApp) AppStatus {
	st := a.pool.Stats()
	return AppStatus{
		Name: a.name, Kind: a.kind, Version: a.version, Digest: a.digest, Route: a.set.Route, Host: a.set.Host,
		Live: a.gate.live(), Queued: a.gate.waiting.Load(),
		Isolation: a.set.IsolationMode(), EffectiveIsolation: a.isolation(),
		Pool: machinePool{Ready: st.Ready, Target: st.Target, Hits: st.Hits, Misses: st.Misses, Errors: st.CreateErrors,
			Restored: st.Restored, RestoreErrors: st.RestoreErrors},
		Histogram: a.hist.snapshot(), Settings: a.set,
	}
}

func (s *Server) apiStatus(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	apps := make([]AppStatus, 0, len(s.apps))
	for _, a := range s.routes {
		apps = append(apps, s.statusOf(a))
	}
	s.mu.RUnlock()
	s.errMu.Lock()
	errs := append([]recentError(nil), s.errors...)
	s.errMu.Unlock()
	bounds := make([]string, len(histBounds)+1)
	for i, b := range histBounds {
		bounds[i] = "<" + b.String()
	}
	bounds[len(histBounds)] = ">=" + histBounds[len(histBounds)-1].String()
	writeJSON(w, http.StatusOK, map[string]any{"apps": apps, "errors": errs, "buckets": bounds, "live": s.liveMachines()})
}

func (s *Server) apiList(w http.ResponseWriter, r *http.Request) {
	apps, err := s.store.List()
	if err != nil {
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, apps)
}

func (s *Server) apiGet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	app, err := s.store.Get(name)
	if err != nil {
		s.apiError(w, err)
		return
	}
	out := map[string]any{"app": app}
	s.mu.RLock()
	if a := s.apps[name]; a != nil {
		out["status"] = s.statusOf(a)
	}
	s.mu.RUnlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) apiLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := s.store.Get(name); err != nil {
		s.apiError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var buf bytes.Buffer
	line := func(l LogLine) {
		buf.Reset()
		fmt.Fprintf(&buf, "%s %s %s\n", l.Time.Format(time.RFC3339Nano), l.RequestID, l.Line)
		w.Write(buf.Bytes())
	}
	var ch <-chan LogLine
	if r.URL.Query().Get("follow") != "" {
		c, stop := s.logs.follow(name)
		defer stop()
		ch = c
	}
	for _, l := range s.logs.recent(name) {
		line(l)
	}
	if ch == nil {
		return
	}
	rc := http.NewResponseController(w)
	rc.Flush()
	for {
		select {
		case l := <-ch:
			// A follower may wait for hours; each line gets its own
			// write deadline.
			rc.SetWriteDeadline(time.Now().Add(adminWriteTimeout))
			line(l)
			rc.Flush()
		case <-r.Context().Done():
			return
		case <-s.stopPool:
			return
		}
	}
}

func (s *Server) liveMachines() int {
	live, _ := s.global.stats()
	return live
}
