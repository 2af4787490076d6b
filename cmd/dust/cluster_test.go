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
		a.deploy(t, imgs["v3"], "")
		waitServes(t, 5*time.Second, "v3\n", a, b)
		if code, body := a.adminDo("POST", "/v1/apps/app/rollback?to=1", nil); code != 200 {
			t.Errorf("rollback on a with c dead: %d %s", code, body)
		}
		waitServes(t, 5*time.Second, "v1\n", a, b)
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
	c.start()
	waitServes(t, 30*time.Second, "v1\n", c)
	_, cview := c.adminDo("GET", "/v1/apps/app", nil)
	_, bview := b.adminDo("GET", "/v1/apps/app", nil)
	var cv, bv struct {
		Version  int
		Versions []struct{ Version int }
	}
	json.Unmarshal([]byte(cview), &cv)
	json.Unmarshal([]byte(bview), &bv)
	if cv.Version != bv.Version || len(cv.Versions) != len(bv.Versions) || len(cv.Versions) != 3 {
		t.Errorf("restarted c has v%d of %d versions, b v%d of %d (want the same 3)", cv.Version, len(cv.Versions), bv.Version, len(bv.Versions))
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
		code, body := c.adminDo("PUT", "/v1/apps/app", imgs["v4"])
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "quorum") {
			t.Errorf("deploy on a minority: %d %s (want 503 naming the missing quorum)", code, body)
		}
		// It still serves what it has.
		if code, body, _, err := c.get("/app"); code != 200 || body != "v1\n" {
			t.Errorf("minority c serving: %d %q %v", code, body, err)
		}
		resume()
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
		waitServes(t, 5*time.Second, "v4\n", a, b, c)
	})
}
