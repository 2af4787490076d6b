package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Server apps (issue 12) through a real dust serve: the unmodified Go
// net/http server and the C server from examples/linux, deployed with
// --serve http, each request a copy of the state at their first accept.

// linuxExample builds examples/linux's target (a path below OUT) with
// linux.mk into a temporary directory.
func linuxExample(t *testing.T, target, tool string) string {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not installed", tool)
	}
	out := t.TempDir()
	elf := filepath.Join(out, target)
	cmd := exec.Command("make", "-s", "-f", "../../examples/linux/linux.mk", "OUT="+out, elf)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", target, err, msg)
	}
	return elf
}

func (s *cliServer) do(method, path, ctype string, body io.Reader) (*http.Response, string) {
	s.t.Helper()
	req, _ := http.NewRequest(method, "http://"+s.app+path, body)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestServerAppGo(t *testing.T) {
	s := newCLIServer(t)
	elf := linuxExample(t, "goserver/goserver-go.elf", "go")
	out := s.must("deploy", "goserver", elf, "--serve", "http", "--memory", "1536MiB", "--timeout", "2s")
	if !strings.Contains(out, "goserver v1") {
		t.Fatalf("deploy said %q", out)
	}
	if code, body := s.get("/goserver/?name=dust"); code != 200 || body != "Hello, dust!\n" {
		t.Fatalf("GET /: %d %q", code, body)
	}
	// JSON in and out, the route below the mount point.
	resp, body := s.do("POST", "/goserver/json", "application/json", strings.NewReader(`{"a":[1,2]}`))
	var got map[string]any
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &got) != nil || got["path"] != "/json" || fmt.Sprint(got["you_sent"]) != "map[a:[1 2]]" {
		t.Fatalf("POST /json: %d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("headers %v", resp.Header)
	}
	// The gateway's headers reach the program; hop-by-hop ones do not.
	_, body = s.do("GET", "/goserver/headers", "", nil)
	if !strings.Contains(body, `"X-Forwarded-For"`) || !strings.Contains(body, `"X-Request-Id"`) || !strings.Contains(body, `"forwarded_for":"127.0.0.1"`) {
		t.Errorf("headers the program saw: %s", body)
	}
	// 4 MiB bodies both ways, and a body of unknown length (chunked).
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	resp, body = s.do("POST", "/goserver/echo", "application/octet-stream", bytes.NewReader(big))
	if resp.StatusCode != 200 || body != string(big) {
		t.Fatalf("4 MiB echo: %d, %d bytes back", resp.StatusCode, len(body))
	}
	resp, body = s.do("POST", "/goserver/echo", "text/plain", io.MultiReader(strings.NewReader("chunked "), strings.NewReader("body")))
	if resp.StatusCode != 200 || body != "chunked body" {
		t.Fatalf("chunked echo: %d %q", resp.StatusCode, body)
	}
	// A streaming endpoint: five lines, each flushed.
	if code, body := s.get("/goserver/stream"); code != 200 || strings.Count(body, "\n") != 5 {
		t.Fatalf("stream: %d %q", code, body)
	}
	// Every request meets a fresh copy.
	for i := range 20 {
		if code, body := s.get("/goserver/count"); code != 200 || body != "1\n" {
			t.Fatalf("request %d saw %d %q: state left by an earlier one", i, code, body)
		}
	}
	if code, _ := s.get("/goserver/nothing"); code != 404 {
		t.Errorf("unknown route: %d", code)
	}
}

func TestServerAppC(t *testing.T) {
	s := newCLIServer(t)
	elf := linuxExample(t, "cserver/cserver-glibc.elf", "gcc")
	s.must("deploy", "cserver", elf, "--serve", "http")
	if code, body := s.get("/cserver/"); code != 200 || body != "Hello from a C server!\n" {
		t.Fatalf("GET /: %d %q", code, body)
	}
	resp, body := s.do("POST", "/cserver/echo", "", strings.NewReader("echo me"))
	if resp.StatusCode != 200 || body != "echo me" {
		t.Fatalf("echo: %d %q", resp.StatusCode, body)
	}
	for i := range 10 {
		if code, body := s.get("/cserver/count"); code != 200 || body != "1\n" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	// A CGI program deployed as a server never waits for a connection:
	// the deploy fails, saying so.
	form := linuxExample(t, "form/form-glibc.elf", "gcc")
	code, _, errOut := s.dust("deploy", "notaserver", form, "--serve", "http", "--timeout", "1s")
	if code == 0 || !strings.Contains(errOut, "did not wait for a connection") {
		t.Fatalf("deploying a CGI program as a server: exit %d, %q", code, errOut)
	}
}

// A handler that panics is a 502 (net/http recovers and closes the
// connection without an answer), one that hangs a 504 at the deadline;
// the requests after them are clean.
func TestServerAppFailures(t *testing.T) {
	s := newCLIServer(t)
	elf := filepath.Join(t.TempDir(), "server.elf")
	cmd := exec.Command("go", "build", "-o", elf, "../../internal/hvt/testdata/go/server")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, msg)
	}
	s.must("deploy", "srv", elf, "--serve", "http", "--memory", "1536MiB", "--timeout", "1s", "--env", "GREETING=hi", "--secret", "TOKEN=abc")
	// The environment and secrets are the server's at start-up; a secret
	// change starts it again.
	if code, body := s.get("/srv/env?k=GREETING"); code != 200 || body != "GREETING=hi\n" {
		t.Fatalf("env: %d %q", code, body)
	}
	if code, body := s.get("/srv/env?k=TOKEN"); code != 200 || body != "TOKEN=abc\n" {
		t.Fatalf("secret: %d %q", code, body)
	}
	s.must("secret", "set", "srv", "TOKEN=xyz")
	if code, body := s.get("/srv/env?k=TOKEN"); code != 200 || body != "TOKEN=xyz\n" {
		t.Fatalf("secret after dust secret set: %d %q", code, body)
	}
	if code, body := s.get("/srv/panic"); code != 502 {
		t.Errorf("panic: %d %q", code, body)
	}
	t0 := time.Now()
	if code, body := s.get("/srv/hang"); code != 504 {
		t.Errorf("hang: %d %q", code, body)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("hang answered after %v, deadline 1s", d)
	}
	if code, body := s.get("/srv/x"); code != 200 || !strings.Contains(body, "served=1 ") {
		t.Errorf("after the failures: %d %q", code, body)
	}
	out := s.must("logs", "srv")
	if !strings.Contains(out, "504") || !strings.Contains(out, "502") {
		t.Errorf("logs do not show the failures:\n%s", out)
	}
}
