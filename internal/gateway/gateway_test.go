package gateway

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
)

var (
	elfMu    sync.Mutex
	elfCache = map[string][]byte{}
)

// guest compiles C source against libdust (cached by source).
func guest(t *testing.T, src string) []byte {
	t.Helper()
	elfMu.Lock()
	defer elfMu.Unlock()
	if b, ok := elfCache[src]; ok {
		return b
	}
	dir := t.TempDir()
	c := filepath.Join(dir, "app.c")
	os.WriteFile(c, []byte(src), 0o644)
	out := filepath.Join(dir, "app.elf")
	if msg, err := exec.Command("../../guest/dustcc", "-o", out, c).CombinedOutput(); err != nil {
		t.Fatalf("dustcc: %v\n%s", err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	elfCache[src] = b
	return b
}

func example(t *testing.T, name string) []byte {
	src, err := os.ReadFile(filepath.Join("../../examples", name, name+".c"))
	if err != nil {
		t.Fatal(err)
	}
	return guest(t, string(src))
}

type testServer struct {
	*Server
	url, admin string
	pub, adm   *http.Server
}

func detect(b []byte) (string, error) {
	if bytes.HasPrefix(b, []byte("\x7fELF")) {
		return "hvt", nil
	}
	return "", fmt.Errorf("%w: not an ELF", machine.ErrBadImage)
}

// start runs a gateway on loopback ports with its data in dir.
func start(t *testing.T, dir string) *testServer { return startWith(t, dir, 0) }

// startWith is start with a ReadHeaderTimeout (0: the default).
func startWith(t *testing.T, dir string, readHeader time.Duration) *testServer {
	t.Helper()
	kvmtest.Require(t)
	s, err := New(Config{DataDir: dir, Kinds: map[string]machine.Kind{"hvt": hvt.Kind{}}, Detect: detect,
		Logger: testLogger(), ShutdownGrace: 5 * time.Second, ReadHeaderTimeout: readHeader})
	if err != nil {
		t.Fatal(err)
	}
	pub, adm := s.HTTPServers("", "")
	lp, _ := net.Listen("tcp", "127.0.0.1:0")
	la, _ := net.Listen("tcp", "127.0.0.1:0")
	go pub.Serve(Listener(lp))
	go adm.Serve(la)
	ts := &testServer{Server: s, url: "http://" + lp.Addr().String(), admin: "http://" + la.Addr().String(), pub: pub, adm: adm}
	t.Cleanup(func() { ts.stop() })
	return ts
}

func (ts *testServer) stop() {
	if ts.pub != nil {
		ts.Shutdown(ts.pub, ts.adm)
		ts.pub = nil
	}
}

func (ts *testServer) deploy(t *testing.T, name string, img []byte, set store.Settings) store.App {
	t.Helper()
	a, err := ts.Deploy(name, bytes.NewReader(img), set)
	if err != nil {
		t.Fatalf("deploy %s: %v", name, err)
	}
	return a
}

func get(t *testing.T, method, url string, body io.Reader, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestServeAndStatusMapping(t *testing.T) {
	ts := start(t, t.TempDir())
	ts.deploy(t, "hello", example(t, "hello"), store.Settings{Route: "/hello"})
	ts.deploy(t, "echo", example(t, "echo"), store.Settings{Route: "/echo", MaxBody: 16 << 20})
	ts.deploy(t, "loop", example(t, "loop"), store.Settings{Route: "/loop", Timeout: 100 * time.Millisecond})
	ts.deploy(t, "crash", example(t, "crash"), store.Settings{Route: "/crash"})
	ts.deploy(t, "small", example(t, "echo"), store.Settings{Route: "/small", MaxBody: 10})
	ts.deploy(t, "nocgi", guest(t, "#include <stdio.h>\nint main(void){puts(\"plain text\");return 0;}\n"), store.Settings{Route: "/nocgi"})
	ts.deploy(t, "cookies", guest(t, `#include <stdio.h>
int main(void){printf("Status: 201 Created\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Type: text/plain\r\n\r\nmade\n");return 0;}
`), store.Settings{Route: "/cookies"})

	resp, body := get(t, "GET", ts.url+"/hello", nil, "X-Request-Id", "my-id.1")
	if resp.StatusCode != 200 || body != "Hello, world!\n" || resp.Header.Get("X-Request-Id") != "my-id.1" {
		t.Fatalf("hello: %d %q id=%q", resp.StatusCode, body, resp.Header.Get("X-Request-Id"))
	}
	resp, _ = get(t, "GET", ts.url+"/hello", nil, "X-Request-Id", "<script>")
	if id := resp.Header.Get("X-Request-Id"); id == "<script>" || len(id) != 24 {
		t.Errorf("unsafe request id passed through: %q", id)
	}
	// Whole path segments only: /hellothere is not /hello.
	if resp, _ := get(t, "GET", ts.url+"/hellothere", nil); resp.StatusCode != 404 {
		t.Errorf("/hellothere: %d", resp.StatusCode)
	}
	resp, body = get(t, "POST", ts.url+"/echo/a/b?q=1", strings.NewReader("payload"), "X-Thing", "v")
	if resp.StatusCode != 200 || !strings.Contains(body, "path=/a/b\n") || !strings.Contains(body, "header HTTP_X_THING=v") || !strings.HasSuffix(body, "body:\npayload") {
		t.Errorf("echo: %d %q", resp.StatusCode, body)
	}
	resp, body = get(t, "GET", ts.url+"/cookies", nil)
	if resp.StatusCode != 201 || len(resp.Header.Values("Set-Cookie")) != 2 || body != "made\n" {
		t.Errorf("cookies: %d %v %q", resp.StatusCode, resp.Header.Values("Set-Cookie"), body)
	}
	resp, body = get(t, "HEAD", ts.url+"/hello", nil)
	if resp.StatusCode != 200 || body != "" {
		t.Errorf("HEAD: %d %q", resp.StatusCode, body)
	}
	cases := []struct {
		path   string
		body   string
		status int
	}{
		{"/nothing", "", 404},
		{"/loop", "", 504},
		{"/crash", "", 502},
		{"/nocgi", "", 502},
		{"/small", "this body is longer than ten bytes", 413},
	}
	for _, c := range cases {
		var rb io.Reader
		if c.body != "" {
			rb = strings.NewReader(c.body)
		}
		resp, body := get(t, "POST", ts.url+c.path, rb)
		if resp.StatusCode != c.status {
			t.Errorf("%s: status %d, want %d (%q)", c.path, resp.StatusCode, c.status, body)
		}
		if id := resp.Header.Get("X-Request-Id"); id == "" || !strings.Contains(body, id) {
			t.Errorf("%s: body %q does not carry request id %q", c.path, body, id)
		}
	}
	// Headers beyond the limit: 431 from the HTTP server itself.
	resp, _ = get(t, "GET", ts.url+"/hello", nil, "X-Big", strings.Repeat("x", 80<<10))
	if resp.StatusCode != 431 {
		t.Errorf("huge header: %d", resp.StatusCode)
	}
	// 8 MiB streamed through echo and back.
	big := make([]byte, 8<<20)
	rand.Read(big)
	resp, body = get(t, "PUT", ts.url+"/echo", bytes.NewReader(big))
	if resp.StatusCode != 200 || !strings.HasSuffix(body, "body:\n"+string(big)) {
		t.Errorf("8 MiB echo: %d, %d bytes", resp.StatusCode, len(body))
	}
}

func TestQueueFullGives503(t *testing.T) {
	ts := start(t, t.TempDir())
	ts.deploy(t, "loop", example(t, "loop"), store.Settings{Route: "/loop", Timeout: 700 * time.Millisecond, MaxConcurrency: 1, QueueLen: -1})
	done := make(chan int)
	go func() {
		resp, _ := get(t, "GET", ts.url+"/loop", nil)
		done <- resp.StatusCode
	}()
	// Wait until the first request holds the only slot.
	for {
		ts.mu.RLock()
		live := ts.apps["loop"].gate.live()
		ts.mu.RUnlock()
		if live == 1 {
			break
		}
		runtimeGosched()
	}
	resp, body := get(t, "GET", ts.url+"/loop", nil)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("second request: %d %q retry-after=%q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if code := <-done; code != 504 {
		t.Errorf("first request: %d", code)
	}
}

func TestRedeployUnderLoadRollbackRestart(t *testing.T) {
	dir := t.TempDir()
	ts := start(t, dir)
	v1 := guest(t, "#include <stdio.h>\nint main(void){printf(\"Content-Type: text/plain\\n\\nv1\\n\");return 0;}\n")
	v2 := guest(t, "#include <stdio.h>\nint main(void){printf(\"Content-Type: text/plain\\n\\nv2\\n\");return 0;}\n")
	ts.deploy(t, "app", v1, store.Settings{Route: "/app"})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, body := get(t, "GET", ts.url+"/app", nil)
				mu.Lock()
				seen[fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(body))]++
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < 3; i++ {
		ts.deploy(t, "app", v2, store.Settings{Route: "/app"})
		ts.deploy(t, "app", v1, store.Settings{Route: "/app"})
	}
	ts.deploy(t, "app", v2, store.Settings{Route: "/app"})
	close(stop)
	wg.Wait()
	for k, n := range seen {
		if k != "200 v1" && k != "200 v2" {
			t.Errorf("%d responses %q during redeploys", n, k)
		}
	}
	if _, body := get(t, "GET", ts.url+"/app", nil); body != "v2\n" {
		t.Fatalf("after redeploy: %q", body)
	}
	a, err := ts.Rollback("app")
	if err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, "GET", ts.url+"/app", nil); body != "v1\n" || a.Current.Number != 7 {
		t.Fatalf("after rollback: %q, version %d", body, a.Current.Number)
	}
	// A broken image is refused and the current version keeps serving.
	if _, err := ts.Deploy("app", strings.NewReader("\x7fELF garbage"), store.Settings{Route: "/app"}); !errors.Is(err, machine.ErrBadImage) {
		t.Fatalf("bad image deploy: %v", err)
	}
	if _, body := get(t, "GET", ts.url+"/app", nil); body != "v1\n" {
		t.Fatalf("after failed deploy: %q", body)
	}
	// Restart: the app is still there, at the rolled-back version.
	ts.stop()
	ts2 := start(t, dir)
	if _, body := get(t, "GET", ts2.url+"/app", nil); body != "v1\n" {
		t.Fatalf("after restart: %q", body)
	}
}

func TestAdminAuthAndLogs(t *testing.T) {
	dir := t.TempDir()
	ts := start(t, dir)
	st, err := os.Stat(filepath.Join(dir, TokenFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", err, st.Mode())
	}
	for _, tok := range []string{"", "Bearer wrong", "Bearer " + ts.Token() + "x", ts.Token()} {
		resp, _ := get(t, "GET", ts.admin+"/v1/apps", nil, "Authorization", tok)
		if resp.StatusCode != 401 {
			t.Errorf("token %q: %d", tok, resp.StatusCode)
		}
	}
	auth := []string{"Authorization", "Bearer " + ts.Token()}
	resp, _ := get(t, "PUT", ts.admin+"/v1/apps/talker?route=/talk", bytes.NewReader(guest(t, `#include <stdio.h>
int main(void){fprintf(stderr, "a line for the log\n"); printf("Content-Type: text/plain\n\nok\n"); return 0;}
`)), auth...)
	if resp.StatusCode != 200 {
		t.Fatalf("deploy through the API: %d", resp.StatusCode)
	}
	resp, _ = get(t, "GET", ts.url+"/talk", nil, "X-Request-Id", "req-42")
	if resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	_, logs := get(t, "GET", ts.admin+"/v1/apps/talker/logs", nil, auth...)
	if !strings.Contains(logs, "req-42 a line for the log") {
		t.Errorf("logs: %q", logs)
	}
	for path, want := range map[string]int{"/v1/apps/nope": 404, "/v1/apps/talker": 200, "/metrics": 200, "/v1/status": 200} {
		if resp, _ := get(t, "GET", ts.admin+path, nil, auth...); resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	resp, _ = get(t, "PUT", ts.admin+"/v1/apps/bad?route=/x&timeout=soon", strings.NewReader("x"), auth...)
	if resp.StatusCode != 400 {
		t.Errorf("bad setting: %d", resp.StatusCode)
	}
	resp, _ = get(t, "PUT", ts.admin+"/v1/apps/bad?route=/x", strings.NewReader("not an image"), auth...)
	if resp.StatusCode != 422 {
		t.Errorf("bad image: %d", resp.StatusCode)
	}
	if resp, body := get(t, "GET", ts.admin+"/", nil); resp.StatusCode != 200 || !strings.Contains(body, "textContent") {
		t.Errorf("status page: %d", resp.StatusCode)
	}
}

func runtimeGosched() { runtime.Gosched() }

// A client that never finishes its header is cut off, and others are
// served meanwhile.
func TestSlowClientIsCutOff(t *testing.T) {
	ts := startWith(t, t.TempDir(), 300*time.Millisecond)
	ts.deploy(t, "hello", example(t, "hello"), store.Settings{Route: "/hello"})
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")); err != nil {
		t.Fatal(err)
	}
	if resp, body := get(t, "GET", ts.url+"/hello", nil); resp.StatusCode != 200 || body != "Hello, world!\n" {
		t.Fatalf("well-behaved client during slowloris: %d %q", resp.StatusCode, body)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server kept the half-sent request open")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cut off after %v", d)
	}
}

// `dust logs -f`: a follower sees lines written after it subscribed.
func TestLogsFollow(t *testing.T) {
	ts := start(t, t.TempDir())
	ts.deploy(t, "talker", guest(t, `#include <stdio.h>
int main(void){fprintf(stderr, "hello log\n"); printf("Content-Type: text/plain\n\nok\n"); return 0;}
`), store.Settings{Route: "/talk"})
	req, _ := http.NewRequest("GET", ts.admin+"/v1/apps/talker/logs?follow=1", nil)
	req.Header.Set("Authorization", "Bearer "+ts.Token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The follower is subscribed once the response header arrived.
	get(t, "GET", ts.url+"/talk", nil, "X-Request-Id", "follow-1")
	line := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		n, _ := resp.Body.Read(buf)
		line <- string(buf[:n])
	}()
	select {
	case l := <-line:
		if !strings.Contains(l, "follow-1 hello log") {
			t.Fatalf("followed %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no line reached the follower")
	}
}

// Hostile HTTP: smuggling attempts are refused by the server, and dot
// segments never move a request to another app.
func TestHostileRequests(t *testing.T) {
	ts := start(t, t.TempDir())
	ts.deploy(t, "hello", example(t, "hello"), store.Settings{Route: "/hello"})
	ts.deploy(t, "echo", example(t, "echo"), store.Settings{Route: "/echo"})
	raw := func(req string) string {
		conn, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write([]byte(req))
		b, _ := io.ReadAll(conn)
		return string(b)
	}
	// Content-Length and Transfer-Encoding together: refused with 400 and
	// the connection closed (RFC 9112 6.1), so neither the request nor the
	// one smuggled inside its body is served, whichever framing a proxy in
	// front believed. The pair is caught on the first request of a
	// connection and after a keep-alive one alike, however the names are
	// spelled.
	for _, smuggle := range []string{
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-LENGTH: 40\r\n\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
		// A stray CRLF before the request line (Go's server skips it).
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		resp := raw(smuggle)
		first := strings.HasPrefix(smuggle, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40")
		if n := strings.Count(resp, "HTTP/1.1 "); (first && n != 1) || (!first && n != 2) ||
			!strings.Contains(resp, "HTTP/1.1 400") || !strings.Contains(resp, "Connection: close") ||
			strings.Count(resp, "Hello, world!") > map[bool]int{true: 0, false: 1}[first] {
			t.Errorf("CL+TE request not refused, or the connection stayed open: %q", resp)
		}
	}
	// HTTP/1.0: Go ignores Transfer-Encoding there and frames by
	// Content-Length, a proxy in front may not.
	if resp := raw("POST /echo HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"); !strings.Contains(resp, " 400 ") {
		t.Errorf("HTTP/1.0 CL+TE not refused: %q", resp)
	}
	// An honest chunked body is served, and the connection closes after it.
	chunked := "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
	if resp := raw(chunked); strings.Count(resp, "HTTP/1.1 ") != 1 || !strings.Contains(resp, "HTTP/1.1 200") || !strings.Contains(resp, "method=POST") {
		t.Errorf("chunked request: %q", resp)
	}
	double := "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde"
	if resp := raw(double); !strings.HasPrefix(resp, "HTTP/1.1 400") {
		t.Errorf("conflicting Content-Length: %q", resp[:min(len(resp), 80)])
	}
	resp := raw("GET /hello/../echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.Contains(resp, "Hello, world!") {
		t.Errorf("/hello/../echo left the hello app: %q", resp)
	}
	resp = raw("GET /%2e%2e/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(resp, "HTTP/1.1 404") {
		t.Errorf("/%%2e%%2e/echo: %q", resp[:min(len(resp), 80)])
	}
}

// testLogger discards logs unless DUST_TEST_LOG=1 asks for them on stderr.
func testLogger() *slog.Logger {
	if os.Getenv("DUST_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Disk is given back: a refused upload leaves no image behind, and removing
// an app deletes its images unless another app still uses them.
func TestImagesGivenBack(t *testing.T) {
	dir := t.TempDir()
	ts := start(t, dir)
	images := func() int {
		es, err := os.ReadDir(filepath.Join(dir, "images", "sha256"))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range es {
			if !strings.HasPrefix(e.Name(), ".") {
				n++
			}
		}
		return n
	}
	if _, err := ts.Deploy("bad", strings.NewReader("\x7fELF not really"), store.Settings{Route: "/bad"}); !errors.Is(err, machine.ErrBadImage) {
		t.Fatalf("garbage ELF: %v", err)
	}
	if n := images(); n != 0 {
		t.Fatalf("%d images on disk after a refused deploy", n)
	}
	hello := example(t, "hello")
	ts.deploy(t, "a", hello, store.Settings{Route: "/a"})
	ts.deploy(t, "b", hello, store.Settings{Route: "/b"})
	ts.deploy(t, "b", example(t, "echo"), store.Settings{Route: "/b"})
	if n := images(); n != 2 {
		t.Fatalf("%d images, want 2", n)
	}
	del := func(name string) {
		req, _ := http.NewRequest("DELETE", ts.admin+"/v1/apps/"+name, nil)
		req.Header.Set("Authorization", "Bearer "+ts.Token())
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("rm %s: %v %v", name, resp, err)
		}
		resp.Body.Close()
	}
	del("a") // hello is still in b's history
	if n := images(); n != 2 {
		t.Fatalf("%d images after rm a, want 2 (b's history uses hello)", n)
	}
	del("b")
	if n := images(); n != 0 {
		t.Fatalf("%d images after removing every app", n)
	}
}

// Idle keep-alive connections are closed by the gateway.
func TestIdleConnectionClosed(t *testing.T) {
	kvmtest.Require(t)
	s, err := New(Config{DataDir: t.TempDir(), Kinds: map[string]machine.Kind{"hvt": hvt.Kind{}}, Detect: detect,
		Logger: testLogger(), IdleTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := s.HTTPServers("", "")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go pub.Serve(Listener(l))
	t.Cleanup(func() { s.Shutdown(pub) })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	t0 := time.Now()
	b, err := io.ReadAll(c) // the 404, then EOF when the server closes the idle connection
	if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 404") {
		t.Fatalf("idle connection: %q %v", b, err)
	}
	if el := time.Since(t0); el > 2*time.Second {
		t.Fatalf("idle connection closed after %v, timeout 200ms", el)
	}
}

// A static Linux program's refused system calls are counted per app and
// logged once per request.
func TestUnsupportedSyscallsCounted(t *testing.T) {
	ts := start(t, t.TempDir())
	dir := t.TempDir()
	src := filepath.Join(dir, "odd.c")
	os.WriteFile(src, []byte(`#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void){ syscall(999); syscall(SYS_execve, "/app/x", 0, 0); printf("Content-Type: text/plain\r\n\r\nok\n"); return 0; }`), 0o644)
	bin := filepath.Join(dir, "odd")
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		t.Skipf("no static glibc toolchain: %v\n%s", err, out)
	}
	img, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	ts.deploy(t, "odd", img, store.Settings{Route: "/odd"})
	if resp, body := get(t, "GET", ts.url+"/odd", nil, "X-Request-Id", "odd-1"); resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("odd: %d %q", resp.StatusCode, body)
	}
	_, metrics := get(t, "GET", ts.admin+"/metrics", nil, "Authorization", "Bearer "+ts.Token())
	for _, want := range []string{`dust_syscalls_unsupported_total{app="odd",call="unknown"} 1`, `dust_syscalls_unsupported_total{app="odd",call="execve"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	_, logs := get(t, "GET", ts.admin+"/v1/apps/odd/logs", nil, "Authorization", "Bearer "+ts.Token())
	if !strings.Contains(logs, "odd-1") || !strings.Contains(logs, "execve×1") || !strings.Contains(logs, "syscall_999×1") {
		t.Errorf("app log lacks the refused calls: %q", logs)
	}
}

// A manual GC removes the images no version uses and says what it freed.
func TestManualGC(t *testing.T) {
	ts := start(t, t.TempDir())
	ts.deploy(t, "hello", example(t, "hello"), store.Settings{Route: "/hello"})
	// An image nobody references, as a crashed deploy would leave.
	if _, _, err := ts.Store().PutImage(bytes.NewReader(example(t, "echo")), 1<<30); err != nil {
		t.Fatal(err)
	}
	grace := store.GCGrace
	store.GCGrace = 0
	defer func() { store.GCGrace = grace }()
	req, _ := http.NewRequest("POST", ts.admin+"/v1/gc", nil)
	req.Header.Set("Authorization", "Bearer "+ts.Token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res GCResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || resp.StatusCode != 200 {
		t.Fatalf("gc: %d %v", resp.StatusCode, err)
	}
	if res.ImagesRemoved != 1 || res.ImageBytes == "0B" || res.ImageBytes == "" {
		t.Fatalf("gc: %+v, want the one unused image removed", res)
	}
	if r, body := get(t, "GET", ts.url+"/hello", nil); r.StatusCode != 200 || body != "Hello, world!\n" {
		t.Fatalf("the deployed app after gc: %d %q", r.StatusCode, body)
	}
}
