// Package cluster makes several Dust nodes one cloud on NATS JetStream:
// app versions, settings and secrets in a replicated KV bucket, images in a
// replicated Object Store, membership as heartbeats in a KV bucket with a
// TTL, and placement of requests over NATS request/reply with one queue
// group per app. Each node keeps its own bbolt store (internal/store) as
// its materialised view of the shared state: the cluster replicates into
// it, so the gateway serves every request from local state exactly as a
// single node does. docs/cluster.md has the design and the failure model.
//
// A node either runs an embedded nats-server that joins its peers
// (Config.Listen, Config.Peers) or connects to an existing NATS cluster
// (Config.URL).
package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Errors returned (wrapped) by the cluster; test with errors.Is.
var (
	// ErrUnavailable: the shared state did not answer (no JetStream
	// quorum reachable from this node, or NATS is down). A change may or
	// may not have been recorded when it comes from a timeout.
	ErrUnavailable = errors.New("cluster unavailable")
	// ErrNoCapacity: no other node could take a forwarded request now.
	ErrNoCapacity = errors.New("no node with a free slot")
	// ErrNodeLost: the node serving a forwarded request stopped answering.
	ErrNodeLost = errors.New("serving node lost")
	// ErrForwardTimeout: a forwarded request ran out of its deadline.
	ErrForwardTimeout = errors.New("forwarded request timed out")
	// ErrConfig: a bad cluster setting (a flag); the message names it.
	ErrConfig = errors.New("bad cluster setting")
)

// Config configures a Node. Either URL or Listen is set.
type Config struct {
	// Name is this node's name, unique in the cluster (default: the host
	// name). It names the embedded server and the node in status pages.
	Name string
	// URL is an existing NATS cluster's URL list ("nats://a:4222,nats://b:4222").
	URL string
	// Creds is a NATS credentials file for URL; TLSCert, TLSKey and TLSCA
	// are PEM files for a TLS connection to URL (CA alone: verify the
	// server only).
	Creds, TLSCert, TLSKey, TLSCA string
	// Listen is the embedded server's cluster (route) address; Peers the
	// other nodes' route addresses ("host:port").
	Listen string
	Peers  []string
	// DataDir holds the embedded server's JetStream storage (DataDir/jetstream).
	DataDir string
	// MaxStore bounds the embedded server's JetStream disk (default 8 GiB);
	// MaxMemory its memory streams (default 64 MiB).
	MaxStore, MaxMemory int64
	// Replicas overrides the replica count (0: min(3, servers)).
	Replicas int
	// AppURL and AdminURL are where this node's listeners answer, for
	// the membership records.
	AppURL, AdminURL string
	Version          string
	Logger           *slog.Logger
	// JoinTimeout bounds how long Start waits for the shared state to be
	// reachable (default 60s): three nodes started together need a moment
	// to elect a JetStream leader.
	JoinTimeout time.Duration
}

// Node is one member of a cluster.
type Node struct {
	cfg      Config
	log      *slog.Logger
	srv      *server.Server // nil when connected to an external cluster
	nc       *nats.Conn
	js       jetstream.JetStream
	apps     jetstream.KeyValue
	nodes    jetstream.KeyValue
	images   jetstream.ObjectStore
	replicas int
	started  time.Time

	mu      sync.Mutex
	local   Local
	serving map[string]*nats.Subscription // app -> queue subscription while it has a free slot
	synced  bool                          // the first full pass over the apps bucket is delivered
	// seen is the highest apps-bucket revision the watch delivered.
	seen      uint64
	followers map[string]*follower
	known     map[string]known
	fetches   map[string]*fetchCall

	stop   chan struct{}
	wg     sync.WaitGroup
	closed sync.Once
	// inflight counts forwarded requests this node is serving.
	inflight sync.WaitGroup
	// serving counts them for the heartbeat.
	servingN atomic.Int64
}

// Buckets and subjects (docs/cluster.md).
const (
	appsBucket   = "dust_apps"
	nodesBucket  = "dust_nodes"
	imagesBucket = "dust_images"
	// subjectPrefix + app name is an app's request subject; queueGroup
	// is the queue every node serving the app joins, so NATS delivers
	// each request to one of them.
	subjectPrefix = "dust.req."
	queueGroup    = "dust"
	// maxRecord bounds an app record in the KV bucket (20 versions with
	// their environments and the secrets).
	maxRecord = 4 << 20
	// maxPayload is the embedded server's message limit: above maxRecord,
	// above a forwarded chunk.
	maxPayload = 8 << 20
)

// Heartbeat timing: a node writes its record every heartbeatEvery; the
// bucket drops a record nodeTTL after its last write, which is when the
// node counts as gone.
const (
	heartbeatEvery = time.Second
	nodeTTL        = 4 * time.Second
)

// ValidName checks a node name: it becomes a NATS server name and a KV
// key, so [A-Za-z0-9_-], 1 to 64 of them.
func ValidName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("%w: --node-name %q: want 1 to 64 characters", ErrConfig, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("%w: --node-name %q: character %q not allowed (want [A-Za-z0-9_-])", ErrConfig, name, c)
		}
	}
	return nil
}

func (c *Config) defaults() error {
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("%w: no --node-name and no host name: %v", ErrConfig, err)
		}
		c.Name = strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
				return r
			}
			return '-'
		}, h)
	}
	if err := ValidName(c.Name); err != nil {
		return err
	}
	if (c.URL == "") == (c.Listen == "") {
		return fmt.Errorf("%w: give either --nats URL (an existing NATS cluster) or --cluster-listen ADDRESS (an embedded one)", ErrConfig)
	}
	if c.URL != "" && len(c.Peers) > 0 {
		return fmt.Errorf("%w: --peers belongs to an embedded cluster (--cluster-listen), not to --nats", ErrConfig)
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return fmt.Errorf("%w: --cluster-listen %q: want host:port", ErrConfig, c.Listen)
		}
	}
	for _, p := range c.Peers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			return fmt.Errorf("%w: --peers %q: want host:port", ErrConfig, p)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("%w: --nats-tls-cert and --nats-tls-key go together", ErrConfig)
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		return fmt.Errorf("%w: replicas %d: want 1 to 5 (0: automatic)", ErrConfig, c.Replicas)
	}
	if c.MaxStore <= 0 {
		c.MaxStore = 8 << 30
	}
	if c.MaxMemory <= 0 {
		c.MaxMemory = 64 << 20
	}
	if c.JoinTimeout <= 0 {
		c.JoinTimeout = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return nil
}

// Start joins (or, for the first nodes, forms) the cluster: it starts the
// embedded server or connects to URL, and waits until the shared buckets
// exist. Call Run once the gateway exists to start replicating.
func Start(cfg Config) (*Node, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.Name), serving: map[string]*nats.Subscription{},
		followers: map[string]*follower{}, known: map[string]known{}, fetches: map[string]*fetchCall{},
		stop: make(chan struct{}), started: time.Now()}
	var err error
	if cfg.Listen != "" {
		err = n.startEmbedded()
	} else {
		err = n.connect()
	}
	if err != nil {
		n.shutdown()
		return nil, err
	}
	if err := n.openBuckets(); err != nil {
		n.shutdown()
		return nil, err
	}
	return n, nil
}

func (n *Node) startEmbedded() error {
	host, port, _ := net.SplitHostPort(n.cfg.Listen)
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%w: --cluster-listen %q: bad port", ErrConfig, n.cfg.Listen)
	}
	var routes []*url.URL
	for _, peer := range n.cfg.Peers {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: peer})
	}
	raw := make([]byte, 24)
	rand.Read(raw)
	token := hex.EncodeToString(raw)
	opts := &server.Options{
		ServerName: n.cfg.Name,
		// The client port is needed (the server only dials its routes once
		// its client listener is up), so it listens on a random loopback
		// port behind a random token: this node's own connection is
		// in-process, peers use the route port.
		Host: "127.0.0.1", Port: server.RANDOM_PORT, Authorization: token,
		JetStream:          true,
		StoreDir:           filepath.Join(n.cfg.DataDir, "jetstream"),
		JetStreamMaxMemory: n.cfg.MaxMemory,
		JetStreamMaxStore:  n.cfg.MaxStore,
		MaxPayload:         maxPayload,
		NoSigs:             true,
		Cluster: server.ClusterOpts{
			Name: "dust", Host: host, Port: p,
			// A stopped peer (SIGSTOP, a hung host) keeps its TCP
			// connection open: pings every second, three missed, is how
			// it is noticed within seconds instead of minutes.
			PingInterval: time.Second, MaxPingsOut: 3,
			ConnectRetries: -1,
		},
		Routes: routes,
	}
	if len(routes) == 0 {
		// JetStream clusters only with routes; a node without peers is a
		// cluster of one, with standalone JetStream and no route port.
		opts.Cluster = server.ClusterOpts{}
		n.log.Warn("no --peers: a cluster of one node (its route port is not opened)")
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("cluster: embedded NATS server: %w", err)
	}
	srv.SetLoggerV2(natsLogger{n.log}, false, false, false)
	n.srv = srv
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("%w: the embedded NATS server did not start within 10s (is %s free?)", ErrUnavailable, n.cfg.Listen)
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv), nats.Token(token), nats.Name("dust "+n.cfg.Name), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("cluster: connecting to the embedded server: %w", err)
	}
	n.nc = nc
	n.replicas = min(3, 1+len(n.cfg.Peers))
	if n.cfg.Replicas > 0 {
		n.replicas = n.cfg.Replicas
	}
	return nil
}

func (n *Node) connect() error {
	opts := []nats.Option{nats.Name("dust " + n.cfg.Name), nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// A dead server is noticed in about three seconds, not minutes.
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(3)}
	if n.cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(n.cfg.Creds))
	}
	if n.cfg.TLSCA != "" || n.cfg.TLSCert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if n.cfg.TLSCA != "" {
			pem, err := os.ReadFile(n.cfg.TLSCA)
			if err != nil {
				return fmt.Errorf("%w: --nats-tls-ca: %v", ErrConfig, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("%w: --nats-tls-ca %s: no PEM certificate in it", ErrConfig, n.cfg.TLSCA)
			}
			tc.RootCAs = pool
		}
		if n.cfg.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(n.cfg.TLSCert, n.cfg.TLSKey)
			if err != nil {
				return fmt.Errorf("%w: --nats-tls-cert/--nats-tls-key: %v", ErrConfig, err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, nats.Secure(tc))
	}
	nc, err := nats.Connect(n.cfg.URL, opts...)
	if err != nil {
		return fmt.Errorf("%w: --nats %s: %v", ErrUnavailable, n.cfg.URL, err)
	}
	n.nc = nc
	// The servers a client knows of (given and discovered) are the best
	// count of the cluster's size a plain client can get.
	n.replicas = min(3, max(1, len(nc.Servers())))
	if n.cfg.Replicas > 0 {
		n.replicas = n.cfg.Replicas
	}
	return nil
}

// openBuckets creates or binds the shared buckets, retrying until the
// JetStream cluster has a leader or JoinTimeout passes.
//
// The three are opened at once: in a cluster that is forming, a new
// stream's raft group can take seconds to elect its first leader, and a
// request to a stream without one is not answered at all, so an attempt
// is short and the buckets do not wait on each other.
func (n *Node) openBuckets() error {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	n.js = js
	t0 := time.Now()
	deadline := t0.Add(n.cfg.JoinTimeout)
	var last error
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), min(5*time.Second, time.Until(deadline)))
		last = n.tryBuckets(ctx)
		cancel()
		if last == nil {
			n.log.Info("cluster joined", "replicas", n.replicas, "took", time.Since(t0).Round(time.Millisecond))
			return nil
		}
		n.log.Info("waiting for the cluster's shared state", "err", last)
		select {
		case <-time.After(250 * time.Millisecond):
		case <-n.stop:
			return ErrUnavailable
		}
	}
	return fmt.Errorf("%w: the shared buckets could not be opened within %v (are the peers up?): %v", ErrUnavailable, n.cfg.JoinTimeout, last)
}

// tryBuckets opens the buckets not open yet, all at once.
func (n *Node) tryBuckets(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, 3)
	if n.apps == nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kv, err := n.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket: appsBucket, Description: "Dust apps: versions, settings, secrets",
				History: 1, Replicas: n.replicas, MaxValueSize: maxRecord,
			})
			if err != nil {
				errs[0] = fmt.Errorf("bucket %s: %w", appsBucket, err)
				return
			}
			n.apps = kv
		}()
	}
	if n.nodes == nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kv, err := n.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket: nodesBucket, Description: "Dust nodes: heartbeats", History: 1,
				TTL: nodeTTL, Replicas: n.replicas, Storage: jetstream.MemoryStorage, MaxValueSize: 1 << 20,
			})
			if err != nil {
				errs[1] = fmt.Errorf("bucket %s: %w", nodesBucket, err)
				return
			}
			n.nodes = kv
		}()
	}
	if n.images == nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			obs, err := n.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
				Bucket: imagesBucket, Description: "Dust images by SHA-256", Replicas: n.replicas,
			})
			if err != nil {
				errs[2] = fmt.Errorf("object store %s: %w", imagesBucket, err)
				return
			}
			n.images = obs
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Name is this node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Replicas is how many copies the shared state keeps.
func (n *Node) Replicas() int { return n.replicas }

// Run starts replicating into local and serving forwarded requests for
// it: the watch on the apps bucket, the heartbeat, and the queue
// subscriptions of the apps local has room for.
func (n *Node) Run(local Local) error {
	n.mu.Lock()
	n.local = local
	n.mu.Unlock()
	n.wg.Add(3)
	go n.follow()
	go n.heartbeat()
	go n.placement()
	return nil
}

// StopServing leaves every queue group: no new forwarded request arrives.
// Requests already accepted finish.
func (n *Node) StopServing() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for app, sub := range n.serving {
		sub.Unsubscribe()
		delete(n.serving, app)
	}
	n.local = nil
}

// Close leaves the cluster: it stops serving, waits (bounded) for the
// forwarded requests in flight, removes this node's heartbeat and shuts
// the connection and the embedded server down.
func (n *Node) Close() error {
	n.closed.Do(func() {
		n.StopServing()
		close(n.stop)
		n.wg.Wait()
		done := make(chan struct{})
		go func() { n.inflight.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		if n.nodes != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			n.nodes.Delete(ctx, n.cfg.Name)
			cancel()
		}
		n.shutdown()
	})
	return nil
}

func (n *Node) shutdown() {
	if n.nc != nil {
		n.nc.Close()
	}
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
	}
}

// natsLogger sends the embedded server's log to the node's: its notices
// (a lot of them at start) at debug level.
type natsLogger struct{ log *slog.Logger }

func (l natsLogger) Noticef(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	// Leader changes are what a stall after a node's death waits for:
	// they are worth seeing at the default level.
	if strings.Contains(msg, "leader") || strings.Contains(msg, "Leader") {
		l.log.Info("nats: " + msg)
		return
	}
	l.log.Debug("nats: " + msg)
}
func (l natsLogger) Warnf(format string, v ...any) { l.log.Warn("nats: " + fmt.Sprintf(format, v...)) }
func (l natsLogger) Fatalf(format string, v ...any) {
	l.log.Error("nats: " + fmt.Sprintf(format, v...))
}
func (l natsLogger) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	// A peer that is down is dialled every second on each pooled route:
	// the route's loss is logged once (a warning), the redials quietly.
	if strings.HasPrefix(msg, "Error trying to connect to route") {
		l.log.Debug("nats: " + msg)
		return
	}
	l.log.Error("nats: " + msg)
}
func (l natsLogger) Debugf(string, ...any) {}
func (l natsLogger) Tracef(string, ...any) {}
