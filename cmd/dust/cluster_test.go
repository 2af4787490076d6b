package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/cluster"
	"github.com/dust-run/dust/internal/kvm/kvmtest"
)

// clusterApp answers with its version tag after spinning for ?spin=N
// million iterations: slow enough on demand to fill a node's slots.
const clusterApp = `#include <stdio.h>
#include <stdlib.h>
int main(void)
{
	const char *q = getenv("QUERY_STRING");
	long n = 0;
	if (q && q[0] == 's' && q[1] == 'p' && q[2] == 'i' && q[3] == 'n' && q[4] == '=')
		n = atol(q + 5);
	if (n > 200) n = 200;
	for (volatile long i = 0; i < n * 1000000; i++)
		;
	printf("Content-Type: text/plain\r\n\r\n%s\n", TAG);
	return 0;
}
`

type clusterNode struct {
	t                  *testing.T
	bin, name, data    string
	app, admin, listen string
	peers              []string
	token              string
	cmd                *exec.Cmd
	stderr             *lockedBuf
}

func (n *clusterNode) start() {
	t := n.t
	n.cmd = exec.Command(n.bin, "serve", "-data", n.data, "-listen", n.app, "-admin", n.admin, "-pool-floor", "1",
		"-node-name", n.name, "-log-format", "text", "-cluster-listen", n.listen, "-peers", strings.Join(n.peers, ","))
	// Its own process group: cleanup kills whatever it started too.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	n.stderr = &lockedBuf{mu: &sync.Mutex{}, b: &bytes.Buffer{}}
	n.cmd.Stderr = n.stderr
	out, _ := n.cmd.StdoutPipe()
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := n.cmd
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	banner := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && !strings.Contains(line, "serving apps") {
			err = fmt.Errorf("banner %q", line)
		}
		banner <- err
		io.Copy(io.Discard, out)
	}()
	select {
	case err := <-banner:
		if err != nil {
			t.Fatalf("node %s did not start: %v\n%s", n.name, err, n.stderrText())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("node %s did not start within 90s\n%s", n.name, n.stderrText())
	}
	tok, err := os.ReadFile(filepath.Join(n.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	n.token = strings.TrimSpace(string(tok))
}

func (n *clusterNode) stderrText() string {
	n.stderr.mu.Lock()
	defer n.stderr.mu.Unlock()
	return n.stderr.b.String()
}

var clusterClient = &http.Client{Timeout: 30 * time.Second}

// adminDo sends an admin request and returns the status and body.
func (n *clusterNode) adminDo(method, path string, body []byte) (int, string) {
	req, _ := http.NewRequest(method, "http://"+n.admin+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+n.token)
	resp, err := clusterClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (n *clusterNode) deploy(t *testing.T, img []byte, query string) {
	t.Helper()
	if code, body := n.adminDo("PUT", "/v1/apps/app?"+query, img); code != 200 {
		t.Fatalf("deploy on %s: %d %s", n.name, code, body)
	}
}

// get fetches path from the node's app listener.
func (n *clusterNode) get(path string) (int, string, string, error) {
	resp, err := clusterClient.Get("http://" + n.app + path)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("Dust-Node"), err
}

// waitServes polls until every node answers /app with want, and returns
// how long that took.
func waitServes(t *testing.T, within time.Duration, want string, nodes ...*clusterNode) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	for _, n := range nodes {
		for {
			code, body, _, err := n.get("/app")
			if err == nil && code == 200 && body == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s does not serve %q after %v: %d %q %v\n%s", n.name, want, within, code, body, err, n.stderrText())
			}
			time.Sleep(20 * time.Millisecond) // polling interval, not a wait for a race
		}
	}
	return time.Since(start)
}

// appView is the part of GET /v1/apps/app that says what a node's view
// holds: the current version and every kept one with its digest.
func appView(n *clusterNode) (string, error) {
	code, body := n.adminDo("GET", "/v1/apps/app", nil)
	if code != 200 {
		return "", fmt.Errorf("GET /v1/apps/app on %s: %d %s", n.name, code, body)
	}
	var v struct {
		Version  int
		Versions []struct {
			Version int
			Digest  string
		}
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		return "", err
	}
	return fmt.Sprintf("%+v", v), nil
}

// waitConverged polls until every node's view of the app is the first's.
func waitConverged(t *testing.T, within time.Duration, nodes ...*clusterNode) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		want, err := appView(nodes[0])
		same := err == nil
		var got string
		for _, n := range nodes[1:] {
			if got, err = appView(n); err != nil || got != want {
				same = false
				break
			}
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the nodes' views did not converge within %v: %s has %s, another %s (%v)", within, nodes[0].name, want, got, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// stallLines are the log lines in which a node says what it waited for:
// the shared state's retries, leader elections, watch restarts.
func stallLines(n *clusterNode) []string {
	var out []string
	for _, l := range strings.Split(n.stderrText(), "\n") {
		for _, k := range []string{"shared state", "leader", "watch", "retrying", "slowly", "not installed"} {
			if strings.Contains(l, k) && !strings.Contains(l, "msg=request ") {
				out = append(out, "    "+l)
				break
			}
		}
	}
	if len(out) > 40 {
		out = append(out[:40], fmt.Sprintf("    ... and %d more", len(out)-40))
	}
	return out
}

func metric(t *testing.T, n *clusterNode, name, label string) float64 {
	t.Helper()
	_, body := n.adminDo("GET", "/metrics", nil)
	total := 0.0
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, label) {
			var v float64
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
			total += v
		}
	}
	return total
}

func clusterP99(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)*99/100]
}

// TestCluster runs three `dust serve` nodes with embedded NATS on
// loopback through the checks: replication of deploys and
// rollbacks, forwarding from a saturated node, kill -9 under load,
// catching up after a restart, and a minority that refuses deploys.
func TestCluster(t *testing.T) {
	kvmtest.Require(t)
	if testing.Short() {
		t.Skip("spawns three servers: skipped with -short")
	}
	_, bin := buildDust(t)
	imgs := map[string][]byte{}
	for _, tag := range []string{"v1", "v2", "v3", "v4"} {
		b, err := os.ReadFile(guestELF(t, "app"+tag, "#define TAG \""+tag+"\"\n"+clusterApp))
		if err != nil {
			t.Fatal(err)
		}
		imgs[tag] = b
	}
	root := t.TempDir()
	names := []string{"a", "b", "c"}
	var nodes []*clusterNode
	for _, name := range names {
		nodes = append(nodes, &clusterNode{t: t, bin: bin, name: name, data: filepath.Join(root, name),
			app: freeAddr(t), admin: freeAddr(t), listen: freeAddr(t)})
	}
	for _, n := range nodes {
		for _, o := range nodes {
			if o != n {
				n.peers = append(n.peers, o.listen)
			}
		}
	}
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.start() }()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	a, b, c := nodes[0], nodes[1], nodes[2]

	// Deploy on A: served on B and C within 2 s of the acknowledgement.
	a.deploy(t, imgs["v1"], "route=/app&max_concurrency=1&queue_wait=10s")
	took := waitServes(t, 2*time.Second, "v1\n", a, b, c)
	t.Logf("deploy on a → served on a, b, c after %v", took)
	a.deploy(t, imgs["v2"], "")
	waitServes(t, 2*time.Second, "v2\n", a, b, c)

	// Rollback on C: everywhere.
	if code, body := c.adminDo("POST", "/v1/apps/app/rollback", nil); code != 200 {
		t.Fatalf("rollback on c: %d %s", code, body)
	}
	waitServes(t, 2*time.Second, "v1\n", a, b, c)

	// A saturated node forwards, and every request still gets its answer.
	t.Run("forwarding", func(t *testing.T) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		servedBy := map[string]int{}
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, body, node, err := b.get("/app?spin=40")
				mu.Lock()
				defer mu.Unlock()
				if err != nil || code != 200 || body != "v1\n" {
					t.Errorf("through b: %d %q %v", code, body, err)
				}
				servedBy[node]++
			}()
		}
		wg.Wait()
		t.Logf("served by %v", servedBy)
		if servedBy["a"]+servedBy["c"] == 0 {
			t.Errorf("b (max_concurrency=1) never forwarded: %v", servedBy)
		}
		if got := metric(t, b, "dust_cluster_requests_total", `path="forwarded_out"`); got == 0 {
			t.Errorf("b's metrics count no forwarded request")
		}
		if got := metric(t, a, "dust_cluster_requests_total", `path="forwarded_in"`) + metric(t, c, "dust_cluster_requests_total", `path="forwarded_in"`); got == 0 {
			t.Errorf("a and c count no request forwarded to them")
		}
	})

	// Cluster status names the three nodes.
	code, body := a.adminDo("GET", "/v1/cluster", nil)
	var st struct {
		Nodes []struct{ Name string }
	}
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || len(st.Nodes) != 3 {
		t.Errorf("GET /v1/cluster on a: %d %s", code, body)
	}

	// Kill -9 C under a closed-loop load on A and B.
	t.Run("kill", func(t *testing.T) {
		type sample struct {
			at  time.Time
			lat time.Duration
			ok  bool
		}
		var mu sync.Mutex
		var samples []sample
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, n := range []*clusterNode{a, b, a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 5000; i++ {
					select {
					case <-stop:
						return
					default:
					}
					t0 := time.Now()
					code, body, _, err := n.get("/app?spin=5")
					mu.Lock()
					samples = append(samples, sample{t0, time.Since(t0), err == nil && code == 200 && strings.HasPrefix(body, "v")})
					mu.Unlock()
				}
			}()
		}
		// A measured baseline before the kill.
		for deadline := time.Now().Add(20 * time.Second); ; {
			mu.Lock()
			k := len(samples)
			mu.Unlock()
			if k >= 200 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond) // polling interval
		}
		killed := time.Now()
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		c.cmd.Wait()
		// A deploy while C is dead: two of three is a quorum.
		// The survivors serve it once the streams whose leader was on c
		// have elected another (4 to 9 s in nats-server's raft) and their
		// fetches and watches have been retried.
		t0 := time.Now()
		a.deploy(t, imgs["v3"], "")
		acked := time.Now()
		t.Logf("deploy on a with c dead acknowledged after %v", acked.Sub(t0).Round(time.Millisecond))
		waitServes(t, 15*time.Second, "v3\n", a, b)
		// Through b may mean forwarded to a: b's own view must have it.
		waitConverged(t, 15*time.Second, a, b)
		t.Logf("… served on a and b, and in both views, %v later", time.Since(acked).Round(time.Millisecond))
		t0 = time.Now()
		if code, body := b.adminDo("POST", "/v1/apps/app/rollback?to=1", nil); code != 200 {
			t.Errorf("rollback on b with c dead: %d %s", code, body)
		}
		waitServes(t, 15*time.Second, "v1\n", a, b)
		waitConverged(t, 15*time.Second, a, b)
		t.Logf("rollback on b with c dead served on a and b after %v", time.Since(t0).Round(time.Millisecond))
		// The load goes on until the window past the 5 s recovery bound
		// holds enough requests to tell a recovery from a lucky few.
		for deadline := time.Now().Add(30 * time.Second); ; {
			mu.Lock()
			late := 0
			for _, s := range samples {
				if s.at.After(killed.Add(6 * time.Second)) {
					late++
				}
			}
			mu.Unlock()
			if late >= 200 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond) // polling interval
		}
		close(stop)
		wg.Wait()
		var before, after []time.Duration
		failed, failedLate := 0, 0
		for _, s := range samples {
			if !s.ok {
				failed++
				if s.at.After(killed.Add(5 * time.Second)) {
					failedLate++
				}
			}
			switch {
			case s.at.Before(killed):
				before = append(before, s.lat)
			case s.at.After(killed.Add(5 * time.Second)):
				after = append(after, s.lat)
			}
		}
		t.Logf("%d requests, %d failed (%d after kill+5s); p99 before kill %v, after kill+5s %v",
			len(samples), failed, failedLate, clusterP99(before), clusterP99(after))
		// Only the requests in flight on C could fail: one per client.
		if failed > 4 {
			t.Errorf("%d requests to the survivors failed, more than the 4 that could be in flight on c", failed)
		}
		if failedLate > 0 || len(after) == 0 {
			t.Errorf("survivors did not recover: %d failures after kill+5s, %d requests then", failedLate, len(after))
		}
	})

	// No acknowledged deploy was lost, and the restarted C catches up.
	for deadline := time.Now().Add(30 * time.Second); ; {
		code, body = b.adminDo("GET", "/v1/apps/app", nil)
		if code == 200 && strings.Contains(body, `"version": 3`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b's view lacks v3, deployed while c was dead: %d %s\n%s", code, body, b.stderrText())
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	// The survivors agree with each other, and the restarted C catches
	// up with them and serves.
	waitConverged(t, 10*time.Second, a, b)
	restarted := time.Now()
	c.start()
	waitConverged(t, 30*time.Second, b, c)
	t.Logf("restarted c caught up %v after its start", time.Since(restarted).Round(time.Millisecond))
	waitServes(t, 5*time.Second, "v1\n", c)
	for _, n := range []*clusterNode{a, b, c} {
		if lines := stallLines(n); len(lines) > 0 {
			t.Logf("what %s waited for:\n%s", n.name, strings.Join(lines, "\n"))
		}
	}

	// A minority (C alone, A and B stopped) refuses deploys and rejoins.
	t.Run("minority", func(t *testing.T) {
		for _, n := range []*clusterNode{a, b} {
			syscall.Kill(-n.cmd.Process.Pid, syscall.SIGSTOP)
		}
		stopped := true
		resume := func() {
			if stopped {
				for _, n := range []*clusterNode{a, b} {
					syscall.Kill(-n.cmd.Process.Pid, syscall.SIGCONT)
				}
				stopped = false
			}
		}
		defer resume()
		t0 := time.Now()
		code, body := c.adminDo("PUT", "/v1/apps/app", imgs["v4"])
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "quorum") {
			t.Errorf("deploy on a minority: %d %s (want 503 naming the missing quorum)", code, body)
		}
		t.Logf("the minority refused a deploy after %v: %s", time.Since(t0).Round(time.Millisecond), strings.TrimSpace(body))
		// It still serves what it has.
		if code, body, _, err := c.get("/app"); code != 200 || body != "v1\n" {
			t.Errorf("minority c serving: %d %q %v", code, body, err)
		}
		resume()
		healed := time.Now()
		deadline := time.Now().Add(45 * time.Second)
		for {
			code, body := c.adminDo("PUT", "/v1/apps/app", imgs["v4"])
			if code == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("deploy on c after the partition healed: %d %s", code, body)
			}
			time.Sleep(250 * time.Millisecond) // polling interval
		}
		t.Logf("a deploy on c went through %v after the partition healed", time.Since(healed).Round(time.Millisecond))
		waitServes(t, 5*time.Second, "v4\n", a, b, c)
		waitConverged(t, 10*time.Second, a, b, c)
	})
}

// TestStatusView: `dust status` says where each app is ready, which node
// has another version, and shows a single node as a cluster of one.
func TestStatusView(t *testing.T) {
	now := time.Now()
	ans := statusAnswer{Cluster: &cluster.Status{Node: "a", Mode: "embedded", Replicas: 3, Synced: true, Connected: true,
		Apps: map[string]int{"web": 3, "api": 1},
		Nodes: []cluster.NodeStatus{
			{Name: "a", Self: true, Live: 2, MaxLive: 256, Ready: map[string]int{"web": 3, "api": 1}},
			{Name: "b", Live: 0, MaxLive: 256, Ready: map[string]int{"web": 2}, SeenAt: now.Add(-time.Second)},
			{Name: "c", Live: 1, MaxLive: 256, Ready: map[string]int{"web": 3, "api": 1, "old": 4}, SeenAt: now},
		}}}
	v := viewOf(ans)
	got := map[string]appPlacement{}
	for _, p := range v.Apps {
		got[p.Name] = p
	}
	if p := got["web"]; strings.Join(p.ReadyOn, ",") != "a,c" || p.Other["b"] != 2 || len(p.Missing) != 0 {
		t.Errorf("web: %+v", p)
	}
	if p := got["api"]; strings.Join(p.ReadyOn, ",") != "a,c" || strings.Join(p.Missing, ",") != "b" {
		t.Errorf("api: %+v", p)
	}
	if p := got["old"]; p.Version != 4 || strings.Join(p.ReadyOn, ",") != "c" {
		t.Errorf("an app only a node still serves: %+v", p)
	}
	var out bytes.Buffer
	printStatus(&out, v, now)
	for _, want := range []string{"cluster of 3 node(s), seen from a", "a *", "2/256", "b (has v2)", "1s ago"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, out.String())
		}
	}
	single := viewOf(statusAnswer{Live: 1, Apps: []struct {
		Name    string `json:"name"`
		Version int    `json:"version"`
	}{{"web", 5}}})
	if single.Mode != "single" || len(single.Nodes) != 1 || len(single.Apps) != 1 || single.Apps[0].ReadyOn[0] != "(this node)" {
		t.Errorf("single node: %+v", single)
	}
}
