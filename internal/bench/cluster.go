package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dust-run/dust/internal/cluster"
	"github.com/dust-run/dust/internal/gateway"
	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
	"github.com/dust-run/dust/internal/wasm"
)

// The cluster section (issue 14): three nodes in this process, each a
// gateway with its own data directory and an embedded NATS server routed
// to the other two on loopback. It measures what forwarding adds to a
// request, what three nodes serve together on this one machine against
// one, and how long a deploy takes to be served on every node.
//
// A request is forwarded deterministically by making node a unable to
// serve the forwarded app: a lacks its machine kind, so every request for
// it that reaches a goes to b or c (the path a request takes when its app
// is not ready on the node it reached). Local requests go to b directly.
// Both are one client, one request at a time, interleaved.

// ClusterResult is the cluster section of the report.
type ClusterResult struct {
	Nodes int    `json:"nodes"`
	Skip  string `json:"skip,omitempty"`
	// ForwardApp is the app the forwarding rows request.
	ForwardApp string  `json:"forward_app"`
	Local      Summary `json:"local"`
	Forwarded  Summary `json:"forwarded"`
	// ForwardedBy counts which node served the forwarded requests.
	ForwardedBy map[string]int `json:"forwarded_by"`
	// Throughput of the load app: all nodes at once against node a alone,
	// the same clients in all.
	LoadApp     string  `json:"load_app,omitempty"`
	Clients     int     `json:"clients,omitempty"`
	OneNodeRPS  float64 `json:"one_node_rps,omitempty"`
	AllNodesRPS float64 `json:"all_nodes_rps,omitempty"`
	LoadErrors  int     `json:"load_errors,omitempty"`
	LoadSkip    string  `json:"load_skip,omitempty"`
	// Deploys: the admin call (stored on a quorum: acknowledged) and the
	// time from its start until every node serves the new version.
	DeployAck        Summary       `json:"deploy_ack"`
	DeployEverywhere Summary       `json:"deploy_everywhere"`
	Formed           time.Duration `json:"formed_ns"` // the three nodes started until the shared state answered
}

type benchNode struct {
	name string
	node *cluster.Node
	srv  *gateway.Server
	pub  *http.Server
	base string
	dir  string
}

// runCluster runs the section; forward is the number of samples of each
// forwarding row, slice the load time per measurement, deploys the number
// of deploys timed.
func runCluster(ctx context.Context, a *artifacts, forward int, slice time.Duration, deploys int, log func(string, ...any)) *ClusterResult {
	res := &ClusterResult{Nodes: 3, ForwardedBy: map[string]int{}}
	hvtOK := kvm.Available() == nil && a.why("hello.elf") == ""
	if why := a.why("hello.wasm"); why != "" {
		res.Skip = "the wasm hello example: " + why
		return res
	}
	// The forwarded app's kind is one node a lacks; the load app runs
	// on all three.
	fwdKind, fwdImg := "hvt", a.helloELF
	if !hvtOK {
		fwdKind, fwdImg = "wasm", a.helloWasm
		res.LoadSkip = "needs KVM: without it node a lacks wasm (to force forwarding) and no app runs on all three nodes"
	}
	res.ForwardApp = "hello (" + fwdKind + ")"
	t0 := time.Now()
	nodes, err := startCluster(fwdKind, log)
	if err != nil {
		res.Skip = err.Error()
		return res
	}
	res.Formed = time.Since(t0)
	defer func() {
		for _, n := range nodes {
			n.close()
		}
	}()
	log("cluster: 3 nodes formed in %v", res.Formed.Round(time.Millisecond))
	set := store.Settings{Route: "/hello", QueueLen: 4096, QueueWait: 60 * time.Second, MaxConcurrency: 16}
	if _, err := nodes[1].srv.Deploy("fwd", bytes.NewReader(fwdImg), set); err != nil {
		res.Skip = "deploy: " + err.Error()
		return res
	}
	if hvtOK {
		ls := set
		ls.Route = "/wasm/hello"
		if _, err := nodes[1].srv.Deploy("load", bytes.NewReader(a.helloWasm), ls); err != nil {
			res.Skip = "deploy: " + err.Error()
			return res
		}
		res.LoadApp = "hello (wasm)"
	}
	// Every node ready (a: nothing to prepare for fwd, it cannot).
	if err := waitReady(ctx, nodes[1:], "fwd", 1, 30*time.Second); err != nil {
		res.Skip = err.Error()
		return res
	}
	if hvtOK {
		if err := waitReady(ctx, nodes, "load", 1, 30*time.Second); err != nil {
			res.Skip = err.Error()
			return res
		}
	}

	// Forwarding overhead, one client, interleaved.
	client := newClient(1)
	var local, fwd []time.Duration
	for i := 0; i < forward && ctx.Err() == nil; i++ {
		for _, f := range []struct {
			url  string
			dst  *[]time.Duration
			from bool
		}{{nodes[1].base + "/hello", &local, false}, {nodes[0].base + "/hello", &fwd, true}} {
			s := time.Now()
			node, err := getNode(ctx, client, f.url)
			if err != nil {
				res.Skip = "forwarding: " + err.Error()
				return res
			}
			*f.dst = append(*f.dst, time.Since(s))
			if f.from {
				res.ForwardedBy[node]++
			}
		}
	}
	res.Local, res.Forwarded = Summarize(local), Summarize(fwd)
	log("cluster: local p50 %s p99 %s, forwarded p50 %s p99 %s", fmtDur(res.Local.P50), fmtDur(res.Local.P99), fmtDur(res.Forwarded.P50), fmtDur(res.Forwarded.P99))

	// Throughput: one node, then all three, the same clients.
	if hvtOK {
		res.Clients = 12
		one := loadTally{}
		loadSlice(ctx, newClient(res.Clients), nodes[0].base+"/wasm/hello", res.Clients, slice, &one)
		all := loadTally{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		w0 := time.Now()
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var t loadTally
				loadSlice(ctx, newClient(res.Clients/3), n.base+"/wasm/hello", res.Clients/3, slice, &t)
				mu.Lock()
				all.samples = append(all.samples, t.samples...)
				all.errors += t.errors
				mu.Unlock()
			}()
		}
		wg.Wait()
		wall := time.Since(w0)
		if one.wall > 0 {
			res.OneNodeRPS = float64(len(one.samples)) / one.wall.Seconds()
		}
		res.AllNodesRPS = float64(len(all.samples)) / wall.Seconds()
		res.LoadErrors = one.errors + all.errors
		log("cluster: %d clients, node a alone %.0f req/s, three nodes %.0f req/s", res.Clients, res.OneNodeRPS, res.AllNodesRPS)
	}

	// Deploy to served everywhere: each deploy a new image (the wasm
	// hello with a custom section that numbers it), so every node fetches
	// it from the object store and prepares it.
	dset := store.Settings{Route: "/d/hello"}
	var ack, everywhere []time.Duration
	ready := nodes
	if !hvtOK {
		ready = nodes[1:]
	}
	for i := 0; i < deploys && ctx.Err() == nil; i++ {
		img := numbered(a.helloWasm, uint64(i)+1)
		s := time.Now()
		app, err := nodes[i%3].srv.Deploy("deployed", bytes.NewReader(img), dset)
		if err != nil {
			res.Skip = fmt.Sprintf("deploy %d: %v", i+1, err)
			return res
		}
		ack = append(ack, time.Since(s))
		if err := waitReady(ctx, ready, "deployed", app.Current.Number, 30*time.Second); err != nil {
			res.Skip = err.Error()
			return res
		}
		everywhere = append(everywhere, time.Since(s))
	}
	res.DeployAck, res.DeployEverywhere = Summarize(ack), Summarize(everywhere)
	log("cluster: deploy acknowledged p50 %s, served everywhere p50 %s (max %s)", fmtDur(res.DeployAck.P50), fmtDur(res.DeployEverywhere.P50), fmtDur(res.DeployEverywhere.Max))
	return res
}

// numbered is a wasm module with a custom section holding k: a new image
// (digest) that runs as the original.
func numbered(mod []byte, k uint64) []byte {
	const name = "dust-bench"
	payload := binary.AppendUvarint(nil, uint64(len(name)))
	payload = append(payload, name...)
	payload = binary.BigEndian.AppendUint64(payload, k)
	out := append([]byte(nil), mod...)
	out = append(out, 0) // custom section
	out = binary.AppendUvarint(out, uint64(len(payload)))
	return append(out, payload...)
}

// getNode GETs url and returns the node that served it.
func getNode(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: status %s", url, resp.Status)
	}
	return resp.Header.Get(gateway.NodeHeader), err
}

// waitReady polls until every node serves version v of app.
func waitReady(ctx context.Context, nodes []*benchNode, app string, v int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for _, n := range nodes {
		for {
			_, _, ready := n.srv.Load()
			if ready[app] == v {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("node %s does not serve %s v%d within %v (it has v%d)", n.name, app, v, within, ready[app])
			}
			time.Sleep(time.Millisecond) // polling a readiness no event announces outside the gateway
		}
	}
	return nil
}

// startCluster starts three nodes on loopback; node a lacks kind lacking.
func startCluster(lacking string, log func(string, ...any)) ([]*benchNode, error) {
	names := []string{"a", "b", "c"}
	routes := make([]string, 3)
	for i := range routes {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		routes[i] = l.Addr().String()
		l.Close()
	}
	nodes := make([]*benchNode, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i, name := range names {
		dir, err := os.MkdirTemp("", "dust-bench-cluster-"+name+"-")
		if err != nil {
			return nil, err
		}
		var peers []string
		for j, r := range routes {
			if j != i {
				peers = append(peers, r)
			}
		}
		nodes[i] = &benchNode{name: name, dir: dir}
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i].node, errs[i] = cluster.Start(cluster.Config{Name: name, Listen: routes[i], Peers: peers, DataDir: dir,
				MaxMemory: 32 << 20, MaxStore: 1 << 30, Logger: quiet, JoinTimeout: 60 * time.Second})
		}()
	}
	wg.Wait()
	closeAll := func() {
		for _, n := range nodes {
			n.close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		closeAll()
		return nil, fmt.Errorf("forming the cluster: %w", err)
	}
	for i, n := range nodes {
		kinds := map[string]machine.Kind{"wasm": wasm.Kind{}}
		if kvm.Available() == nil {
			kinds["hvt"] = hvt.Kind{}
		}
		if i == 0 {
			delete(kinds, lacking)
		}
		srv, err := gateway.New(gateway.Config{DataDir: n.dir, Kinds: kinds, Logger: quiet, ShutdownGrace: 5 * time.Second,
			Detect: detectImage, Cluster: n.node})
		if err != nil {
			closeAll()
			return nil, err
		}
		n.srv = srv
		if err := n.node.Run(srv); err != nil {
			closeAll()
			return nil, err
		}
		pub, _ := srv.HTTPServers("", "")
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			closeAll()
			return nil, err
		}
		go pub.Serve(gateway.Listener(l))
		n.pub, n.base = pub, "http://"+l.Addr().String()
	}
	return nodes, nil
}

func (n *benchNode) close() {
	if n == nil {
		return
	}
	if n.node != nil {
		n.node.StopServing()
	}
	if n.pub != nil {
		n.pub.Close()
	}
	if n.node != nil {
		n.node.Close()
	}
	if n.srv != nil {
		n.srv.Close()
	}
	if n.dir != "" {
		os.RemoveAll(n.dir)
	}
}

// writeCluster is the section's text.
func writeCluster(w io.Writer, c *ClusterResult) {
	fmt.Fprintf(w, "\nCluster: %d nodes in this process, embedded NATS JetStream on loopback (formed in %s):\n", c.Nodes, fmtDur(c.Formed))
	if c.Skip != "" {
		fmt.Fprintf(w, "  skipped: %s\n", c.Skip)
		return
	}
	var by []string
	for n, k := range c.ForwardedBy {
		by = append(by, fmt.Sprintf("%s %d", n, k))
	}
	fmt.Fprintf(w, "  %s, one client: local p50 %s p99 %s; forwarded p50 %s p99 %s (served by %s); forwarding adds %s at p50, %s at p99\n",
		c.ForwardApp, fmtDur(c.Local.P50), fmtDur(c.Local.P99), fmtDur(c.Forwarded.P50), fmtDur(c.Forwarded.P99),
		strings.Join(by, ", "), fmtDur(c.Forwarded.P50-c.Local.P50), fmtDur(c.Forwarded.P99-c.Local.P99))
	if c.LoadSkip != "" {
		fmt.Fprintf(w, "  throughput: skipped: %s\n", c.LoadSkip)
	} else {
		fmt.Fprintf(w, "  throughput, %s, %d clients: node a alone %.0f req/s, all three nodes %.0f req/s (%d errors; the nodes share this machine's cores)\n",
			c.LoadApp, c.Clients, c.OneNodeRPS, c.AllNodesRPS, c.LoadErrors)
	}
	fmt.Fprintf(w, "  deploy (a new image each time, %d deploys): acknowledged p50 %s max %s; served on every node p50 %s max %s\n",
		c.DeployAck.N, fmtDur(c.DeployAck.P50), fmtDur(c.DeployAck.Max), fmtDur(c.DeployEverywhere.P50), fmtDur(c.DeployEverywhere.Max))
}
