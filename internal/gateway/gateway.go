// Package gateway is Dust's HTTP front: it maps routes to deployed apps and
// serves every request on a pristine machine of the app's kind, streaming
// the CGI response back; afterwards the machine is restored to its
// template state or destroyed, per the app's isolation mode. It also
// serves the admin API (deploy, rollback, logs, metrics) on a separate
// listener, guarded by a bearer token.
package gateway

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
)

// Config configures a Server. Zero values take the defaults below.
type Config struct {
	DataDir string
	// Kinds maps a kind name ("hvt", "wasm") to its implementation; Detect
	// names the kind of an image from its bytes.
	Kinds  map[string]machine.Kind
	Detect func(image []byte) (string, error)
	Logger *slog.Logger

	MaxLive        int           // global cap on live machines (default 256)
	GlobalQueue    int           // requests waiting for a global slot (default 1024)
	PoolFloor      int           // ready machines an idle app keeps (0 = scale to zero; dust serve defaults to 1)
	PoolMax        int           // ready machines a busy app may keep (default 32)
	MaxIdle        int           // ready machines all apps together may keep (default 256)
	MaxImageSize   int64         // largest image accepted by deploy (default 256 MiB)
	MaxHeaderBytes int           // request header limit (default 64 KiB)
	ShutdownGrace  time.Duration // in-flight requests get this long at shutdown (default 10s)
	// ReadHeaderTimeout bounds how long a client may take to send its
	// request header (default 5s): slowloris clients are cut off.
	ReadHeaderTimeout time.Duration
	// HoldTime is how long a response's head is held back, at most, in
	// case the machine fails right after writing it (default 10ms; see
	// holdWriter).
	HoldTime time.Duration
	// FairReserve is how many of the MaxLive slots only apps holding
	// fewer than FairGuarantee machines may take (defaults MaxLive/4 and
	// 4): no app's clients can starve the others. See fairGate.
	FairReserve   int
	FairGuarantee int
	// MaxPerClient caps the requests one client address has in the
	// gateway at once, body reading and queueing included (default 1024;
	// -1 for no cap). Beyond it: 429.
	MaxPerClient int
	// IdleTimeout closes keep-alive connections idle this long (default 30s).
	IdleTimeout time.Duration
	// AppAddr is the address the app listener is bound to, and PublicURL
	// the base URL apps are reached at (default http://AppAddr): the admin
	// API reports both so that a deploy can say where its app answers.
	AppAddr   string
	PublicURL string
	// Version is the build's version, reported by /v1/info.
	Version string
	// LogCap is the disk one app's log may take (default DefaultLogCap);
	// beyond it the oldest half is dropped.
	LogCap int64
	// Cluster, when set, makes this gateway one node of a cluster
	// (cluster.go); nil is a single node.
	Cluster Cluster
}

// App defaults, used when a deploy does not set them.
const (
	DefaultMaxConcurrency = 16
	DefaultQueueLen       = 64
	DefaultQueueWait      = 2 * time.Second
	DefaultMaxBody        = 64 << 20
)

func (c *Config) defaults() {
	if c.MaxLive <= 0 {
		c.MaxLive = 256
	}
	if c.GlobalQueue <= 0 {
		c.GlobalQueue = 1024
	}
	if c.PoolFloor < 0 {
		c.PoolFloor = 0
	}
	if c.PoolMax <= 0 {
		c.PoolMax = 32
	}
	if c.MaxIdle <= 0 {
		c.MaxIdle = 256
	}
	if c.MaxImageSize <= 0 {
		c.MaxImageSize = 256 << 20
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	if c.HoldTime <= 0 {
		c.HoldTime = 10 * time.Millisecond
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = 5 * time.Second
	}
	if c.FairReserve <= 0 {
		c.FairReserve = c.MaxLive / 4
	}
	if c.FairGuarantee <= 0 {
		c.FairGuarantee = 4
	}
	if c.MaxPerClient == 0 {
		c.MaxPerClient = 1024
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 30 * time.Second
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if c.LogCap <= 0 {
		c.LogCap = DefaultLogCap
	}
	if c.PublicURL == "" && c.AppAddr != "" {
		host, port, err := net.SplitHostPort(c.AppAddr)
		if err == nil {
			// A wildcard bind is reachable on loopback; "0.0.0.0" in a URL
			// is not something to paste into a browser.
			if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
				host = "127.0.0.1"
			}
			c.PublicURL = "http://" + net.JoinHostPort(host, port)
		}
	}
	c.PublicURL = strings.TrimSuffix(c.PublicURL, "/")
}

// Server is a running gateway.
type Server struct {
	cfg     Config
	log     *slog.Logger
	store   *store.Store
	token   string
	global  *fairGate
	clients *clientLimiter
	met     *metrics
	logs    *logHub

	mu     sync.RWMutex
	apps   map[string]*liveApp
	routes []*liveApp // sorted: longest route first, host-specific before any-host

	deployMu sync.Mutex // one deploy/rollback/rm at a time
	pinMu    sync.Mutex
	pins     map[string]int // images uploaded by deploys in progress
	stopPool chan struct{}
	poolWG   sync.WaitGroup

	errMu  sync.Mutex
	errors []recentError

	clu *clusterGlue // nil: single node
}

type recentError struct {
	Time      time.Time `json:"time"`
	App       string    `json:"app"`
	RequestID string    `json:"request_id"`
	Status    int       `json:"status"`
	Reason    string    `json:"reason"`
}

// New opens the store under cfg.DataDir, loads the admin token (creating it
// on first start) and prepares every deployed app.
func New(cfg Config) (*Server, error) {
	cfg.defaults()
	if cfg.DataDir == "" {
		return nil, errors.New("gateway: no data directory")
	}
	st, err := store.Open(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	tok, err := loadToken(cfg.DataDir)
	if err != nil {
		st.Close()
		return nil, err
	}
	logs, err := newLogHub(filepath.Join(cfg.DataDir, "logs"), cfg.LogCap, cfg.Logger)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("gateway: app logs: %w", err)
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, store: st, token: tok,
		global:   newFairGate(cfg.MaxLive, cfg.GlobalQueue, cfg.FairReserve, cfg.FairGuarantee),
		clients:  newClientLimiter(cfg.MaxPerClient),
		met:      newMetrics(),
		logs:     logs,
		apps:     map[string]*liveApp{},
		pins:     map[string]int{},
		stopPool: make(chan struct{}),
	}
	s.clu = newClusterGlue(cfg.Cluster, s.met.reg)
	apps, err := st.List()
	if err != nil {
		st.Close()
		return nil, err
	}
	for _, a := range apps {
		la, err := s.prepare(a)
		if err != nil {
			// One broken app must not keep the others down.
			s.log.Error("app not loaded", "app", a.Name, "version", a.Current.Number, "err", err)
			continue
		}
		s.apps[a.Name] = la
		s.met.setAppInfo(la.name, la.kind, la.isolation())
	}
	s.rebuildRoutes()
	s.poolWG.Add(2)
	go s.sizePools()
	go s.collectGarbage()
	return s, nil
}

// Token is the admin bearer token.
func (s *Server) Token() string { return s.token }

// Store is the server's app store.
func (s *Server) Store() *store.Store { return s.store }

// TokenFile is where the admin token lives inside the data directory.
const TokenFile = "admin.token"

// loadToken reads the admin token, creating a random one (mode 0600) on
// first start.
func loadToken(dir string) (string, error) {
	p := filepath.Join(dir, TokenFile)
	b, err := os.ReadFile(p)
	if err == nil {
		t := strings.TrimSpace(string(b))
		if len(t) < 32 {
			return "", fmt.Errorf("gateway: %s holds a token shorter than 32 characters", p)
		}
		if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("gateway: %s is readable by others (mode %v); chmod 600 it", p, st.Mode().Perm())
		}
		return t, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 32)
	rand.Read(raw)
	t := hex.EncodeToString(raw)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(t + "\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	return t, f.Close()
}

// checkToken compares in constant time.
func (s *Server) checkToken(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	t, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(t), []byte(s.token)) == 1
}

// rebuildRoutes sorts the route table: longest prefix first, and for equal
// prefixes a host-specific app before an any-host one.
func (s *Server) rebuildRoutes() {
	rs := make([]*liveApp, 0, len(s.apps))
	for _, a := range s.apps {
		rs = append(rs, a)
	}
	sort.Slice(rs, func(i, j int) bool { return routeBefore(rs[i].set, rs[i].name, rs[j].set, rs[j].name) })
	s.routes = rs
}

// routeBefore is the route table's order: the longest route first, a
// host-specific app before an any-host one, then by name.
func routeBefore(a store.Settings, an string, b store.Settings, bn string) bool {
	if len(a.Route) != len(b.Route) {
		return len(a.Route) > len(b.Route)
	}
	if (a.Host == "") != (b.Host == "") {
		return a.Host != ""
	}
	return an < bn
}

// match finds the app for host and path: the longest route that is a whole
// path-segment prefix of path, host-specific apps first.
func (s *Server) match(host, path string) *liveApp {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(host)
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, a := range s.routes {
		if a.set.Host != "" && a.set.Host != host {
			continue
		}
		if routeMatches(a.set.Route, path) {
			a.inflight.Add(1) // under the read lock: a swap waits for us
			return a
		}
	}
	return nil
}

func routeMatches(route, path string) bool {
	if route == "/" {
		return true
	}
	if !strings.HasPrefix(path, route) {
		return false
	}
	return len(path) == len(route) || path[len(route)] == '/'
}

// Handler is the public (app) handler.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveApp) }

// AdminHandler is the admin API, status page and metrics.
func (s *Server) AdminHandler() http.Handler { return s.adminMux() }

// HTTPServers builds the two http.Servers with the timeouts that keep slow
// clients from holding connections. Serve the app server on Listener(l):
// without it the gateway cannot see a request's raw head and closes the
// connection after every chunked request instead of refusing the
// smuggling ones.
func (s *Server) HTTPServers(listen, admin string) (*http.Server, *http.Server) {
	mk := func(addr string, h http.Handler) *http.Server {
		return &http.Server{
			Addr: addr, Handler: h,
			ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
			IdleTimeout:       s.cfg.IdleTimeout,
			MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
			// "OPTIONS *" must reach the handler like every request, or
			// the head tap loses count of the connection's requests.
			DisableGeneralOptionsHandler: true,
		}
	}
	// No server-wide ReadTimeout or WriteTimeout: each request's own
	// deadline (its app's timeout) bounds reading its body and writing its
	// response, set per request in serveApp and the admin handlers.
	pub := mk(listen, s.Handler())
	pub.ConnContext = tapContext(s.cfg.MaxHeaderBytes)
	return pub, mk(admin, s.AdminHandler())
}

// Close destroys every machine and closes the store. Call it after the
// HTTP servers have shut down.
func (s *Server) Close() error {
	close(s.stopPool)
	s.poolWG.Wait()
	s.mu.Lock()
	apps := s.apps
	s.apps = map[string]*liveApp{}
	s.routes = nil
	s.mu.Unlock()
	for _, a := range apps {
		a.retire()
	}
	for _, a := range apps {
		a.wait()
	}
	s.logs.close()
	return s.store.Close()
}

// Shutdown stops http servers gracefully within the grace period, then
// closes the gateway.
func (s *Server) Shutdown(servers ...*http.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	var errs []error
	for _, hs := range servers {
		if err := hs.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.Close())
	return errors.Join(errs...)
}

func (s *Server) noteError(e recentError) {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	s.errors = append(s.errors, e)
	if len(s.errors) > 50 {
		s.errors = s.errors[len(s.errors)-50:]
	}
}
