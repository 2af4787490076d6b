package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
)

// The holes an adversarial review found (issue 9), each attacked through a
// real `dust serve` on loopback, asserting the bound that now holds.

// deployAs deploys img as app name with the given query (route=...&...).
func (p *serveProc) deployAs(t *testing.T, name, img, query string) {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	code, body := p.admin1(t, "PUT", "/v1/apps/"+name+"?"+query, bytes.NewReader(b))
	if code != http.StatusOK {
		t.Fatalf("deploy %s: %d %s", name, code, body)
	}
}

func (p *serveProc) admin1(t *testing.T, method, path string, body io.Reader) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+p.admin+path, body)
	req.Header.Set("Authorization", "Bearer "+p.token)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var liveRE = regexp.MustCompile(`(?m)^dust_live_machines ([0-9.e+]+)$`)

// live reads dust_live_machines from the server's metrics.
func (p *serveProc) live(t *testing.T) int {
	t.Helper()
	code, body := p.admin1(t, "GET", "/metrics", nil)
	m := liveRE.FindStringSubmatch(body)
	if code != http.StatusOK || m == nil {
		t.Fatalf("metrics: %d, no dust_live_machines", code)
	}
	f, _ := strconv.ParseFloat(m[1], 64)
	return int(f)
}

// waitLive polls the metrics until at most want machines are live and
// returns how long that took; it fails after limit.
func (p *serveProc) waitLive(t *testing.T, want int, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if p.live(t) <= want {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not a race fix
	}
	t.Fatalf("still more than %d live machines after %v", want, limit)
	return 0
}

// p99 of the good client's latencies.
func p99(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)*99/100]
}

// goodClient asks url until stop is closed and reports its statuses and
// latencies.
func goodClient(url string, stop <-chan struct{}) (codes map[int]int, lat []time.Duration) {
	codes = map[int]int{}
	c := &http.Client{Timeout: 10 * time.Second}
	for {
		select {
		case <-stop:
			return
		default:
		}
		t0 := time.Now()
		resp, err := c.Get(url)
		if err != nil {
			codes[-1]++
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes[resp.StatusCode]++
		lat = append(lat, time.Since(t0))
	}
}

func startHolesServer(t *testing.T, flags ...string) *serveProc {
	t.Helper()
	kvmtest.Require(t)
	_, bin := buildDust(t)
	p := startServe(t, bin, t.TempDir(), flags...)
	t.Cleanup(func() {
		p.cmd.Process.Signal(os.Interrupt)
		p.cmd.Wait()
	})
	return p
}

// A client that announces a body and sends two bytes of it holds neither a
// machine nor an admission slot; 272 of them across four apps (more than
// the global cap of 256 live machines would allow if they did) leave every
// other app answering, and each of them gets 408 once its app's deadline
// has passed. A large body that stalls after its first 64 KiB does take a
// machine, which is released at the deadline.
func TestHoleSlowBody(t *testing.T) {
	p := startHolesServer(t)
	const timeout = 2 * time.Second
	// Both kinds: two hvt echos and two wasm ones.
	for i := range 4 {
		img := example(t, "echo")
		if i >= 2 {
			img = wasmEcho(t)
		}
		p.deployAs(t, fmt.Sprintf("echo%d", i), img, fmt.Sprintf("route=/echo%d&timeout=%v", i, timeout))
	}
	p.deployAs(t, "hello", example(t, "hello"), "route=/hello")

	const slow = 272
	type result struct {
		status string
		after  time.Duration
	}
	results := make(chan result, slow)
	var conns []net.Conn
	start := time.Now()
	for i := range slow {
		c, err := net.Dial("tcp", p.app)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /echo%d HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab", i%4)
		go func() {
			c.SetReadDeadline(time.Now().Add(timeout + 5*time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			results <- result{strings.TrimSpace(line), time.Since(start)}
		}()
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// While they wait: another app answers, and nothing is live on their
	// behalf.
	stop := make(chan struct{})
	done := make(chan struct{})
	var codes map[int]int
	var lat []time.Duration
	go func() {
		codes, lat = goodClient("http://"+p.app+"/hello", stop)
		close(done)
	}()
	maxLive := 0
	for time.Since(start) < timeout-300*time.Millisecond {
		maxLive = max(maxLive, p.live(t))
		time.Sleep(50 * time.Millisecond) // sampling interval
	}
	close(stop)
	<-done
	if codes[200] == 0 || len(codes) != 1 {
		t.Errorf("the good client during the attack: %v, want only 200s", codes)
	}
	if maxLive > 4 {
		t.Errorf("%d machines live while %d clients withheld their bodies", maxLive, slow)
	}
	for range slow {
		r := <-results
		if !strings.HasPrefix(r.status, "HTTP/1.1 408") || r.after > timeout+time.Second {
			t.Fatalf("slow body: %q after %v, want 408 within %v", r.status, r.after, timeout+time.Second)
		}
	}
	t.Logf("%d slow-body clients: good client %v, p99 %v; at most %d live machines; all got 408", slow, codes, p99(lat), maxLive)

	// A large body that stalls after the first 64 KiB + 10 bytes.
	c, err := net.Dial("tcp", p.app)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Now()
	fmt.Fprintf(c, "POST /echo0 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 1<<20)
	c.Write(bytes.Repeat([]byte("x"), 64<<10+10))
	p.waitLive(t, 0, timeout+time.Second)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// echo answers as it reads, so its response may have started (and is
	// then cut: a truncated answer must not look complete), or not (408).
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("stalled large body: %v", err)
	}
	_, berr := io.ReadAll(resp.Body)
	el := time.Since(t0)
	if !(resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == 200 && berr != nil) || el > timeout+time.Second {
		t.Errorf("stalled large body: %d (body error %v) after %v", resp.StatusCode, berr, el)
	}
	t.Logf("stalled large body: %d (body error %v) after %v, machine released", resp.StatusCode, berr, el)
}

// A client that stops reading an endless streamed response: the machine
// is released within the app's deadline plus a small margin (it used to be
// held until the kernel's socket buffers timed out, 10x the deadline).
func TestHoleSlowReader(t *testing.T) {
	p := startHolesServer(t)
	const timeout = time.Second
	p.deployAs(t, "flood", example(t, "flood"), fmt.Sprintf("route=/flood&timeout=%v", timeout))
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	t0 := time.Now()
	for range 8 {
		c, err := net.Dial("tcp", p.app)
		if err != nil {
			t.Fatal(err)
		}
		// A tiny receive buffer, and never read.
		c.(*net.TCPConn).SetReadBuffer(4096)
		conns = append(conns, c)
		fmt.Fprintf(c, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	for p.live(t) == 0 && time.Since(t0) < timeout {
		time.Sleep(10 * time.Millisecond) // until the machines run
	}
	took := p.waitLive(t, 0, 5*timeout)
	if el := time.Since(t0); el > timeout+time.Second {
		t.Errorf("slow readers held their machines %v (deadline %v)", el, timeout)
	}
	t.Logf("8 slow readers: machines released %v after the requests (deadline %v; waited %v)", time.Since(t0), timeout, took)
}

// A slow, authenticated image upload does not hold the deploy lock: a
// removal of another app goes through while it trickles in.
func TestHoleSlowUpload(t *testing.T) {
	p := startHolesServer(t)
	p.deployAs(t, "hello", example(t, "hello"), "route=/hello")
	c, err := net.Dial("tcp", p.admin)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "PUT /v1/apps/slow?route=/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n\x7fELF", p.token, 10<<20)
	t0 := time.Now()
	code, body := p.admin1(t, "DELETE", "/v1/apps/hello", nil)
	if code != http.StatusOK || time.Since(t0) > 2*time.Second {
		t.Fatalf("rm during a slow upload: %d %s after %v", code, body, time.Since(t0))
	}
	t.Logf("rm during a slow upload took %v", time.Since(t0))
}

// What a guest may not do to the response: set the headers the gateway
// owns, invent a status, or end a response it failed halfway through as if
// it were complete.
func TestHoleGuestResponse(t *testing.T) {
	p := startHolesServer(t)
	p.deployAs(t, "forge", guestELF(t, "forge", `#include <stdio.h>
int main(void){printf("Content-Type: text/plain\r\nX-Request-Id: forged\r\nServer: evil/1.0\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nConnection: keep-alive\r\n\r\nok\n"); return 0;}`), "route=/forge")
	p.deployAs(t, "status999", guestELF(t, "status999", `#include <stdio.h>
int main(void){printf("Status: 999 Odd\r\nContent-Type: text/plain\r\n\r\nodd\n"); return 0;}`), "route=/status999")
	big := `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void){static char b[32768]; memset(b, 'x', sizeof b);
printf("Content-Type: text/plain\r\n\r\n"); fwrite(b, 1, sizeof b, stdout); fflush(stdout); %s;}`
	p.deployAs(t, "abort", guestELF(t, "abort", fmt.Sprintf(big, "abort()")), "route=/abort")
	p.deployAs(t, "exit3", guestELF(t, "exit3", fmt.Sprintf(big, "return 3")), "route=/exit3")
	p.deployAs(t, "smallexit", guestELF(t, "smallexit", `#include <stdio.h>
int main(void){printf("Content-Type: text/plain\r\n\r\nhalf an ans"); return 2;}`), "route=/smallexit")

	get := func(path string) (*http.Response, string, error) {
		resp, err := http.Get("http://" + p.app + path)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, string(b), err
	}
	resp, body, err := get("/forge")
	if err != nil || resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("forge: %v %v %q", resp, err, body)
	}
	if id := resp.Header.Get("X-Request-Id"); id == "forged" || id == "" {
		t.Errorf("X-Request-Id %q: the guest's value won", id)
	}
	if resp.Header.Get("Server") == "evil/1.0" || strings.Contains(resp.Header.Get("Date"), "1970") {
		t.Errorf("guest-set Server/Date reached the client: %v", resp.Header)
	}
	if resp, body, err := get("/status999"); err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Errorf("Status: 999: %v %v %q, want 502", resp, err, body)
	}
	// Failing after 32 KiB (past the 16 KiB hold): the client must see a
	// truncated response as an error, not a cleanly ended one.
	for _, path := range []string{"/abort", "/exit3"} {
		resp, body, err := get(path)
		if err == nil {
			t.Errorf("%s: %d with %d body bytes and a clean end; want a transport error", path, resp.StatusCode, len(body))
		} else {
			t.Logf("%s: client sees %v after %d bytes", path, err, len(body))
		}
	}
	// Failing inside the hold window: a clean 502 instead of half an answer.
	if resp, body, err := get("/smallexit"); err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Errorf("exit 2 after half an answer: %v %v %q, want 502", resp, err, body)
	}
}

// Content-Length beside Transfer-Encoding: 400 and the connection closed,
// so neither the request nor one smuggled in its body is served.
func TestHoleSmuggling(t *testing.T) {
	p := startHolesServer(t)
	p.deployAs(t, "echo", example(t, "echo"), "route=/echo")
	p.deployAs(t, "hello", example(t, "hello"), "route=/hello")
	c, err := net.Dial("tcp", p.app)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, _ := io.ReadAll(c)
	if got := string(resp); !strings.HasPrefix(got, "HTTP/1.1 400") || strings.Count(got, "HTTP/1.1") != 1 || strings.Contains(got, "Hello") {
		t.Errorf("CL+TE: %q", got)
	}
}

// Per-app fairness of the global cap: with --max-live 8, one app's clients
// holding machines cannot keep another app from starting its guaranteed
// ones.
func TestHoleFairness(t *testing.T) {
	p := startHolesServer(t, "-max-live", "8")
	p.deployAs(t, "loop", example(t, "loop"), "route=/loop&timeout=3s&queue_wait=5s")
	p.deployAs(t, "hello", example(t, "hello"), "route=/hello")
	var wg sync.WaitGroup
	for range 12 { // more than the cap: the loop app fills all it may
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := http.Get("http://" + p.app + "/loop"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	for p.live(t) < 6 {
		time.Sleep(10 * time.Millisecond) // until the loop app holds its share
	}
	t0 := time.Now()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + p.app + "/hello")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("hello while loop holds the shared slots: %v %v", resp, err)
	}
	resp.Body.Close()
	if el := time.Since(t0); el > time.Second {
		t.Errorf("hello waited %v for a slot the loop app held", el)
	}
	wg.Wait()
}

// wasmEcho builds examples/echo for wasm32-wasi.
func wasmEcho(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "echo.wasm")
	if msg, err := exec.Command("clang", "--target=wasm32-wasi", "-O2", "-o", out, "../../examples/echo/echo.c").CombinedOutput(); err != nil {
		if os.Getenv("DUST_REQUIRE_WASM_TOOLCHAIN") == "1" {
			t.Fatalf("clang for wasm32-wasi: %v\n%s", err, msg)
		}
		t.Skipf("no wasm32-wasi toolchain (apt install clang lld wasi-libc libclang-rt-14-dev-wasm32): %v", err)
	}
	return out
}
