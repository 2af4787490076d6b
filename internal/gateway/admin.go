package gateway

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dust-run/dust/internal/cluster"
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
	mux.HandleFunc("GET /v1/info", auth(s.apiInfo))
	mux.HandleFunc("GET /v1/cluster", auth(s.apiCluster))
	mux.HandleFunc("GET /v1/apps/{name}/secrets", auth(s.apiSecrets))
	mux.HandleFunc("POST /v1/apps/{name}/secrets", auth(s.apiSecrets))
	mux.HandleFunc("GET /v1/apps", auth(s.apiList))
	mux.HandleFunc("GET /v1/apps/{name}", auth(s.apiGet))
	mux.HandleFunc("PUT /v1/apps/{name}", auth(s.apiDeploy))
	mux.HandleFunc("POST /v1/apps/{name}/rollback", auth(s.apiRollback))
	mux.HandleFunc("DELETE /v1/apps/{name}", auth(s.apiDelete))
	mux.HandleFunc("POST /v1/gc", auth(s.apiGC))
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
	case errors.Is(err, store.ErrImageTooLarge), errors.Is(err, store.ErrLayerTooLarge), errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, machine.ErrBadImage), errors.Is(err, machine.ErrBadLimits), errors.Is(err, store.ErrBadLayer):
		return http.StatusUnprocessableEntity
	case errors.Is(err, store.ErrInvalid), errors.Is(err, errBadSetting):
		return http.StatusBadRequest
	case errors.Is(err, errUploadTimeout):
		return http.StatusRequestTimeout
	case errors.Is(err, cluster.ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func (s *Server) apiError(w http.ResponseWriter, err error) {
	writeJSON(w, adminStatus(err), map[string]string{"error": err.Error()})
}

var errBadSetting = errors.New("bad setting")

// SecretHeader carries one secret of a deploy, NAME=VALUE with VALUE
// query-escaped. A header rather than a query parameter: URLs end up in
// proxy logs and shell history far more often than headers do.
const SecretHeader = "Dust-Secret"

// patchFromQuery reads what a deploy sets from its query parameters. A
// parameter that is absent is not set, and is inherited from the current
// version; one that is present with an empty or zero value asks for the
// default.
func patchFromQuery(q url.Values) (store.Patch, error) {
	var p store.Patch
	get := func(k string) (string, bool) {
		if v, ok := q[k]; ok && len(v) > 0 {
			return v[len(v)-1], true
		}
		return "", false
	}
	bad := func(k, v string, want string) error {
		return fmt.Errorf("%w: %s=%q: want %s", errBadSetting, k, v, want)
	}
	if v, ok := get("route"); ok {
		p.Route = &v
	}
	if v, ok := get("host"); ok {
		p.Host = &v
	}
	for _, f := range []struct {
		k string
		p **int64
	}{{"memory", &p.Memory}, {"max_body", &p.MaxBody}} {
		if v, ok := get(f.k); ok {
			n, err := ParseSize(v)
			if err != nil {
				return p, bad(f.k, v, "a size such as 16MiB, 512KiB or a number of bytes")
			}
			*f.p = &n
		}
	}
	for _, f := range []struct {
		k string
		p **int
	}{{"max_concurrency", &p.MaxConcurrency}, {"queue_len", &p.QueueLen}} {
		if v, ok := get(f.k); ok {
			n := 0
			if v != "" {
				var err error
				if n, err = strconv.Atoi(v); err != nil {
					return p, bad(f.k, v, "a whole number")
				}
			}
			*f.p = &n
		}
	}
	for _, f := range []struct {
		k string
		p **time.Duration
	}{{"timeout", &p.Timeout}, {"queue_wait", &p.QueueWait}} {
		if v, ok := get(f.k); ok {
			var d time.Duration
			if v != "" && v != "0" {
				var err error
				if d, err = time.ParseDuration(v); err != nil {
					return p, bad(f.k, v, "a duration such as 2s or 500ms")
				}
			}
			*f.p = &d
		}
	}
	if v, ok := get("pass_authorization"); ok {
		b := false
		if v != "" {
			var err error
			if b, err = strconv.ParseBool(v); err != nil {
				return p, bad("pass_authorization", v, "true or false")
			}
		}
		p.PassAuthorization = &b
	}
	if v, ok := get("isolation"); ok {
		v = strings.ToLower(v)
		if !machine.ValidIsolation(v) {
			return p, bad("isolation", v, machine.IsolationRestore+" or "+machine.IsolationFresh)
		}
		p.Isolation = &v
	}
	if v, ok := get("serve"); ok {
		v = strings.ToLower(v)
		if v != store.ServeCGI && v != store.ServeHTTP && v != "" {
			return p, bad("serve", v, store.ServeCGI+" or "+store.ServeHTTP)
		}
		if v == store.ServeCGI {
			v = ""
		}
		p.Serve = &v
	}
	p.SetEnv = q["env"]
	p.UnsetEnv = q["unset_env"]
	if err := argsFromQuery(q, &p); err != nil {
		return p, err
	}
	return p, nil
}

// secretsFromHeader reads a deploy's secrets (see SecretHeader).
func secretsFromHeader(h http.Header) (store.SecretChange, error) {
	var sc store.SecretChange
	for _, kv := range h.Values(SecretHeader) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return sc, fmt.Errorf("%w: %s header: want NAME=VALUE", errBadSetting, SecretHeader)
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			return sc, fmt.Errorf("%w: %s header for %s: the value is not query-escaped", errBadSetting, SecretHeader, k)
		}
		if sc.Set == nil {
			sc.Set = map[string]string{}
		}
		sc.Set[k] = val
	}
	return sc, nil
}

// settingsFromQuery reads a whole set of deploy settings, as a first
// deploy of an app named name would get them from the query.
func settingsFromQuery(name string, q url.Values) (store.Settings, error) {
	p, err := patchFromQuery(q)
	if err != nil {
		return store.Settings{}, err
	}
	set, err := p.Apply(newAppSettings(name))
	if err != nil {
		return set, err
	}
	if set.Route == "" {
		set.Route = newAppSettings(name).Route // route= asks for the default
	}
	set = set.Normalize()
	return set, set.Validate()
}

// newAppSettings is what a first deploy starts from: the route is the
// app's name, everything else the default.
func newAppSettings(name string) store.Settings { return store.Settings{Route: "/" + name} }

// DeployResult is the admin API's answer to a deploy or rollback.
type DeployResult struct {
	AppView
	// Unchanged: the image and the settings were those of the current
	// version, so no version was made.
	Unchanged bool `json:"unchanged"`
	// Previous is the version that was current before (0: none).
	Previous int `json:"previous,omitempty"`
}

func (s *Server) apiDeploy(w http.ResponseWriter, r *http.Request) {
	p, err := patchFromQuery(r.URL.Query())
	if err != nil {
		s.apiError(w, err)
		return
	}
	sc, err := secretsFromHeader(r.Header)
	if err != nil {
		s.apiError(w, err)
		return
	}
	name := r.PathValue("name")
	r.Body = http.MaxBytesReader(w, r.Body, s.maxDeployBody())
	res, err := s.deployRequest(name, r, p, sc)
	// Preparing may have taken longer than a response should.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(adminWriteTimeout))
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: the image did not arrive within %v", errUploadTimeout, adminUploadTimeout)
		}
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
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
	if len(removed) > 0 {
		s.pruneKinds()
	}
}

// pruneKinds has every kind that keeps per-image state on disk (the wasm
// compilation cache) drop what belongs to images no version of any app
// uses any more. The caller holds pinMu, so deploys in progress are in
// pins and their images are kept.
func (s *Server) pruneKinds() int64 {
	apps, err := s.store.List()
	if err != nil {
		s.log.Warn("pruning: listing apps", "err", err)
		return 0
	}
	var total int64
	keep := make([]string, 0, len(apps)+len(s.pins))
	for _, a := range apps {
		for _, v := range a.History {
			keep = append(keep, v.Digest)
		}
	}
	for d := range s.pins {
		keep = append(keep, d)
	}
	for name, k := range s.cfg.Kinds {
		p, ok := k.(machine.Pruner)
		if !ok {
			continue
		}
		freed, err := p.Prune(keep)
		if err != nil {
			s.log.Warn("pruning", "kind", name, "err", err)
		}
		if freed > 0 {
			s.log.Info("pruned per-image state", "kind", name, "bytes", freed)
		}
		total += freed
	}
	return total
}

// GCResult is what a manual GC gave back.
type GCResult struct {
	ImagesRemoved int    `json:"images_removed"`
	ImageBytes    string `json:"image_bytes_freed"`
	CompiledBytes string `json:"compiled_code_freed"`
}

// GC removes now what the hourly GC would: images no version of any app
// uses (older than store.GCGrace, so uploads in flight are safe), and the
// per-kind state of images no kept version uses.
func (s *Server) GC() (GCResult, error) {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	before := s.imageBytes()
	removed, err := s.store.GC()
	freed := s.pruneKinds()
	res := GCResult{ImagesRemoved: len(removed), ImageBytes: FormatSize(max(before-s.imageBytes(), 0)), CompiledBytes: FormatSize(freed)}
	return res, err
}

// imageBytes is the disk the store's images take.
func (s *Server) imageBytes() int64 {
	var n int64
	filepath.WalkDir(filepath.Join(s.store.Dir(), "images"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func (s *Server) apiGC(w http.ResponseWriter, r *http.Request) {
	res, err := s.GC()
	if err != nil {
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
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
		s.pruneKinds()
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
// it with exactly the settings set. Until the switch the previous version
// keeps serving; if any step fails, nothing changes.
func (s *Server) Deploy(name string, image io.Reader, set store.Settings) (store.App, error) {
	res, err := s.deploy(name, func(st *staged) error { return s.stageImage(st, image) },
		func(store.Settings, *staged) (store.Settings, error) { return set, nil }, store.SecretChange{})
	return res.app, err
}

// DeployPatch is Deploy for the admin API: the settings p does not give
// are those of the current version, and sc changes the app's secrets. An
// image and settings identical to the current version's make no version.
func (s *Server) DeployPatch(name string, image io.Reader, p store.Patch, sc store.SecretChange) (DeployResult, error) {
	return s.deployStaged(name, func(st *staged) error { return s.stageImage(st, image) }, p, sc)
}

// deployRequest is DeployPatch for a deploy request whose body is the
// image or a multipart body with the image and a files layer (files.go).
func (s *Server) deployRequest(name string, r *http.Request, p store.Patch, sc store.SecretChange) (DeployResult, error) {
	return s.deployStaged(name, func(st *staged) error { return s.stageBody(st, r) }, p, sc)
}

func (s *Server) deployStaged(name string, body func(*staged) error, p store.Patch, sc store.SecretChange) (DeployResult, error) {
	settings := func(base store.Settings, st *staged) (store.Settings, error) {
		if st != nil && st.files != "" {
			if p.Files != nil {
				return base, fmt.Errorf("%w: files= and a files part in the body: give the app's files one way", errBadSetting)
			}
			q := p
			q.Files = &st.files
			return q.Apply(base)
		}
		return p.Apply(base)
	}
	res, err := s.deploy(name, body, settings, sc)
	if err != nil {
		return DeployResult{}, err
	}
	return DeployResult{AppView: s.viewOf(res.app, false), Unchanged: res.unchanged, Previous: res.previous}, nil
}

type deployed struct {
	app       store.App
	unchanged bool
	previous  int
}

// deploy stores what body uploads (the image, maybe a files layer), then
// applies settings (given what was uploaded) to the current version's and
// deploys. settings gets a nil *staged for the check before the upload.
func (s *Server) deploy(name string, body func(*staged) error, settings func(store.Settings, *staged) (store.Settings, error), sc store.SecretChange) (deployed, error) {
	if err := store.ValidateName(name); err != nil {
		return deployed{}, err
	}
	// Checked before the upload too, so that a bad setting is refused
	// without waiting for the image; again under the lock, where it counts.
	if _, _, err := s.effectiveSettings(name, func(b store.Settings) (store.Settings, error) { return settings(b, nil) }); err != nil {
		return deployed{}, err
	}
	// The upload is read and stored before the deploy lock is taken: a
	// slow uploader must not hold up every other deploy, rollback and rm.
	st := &staged{}
	defer st.release()
	err := body(st)
	if err == nil {
		s.deployMu.Lock()
		defer s.deployMu.Unlock()
		var set store.Settings
		var cur *store.App
		set, cur, err = s.effectiveSettings(name, func(b store.Settings) (store.Settings, error) { return settings(b, st) })
		if err == nil {
			var res deployed
			res, err = s.deployLocked(name, st.image, set, sc, cur)
			if err == nil {
				return res, nil
			}
		}
	}
	st.release()
	s.dropImages(st.uploaded()...)
	return deployed{}, err
}

// effectiveSettings applies settings to app name's current settings (a
// new app's defaults if there is none), and returns the current app too
// (nil: none).
func (s *Server) effectiveSettings(name string, settings func(store.Settings) (store.Settings, error)) (store.Settings, *store.App, error) {
	base := newAppSettings(name)
	var cur *store.App
	a, err := s.store.Get(name)
	switch {
	case err == nil:
		base, cur = a.Current.Settings, &a
	case !errors.Is(err, store.ErrNotFound):
		return store.Settings{}, nil, err
	}
	set, err := settings(base)
	if err != nil {
		return set, nil, err
	}
	if set.Route == "" {
		set.Route = newAppSettings(name).Route // route= asks for the default
	}
	set = set.Normalize()
	return set, cur, set.Validate()
}

func (s *Server) deployLocked(name, digest string, set store.Settings, sc store.SecretChange, cur *store.App) (deployed, error) {
	if cur != nil && cur.Current.Digest == digest && cur.Current.Settings.Equal(set) && s.isLive(name, cur.Current.Number) {
		if !sc.Empty() {
			if err := s.changeSecrets(name, sc); err != nil {
				return deployed{}, err
			}
		}
		return deployed{app: *cur, unchanged: true, previous: cur.Current.Number}, nil
	}
	b, err := s.store.ReadImage(digest, s.cfg.MaxImageSize)
	if err != nil {
		return deployed{}, err
	}
	kind, err := s.cfg.Detect(b)
	if err != nil {
		return deployed{}, err
	}
	// Refuse a route another app holds before the (slow) prepare.
	if err := s.routeFree(name, set); err != nil {
		return deployed{}, err
	}
	var secrets map[string]string
	if set.Serve == store.ServeHTTP && (len(sc.Set) > 0 || len(sc.Unset) > 0) {
		// A server reads its secrets once, at start-up: with the change.
		cur, err := s.store.Secrets(name)
		if err != nil {
			return deployed{}, err
		}
		if secrets, err = sc.ApplyTo(name, cur, set.Env); err != nil {
			return deployed{}, err
		}
	}
	la, err := s.prepareWith(store.App{Name: name, Current: store.Version{Kind: kind, Digest: digest, Settings: set}}, secrets)
	if err != nil {
		return deployed{}, err
	}
	app, err := s.commitDeploy(name, kind, digest, set, sc, cur)
	if err == nil {
		// The deploy's own secrets were committed with it, after prepare.
		err = s.loadSecrets(la)
	}
	if err != nil {
		la.pool.Close()
		la.img.Close()
		return deployed{}, err
	}
	la.version = app.Current.Number
	s.swap(name, la)
	s.log.Info("deployed", "app", name, "version", la.version, "kind", kind, "digest", digest, "route", set.Route, "host", set.Host)
	// Versions pushed out of the history give their disk back now.
	if old := agedOut(cur, app); len(old) > 0 {
		s.dropImages(old...)
	}
	res := deployed{app: app}
	if cur != nil {
		res.previous = cur.Current.Number
	}
	return res, nil
}

// isLive reports whether version of app name is the one serving: only
// then is an identical redeploy a no-op (an app that failed to load at
// start-up deserves the new attempt).
func (s *Server) isLive(name string, version int) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a := s.apps[name]
	return a != nil && a.version == version
}

// changeSecrets changes app name's secrets in the store and on its live
// version: the next request sees them, no redeploy needed.
func (s *Server) changeSecrets(name string, sc store.SecretChange) error {
	if err := s.commitSecrets(name, sc); err != nil {
		return err
	}
	s.mu.RLock()
	a := s.apps[name]
	s.mu.RUnlock()
	if a != nil && a.isServer() {
		// A server took its secrets at start-up: start it again.
		return s.reprepare(name)
	}
	if a != nil {
		return s.loadSecrets(a)
	}
	return nil
}

// reprepare prepares app name's current version again and swaps it in.
func (s *Server) reprepare(name string) error {
	app, err := s.store.Get(name)
	if err != nil {
		return err
	}
	la, err := s.prepare(app)
	if err != nil {
		return err
	}
	la.version = app.Current.Number
	s.swap(name, la)
	return nil
}

// apiSecrets lists (GET) or changes (POST, a JSON body
// {"set": {"NAME": "VALUE"}, "unset": ["NAME"]}) an app's secrets. Only
// names ever come back.
func (s *Server) apiSecrets(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.Method == http.MethodPost {
		var sc store.SecretChange
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&struct {
			Set   *map[string]string `json:"set"`
			Unset *[]string          `json:"unset"`
		}{&sc.Set, &sc.Unset}); err != nil {
			s.apiError(w, fmt.Errorf("%w: body: want {\"set\": {\"NAME\": \"VALUE\"}, \"unset\": [\"NAME\"]}", errBadSetting))
			return
		}
		s.deployMu.Lock()
		err := s.changeSecrets(name, sc)
		s.deployMu.Unlock()
		if err != nil {
			s.apiError(w, err)
			return
		}
		s.log.Info("secrets changed", "app", name, "set", len(sc.Set), "removed", len(sc.Unset))
	}
	names, err := s.store.SecretNames(name)
	if err == nil {
		_, err = s.store.Get(name)
	}
	if err != nil {
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"app": name, "secrets": nonNil(names)})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
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
	to := 0
	if v := r.URL.Query().Get("to"); v != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(v, "v"))
		if err != nil || n < 1 {
			s.apiError(w, fmt.Errorf("%w: to=%q: want a version number such as 3", errBadSetting, v))
			return
		}
		to = n
	}
	name := r.PathValue("name")
	prev := 0
	if a, err := s.store.Get(name); err == nil {
		prev = a.Current.Number
	}
	app, err := s.RollbackTo(name, to)
	if err != nil {
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, DeployResult{AppView: s.viewOf(app, false), Previous: prev})
}

// Rollback makes the version before the current one current again. The
// previous version is prepared before the switch.
func (s *Server) Rollback(name string) (store.App, error) { return s.RollbackTo(name, 0) }

// RollbackTo makes version n current again, image and settings (n == 0:
// the version before the current one). It is prepared before the switch.
func (s *Server) RollbackTo(name string, n int) (store.App, error) {
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	cur, err := s.store.Get(name)
	if err != nil {
		return store.App{}, err
	}
	prev, err := cur.RollbackTargetTo(n)
	if err != nil {
		return store.App{}, err
	}
	if err := s.routeFree(name, prev.Settings); err != nil {
		return store.App{}, err
	}
	if err := s.fetchVersion(prev); err != nil {
		return store.App{}, err
	}
	la, err := s.prepare(store.App{Name: name, Current: prev})
	if err != nil {
		return store.App{}, err
	}
	app, err := s.commitRollback(name, n, cur, prev)
	if err != nil {
		la.pool.Close()
		la.img.Close()
		return store.App{}, err
	}
	la.version = app.Current.Number
	la.set = appDefaults(app.Current.Settings)
	s.swap(name, la)
	s.log.Info("rolled back", "app", name, "version", la.version, "from", cur.Current.Number)
	return app, nil
}

func (s *Server) apiDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := s.Remove(name); err != nil {
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"deleted": name})
}

// Remove deletes app name: its versions, its logs, and the disk its images
// and their per-kind state (compiled code) took, unless another app uses
// them. Requests already running finish.
func (s *Server) Remove(name string) error {
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	old, err := s.store.Get(name)
	if err == nil {
		err = s.commitRemove(name, old)
	}
	if err != nil {
		return err
	}
	s.swap(name, nil)
	s.logs.remove(name)
	s.dropImages(blobsOf(old)...)
	return nil
}

// AppStatus is what the admin API reports about a live app.
type AppStatus struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Version int    `json:"version"`
	Digest  string `json:"digest"`
	Route   string `json:"route"`
	Host    string `json:"host,omitempty"`
	URL     string `json:"url,omitempty"`
	Live    int    `json:"live_machines"`
	Queued  int64  `json:"queued"`
	// Isolation is the mode the app asked for (the default resolved);
	// EffectiveIsolation the one its machines get, "fresh" for a kind
	// that cannot restore (wasm).
	Isolation          string      `json:"isolation"`
	EffectiveIsolation string      `json:"effective_isolation"`
	Pool               machinePool `json:"pool"`
	Histogram          []int64     `json:"latency_histogram"`
	Requests           int64       `json:"requests"`
	// P50 is the histogram bucket holding the median latency of this
	// version's requests, e.g. "<1ms" ("" before the first request).
	P50 string `json:"p50,omitempty"`
	// Limits are the limits the version runs with, defaults resolved.
	Limits LimitsView `json:"limits"`
	// Secrets are the names of the app's secrets; values are never shown.
	Secrets []string `json:"secrets"`
}

type machinePool struct {
	Ready  int   `json:"ready"`
	Target int   `json:"target"`
	Hits   int64 `json:"hits"`
	Misses int64 `json:"misses"`
	Errors int64 `json:"errors"`
	// Restored counts machines reset and reused after a request;
	// RestoreErrors those whose reset failed and were destroyed.
	Restored      int64 `json:"restored"`
	RestoreErrors int64 `json:"restore_errors"`
}

// LimitsView is a live version's limits with the defaults resolved, in the
// forms a user types (16MiB, 2s).
type LimitsView struct {
	Memory         string `json:"memory"`
	Timeout        string `json:"timeout"`
	MaxConcurrency int    `json:"max_concurrency"`
	QueueLen       int    `json:"queue_len"`
	QueueWait      string `json:"queue_wait"`
	MaxBody        string `json:"max_body"`
}

// SettingsView is a version's settings as they were given: a field left
// out is the default. Env values are shown (they are configuration);
// secrets are not settings and never appear here.
type SettingsView struct {
	Route             string   `json:"route"`
	Host              string   `json:"host,omitempty"`
	Memory            string   `json:"memory,omitempty"`
	Timeout           string   `json:"timeout,omitempty"`
	MaxConcurrency    int      `json:"max_concurrency,omitempty"`
	QueueLen          int      `json:"queue_len,omitempty"`
	QueueWait         string   `json:"queue_wait,omitempty"`
	MaxBody           string   `json:"max_body,omitempty"`
	PassAuthorization bool     `json:"pass_authorization,omitempty"`
	Env               []string `json:"env,omitempty"`
	Isolation         string   `json:"isolation,omitempty"`
	// Args are the fixed arguments after argv[0]; QueryArgs says whether
	// the query's items follow them (WAGI's convention, opted in).
	Args      []string `json:"args,omitempty"`
	QueryArgs bool     `json:"query_args,omitempty"`
	// Files is the digest of the files layer at /app; FilesSize its size
	// on disk (the current version's only).
	Files     string `json:"files,omitempty"`
	FilesSize string `json:"files_size,omitempty"`
	// Serve is "http" for a server app; absent for CGI.
	Serve string `json:"serve,omitempty"`
}

// VersionView is one kept version of an app.
type VersionView struct {
	Version   int          `json:"version"`
	Kind      string       `json:"kind"`
	Digest    string       `json:"digest"`
	Size      string       `json:"size"`
	CreatedAt time.Time    `json:"created_at"`
	Settings  SettingsView `json:"settings"`
	Current   bool         `json:"current,omitempty"`
}

// AppView is an app as the admin API shows it: GET /v1/apps lists them,
// GET /v1/apps/NAME adds the versions and recent failures.
type AppView struct {
	Name     string        `json:"name"`
	Version  int           `json:"version"`
	Kind     string        `json:"kind"`
	Digest   string        `json:"digest"`
	Size     string        `json:"size"`
	URL      string        `json:"url"`
	Settings SettingsView  `json:"settings"`
	Secrets  []string      `json:"secrets"`
	Versions []VersionView `json:"versions,omitempty"`
	// Status is absent when the app is not live (it failed to load).
	Status *AppStatus `json:"status,omitempty"`
	// Failures are the last failed requests, newest first, from the
	// app's log (logHub.failures).
	Failures []Failure `json:"recent_failures,omitempty"`
}

func settingsView(set store.Settings) SettingsView {
	v := SettingsView{Route: set.Route, Host: set.Host, MaxConcurrency: set.MaxConcurrency, QueueLen: set.QueueLen,
		PassAuthorization: set.PassAuthorization, Env: set.Env, Isolation: set.Isolation,
		Args: set.Args, QueryArgs: set.QueryArgs, Files: set.Files, Serve: set.Serve}
	if set.Memory > 0 {
		v.Memory = FormatSize(set.Memory)
	}
	if set.MaxBody > 0 {
		v.MaxBody = FormatSize(set.MaxBody)
	}
	if set.Timeout > 0 {
		v.Timeout = set.Timeout.String()
	}
	if set.QueueWait > 0 {
		v.QueueWait = set.QueueWait.String()
	}
	return v
}

// appURL is where an app with settings set answers.
func (s *Server) appURL(set store.Settings) string {
	base := s.cfg.PublicURL
	if base == "" {
		return ""
	}
	if set.Host != "" {
		if u, err := url.Parse(base); err == nil {
			if port := u.Port(); port != "" {
				u.Host = net.JoinHostPort(set.Host, port)
			} else {
				u.Host = set.Host
			}
			base = u.String()
		}
	}
	if set.Route == "/" {
		return base + "/"
	}
	return base + set.Route
}

// viewOf is app as the API shows it; full adds versions and failures.
func (s *Server) viewOf(app store.App, full bool) AppView {
	v := app.Current
	names, err := s.store.SecretNames(app.Name)
	if err != nil {
		s.log.Warn("reading secret names", "app", app.Name, "err", err)
	}
	out := AppView{Name: app.Name, Version: v.Number, Kind: v.Kind, Digest: v.Digest, Size: FormatSize(v.Size),
		URL: s.appURL(v.Settings), Settings: settingsView(v.Settings), Secrets: nonNil(names)}
	if f := v.Settings.Files; f != "" {
		if n, err := s.store.StatImage(f); err == nil {
			out.Settings.FilesSize = FormatSize(n)
		}
	}
	s.mu.RLock()
	if a := s.apps[app.Name]; a != nil {
		st := s.statusOf(a)
		out.Status = &st
	}
	s.mu.RUnlock()
	if full {
		for i := len(app.History) - 1; i >= 0; i-- {
			h := app.History[i]
			out.Versions = append(out.Versions, VersionView{Version: h.Number, Kind: h.Kind, Digest: h.Digest,
				Size: FormatSize(h.Size), CreatedAt: h.CreatedAt, Settings: settingsView(h.Settings), Current: h.Number == v.Number})
		}
		fails, err := s.logs.failures(app.Name, recentFailures)
		if err != nil {
			s.log.Warn("reading recent failures from the app's log", "app", app.Name, "err", err)
		}
		out.Failures = fails
	}
	return out
}

func (s *Server) statusOf(a *liveApp) AppStatus {
	st := a.pool.Stats()
	lim := a.img.Limits()
	hist := a.hist.snapshot()
	out := AppStatus{
		Name: a.name, Kind: a.kind, Version: a.version, Digest: a.digest, Route: a.set.Route, Host: a.set.Host,
		URL:  s.appURL(a.set),
		Live: a.gate.live(), Queued: a.gate.waiting.Load(),
		Isolation: a.set.IsolationMode(), EffectiveIsolation: a.isolation(),
		Pool: machinePool{Ready: st.Ready, Target: st.Target, Hits: st.Hits, Misses: st.Misses, Errors: st.CreateErrors,
			Restored: st.Restored, RestoreErrors: st.RestoreErrors},
		Histogram: hist,
		Limits: LimitsView{Memory: FormatSize(lim.Memory), Timeout: lim.Timeout.String(), MaxConcurrency: a.set.MaxConcurrency,
			QueueLen: a.set.QueueLen, QueueWait: a.set.QueueWait.String(), MaxBody: FormatSize(a.set.MaxBody)},
		Secrets: []string{},
	}
	if se := a.secrets.Load(); se != nil {
		out.Secrets = nonNil(se.names)
	}
	for _, n := range hist {
		out.Requests += n
	}
	out.P50 = quantile(hist, 0.5)
	return out
}

func (s *Server) apiStatus(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	apps := make([]StatusApp, 0, len(s.apps))
	now := time.Now()
	for _, a := range s.routes {
		st := s.statusOf(a)
		apps = append(apps, StatusApp{AppStatus: st, LiveFigures: s.met.liveFigures(a, st.Histogram, now)})
	}
	s.mu.RUnlock()
	s.errMu.Lock()
	errs := append([]recentError(nil), s.errors...)
	s.errMu.Unlock()
	writeCompactJSON(w, map[string]any{"apps": apps, "errors": errs, "buckets": bucketLabels(), "live": s.liveMachines(),
		"url": s.cfg.PublicURL, "app_addr": s.cfg.AppAddr, "cluster": s.clusterStatus(r.Context())})
}

// Info is what GET /v1/info reports: where apps answer, and the build.
type Info struct {
	Version   string `json:"version"`
	AppAddr   string `json:"app_addr"`
	URL       string `json:"url"`
	LogCap    string `json:"log_cap"`
	DataDir   string `json:"data_dir"`
	StartedAt string `json:"started_at,omitempty"`
}

func (s *Server) apiInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Info{Version: s.cfg.Version, AppAddr: s.cfg.AppAddr, URL: s.cfg.PublicURL,
		LogCap: FormatSize(s.cfg.LogCap), DataDir: s.cfg.DataDir})
}

func (s *Server) apiList(w http.ResponseWriter, r *http.Request) {
	apps, err := s.store.List()
	if err != nil {
		s.apiError(w, err)
		return
	}
	out := make([]AppView, 0, len(apps))
	for _, a := range apps {
		out = append(out, s.viewOf(a, false))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) apiGet(w http.ResponseWriter, r *http.Request) {
	app, err := s.store.Get(r.PathValue("name"))
	if err != nil {
		s.apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.viewOf(app, true))
}

// parseSince reads the logs since= parameter: a duration back from now
// (10m) or a time (RFC 3339).
func parseSince(v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%w: since=%q: want a duration such as 10m or a time such as 2024-05-01T12:00:00Z", errBadSetting, v)
}

func (s *Server) apiLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := s.store.Get(name); err != nil {
		s.apiError(w, err)
		return
	}
	q := r.URL.Query()
	since, err := parseSince(q.Get("since"), time.Now())
	if err != nil {
		s.apiError(w, err)
		return
	}
	asJSON := q.Get("format") == "json"
	var ch <-chan LogLine
	if q.Get("follow") != "" {
		// Subscribed before the past is read: a line written in between
		// may then come twice, never not at all.
		c, stop := s.logs.follow(name)
		defer stop()
		ch = c
	}
	past, err := s.logs.recent(name, since)
	if err != nil {
		s.apiError(w, err)
		return
	}
	if asJSON {
		w.Header().Set("Content-Type", "application/x-ndjson")
	} else {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	var buf bytes.Buffer
	line := func(l LogLine) {
		buf.Reset()
		if asJSON {
			json.NewEncoder(&buf).Encode(l)
		} else {
			fmt.Fprintf(&buf, "%s %s %s\n", l.Time.Format(time.RFC3339Nano), l.RequestID, l.Line)
		}
		w.Write(buf.Bytes())
	}
	var last time.Time
	for _, l := range past {
		line(l)
		last = l.Time
	}
	if ch == nil {
		return
	}
	rc := http.NewResponseController(w)
	rc.Flush()
	for {
		select {
		case l := <-ch:
			if !l.Time.After(last) && !last.IsZero() {
				continue // already sent with the past
			}
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
