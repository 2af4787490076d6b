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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/store"
)

// Issue 13, through the real CLI against a real `dust serve`.

// cliServer is a `dust serve` child on fixed addresses (so that a restart
// comes back where clients expect it) whose stderr is kept.
type cliServer struct {
	t               *testing.T
	bin, data       string
	app, admin      string
	token           string
	cmd             *exec.Cmd
	stderr          *bytes.Buffer
	stderrMu        *sync.Mutex
	allStderr       []string
	extraServeFlags []string
}

type lockedBuf struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func newCLIServer(t *testing.T, flags ...string) *cliServer {
	t.Helper()
	kvmtest.Require(t)
	if testing.Short() {
		t.Skip("spawns servers: skipped with -short")
	}
	dir, bin := buildDust(t)
	s := &cliServer{t: t, bin: bin, data: filepath.Join(dir, "data"), app: freeAddr(t), admin: freeAddr(t), extraServeFlags: flags}
	s.start()
	t.Cleanup(func() { s.stop() })
	return s
}

func (s *cliServer) start() {
	t := s.t
	t.Helper()
	s.stderr, s.stderrMu = &bytes.Buffer{}, &sync.Mutex{}
	s.cmd = exec.Command(s.bin, append([]string{"serve", "-data", s.data, "-listen", s.app, "-admin", s.admin, "-pool-floor", "1"}, s.extraServeFlags...)...)
	out, _ := s.cmd.StdoutPipe()
	s.cmd.Stderr = lockedBuf{s.stderrMu, s.stderr}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.Contains(line, "serving apps") {
		s.cmd.Process.Kill()
		t.Fatalf("dust serve did not start: %q %v\n%s", line, err, s.stderr)
	}
	go io.Copy(io.Discard, out)
	tok, err := os.ReadFile(filepath.Join(s.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	s.token = strings.TrimSpace(string(tok))
}

func (s *cliServer) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	s.cmd.Wait()
	s.cmd = nil
	s.stderrMu.Lock()
	s.allStderr = append(s.allStderr, s.stderr.String())
	s.stderrMu.Unlock()
}

func (s *cliServer) restart() {
	s.stop()
	s.start()
}

// dust runs the CLI against the server.
func (s *cliServer) dust(args ...string) (int, string, string) {
	return s.dustIn(nil, args...)
}

func (s *cliServer) dustIn(stdin io.Reader, args ...string) (int, string, string) {
	s.t.Helper()
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "DUST_ADMIN="+s.admin, "DUST_TOKEN="+s.token)
	cmd.Stdin = stdin
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("dust %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// must runs the CLI and fails the test unless it exits 0.
func (s *cliServer) must(args ...string) string {
	s.t.Helper()
	code, out, errOut := s.dust(args...)
	if code != 0 {
		s.t.Fatalf("dust %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func (s *cliServer) get(path string, hdr ...string) (int, string) {
	s.t.Helper()
	req, _ := http.NewRequest("GET", "http://"+s.app+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (s *cliServer) api(method, path string) (int, string) {
	s.t.Helper()
	p := &serveProc{admin: s.admin, token: s.token}
	return p.admin1(s.t, method, path, nil)
}

type appJSON struct {
	Name     string
	Version  int
	URL      string
	Settings struct {
		Route, Memory, Timeout string
		Env                    []string
	}
	Secrets  []string
	Versions []struct{ Version int }
	Status   *struct {
		Limits struct{ Memory, Timeout string }
	}
}

func (s *cliServer) appJSON(name string) appJSON {
	s.t.Helper()
	var a appJSON
	out := s.must("app", name, "--json")
	if err := json.Unmarshal([]byte(out), &a); err != nil {
		s.t.Fatalf("dust app --json: %v\n%s", err, out)
	}
	return a
}

// The exact sequence of issue 13: a redeploy that gives only --env keeps
// the route and limits; an identical redeploy makes no version; env is
// merged; rollback --to restores a whole version.
func TestCLIRedeployKeepsSettings(t *testing.T) {
	s := newCLIServer(t)
	hello, echo := example(t, "hello"), example(t, "echo")
	url := "http://" + s.app + "/my"

	if out := s.must("deploy", "myapp", hello, "--route", "/my", "--timeout", "2s", "--memory", "16MiB"); out != "myapp v1 → "+url+"\n" {
		t.Fatalf("first deploy printed %q", out)
	}
	if out := s.must("deploy", "myapp", echo, "--env", "GREETING=howdy"); out != "myapp v2 → "+url+"\n" {
		t.Fatalf("redeploy printed %q", out)
	}
	if code, body := s.get("/my"); code != 200 || !strings.Contains(body, "method=GET") {
		t.Fatalf("v2 at /my: %d %q", code, body)
	}
	if code, _ := s.get("/myapp"); code != 404 {
		t.Fatalf("/myapp answers %d: the route was not carried forward", code)
	}
	a := s.appJSON("myapp")
	if a.Version != 2 || a.Settings.Route != "/my" || a.Settings.Timeout != "2s" || a.Settings.Memory != "16MiB" ||
		strings.Join(a.Settings.Env, " ") != "GREETING=howdy" {
		t.Fatalf("v2 settings: %+v", a)
	}
	if a.Status == nil || a.Status.Limits.Timeout != "2s" || a.Status.Limits.Memory != "16MiB" {
		t.Fatalf("v2 does not run with its limits: %+v", a.Status)
	}

	// Identical: no version.
	if out := s.must("deploy", "myapp", echo, "--env", "GREETING=howdy"); out != "myapp v2 unchanged (same image and settings as v2)\n" {
		t.Fatalf("identical redeploy printed %q", out)
	}
	var res struct {
		Version   int
		Unchanged bool
	}
	if err := json.Unmarshal([]byte(s.must("deploy", "myapp", echo, "--json")), &res); err != nil || !res.Unchanged || res.Version != 2 {
		t.Fatalf("identical redeploy --json: %+v %v", res, err)
	}
	if a := s.appJSON("myapp"); len(a.Versions) != 2 {
		t.Fatalf("identical redeploys made versions: %+v", a.Versions)
	}

	// Env merges; --unset-env removes; both inherit the rest.
	if out := s.must("deploy", "myapp", echo, "--env", "B=1"); out != "myapp v3 → "+url+"\n" {
		t.Fatalf("env redeploy printed %q", out)
	}
	if env := strings.Join(s.appJSON("myapp").Settings.Env, " "); env != "GREETING=howdy B=1" {
		t.Fatalf("env after --env B=1: %q", env)
	}
	s.must("deploy", "myapp", echo, "--unset-env", "GREETING", "--env", "B=2")
	if a := s.appJSON("myapp"); strings.Join(a.Settings.Env, " ") != "B=2" || a.Settings.Timeout != "2s" {
		t.Fatalf("after --unset-env GREETING --env B=2: %+v", a.Settings)
	}
	// 0 gives the default back.
	s.must("deploy", "myapp", echo, "--timeout", "0")
	if a := s.appJSON("myapp"); a.Settings.Timeout != "" || a.Status.Limits.Timeout != "10s" || a.Settings.Memory != "16MiB" {
		t.Fatalf("after --timeout 0: %+v %+v", a.Settings, a.Status)
	}

	// Back to v1, image and settings; from stdin a v6 again.
	if out := s.must("rollback", "myapp", "--to", "1"); out != "myapp v1 → "+url+" (rolled back from v5)\n" {
		t.Fatalf("rollback --to 1 printed %q", out)
	}
	if code, body := s.get("/my"); code != 200 || body != "Hello, world!\n" {
		t.Fatalf("after rollback --to 1: %d %q", code, body)
	}
	if a := s.appJSON("myapp"); a.Version != 1 || len(a.Settings.Env) != 0 || a.Settings.Timeout != "2s" {
		t.Fatalf("v1 settings after rollback: %+v", a.Settings)
	}
	img, _ := os.ReadFile(echo)
	code, out, errOut := s.dustIn(bytes.NewReader(img), "deploy", "myapp", "-")
	if code != 0 || out != "myapp v6 → "+url+"\n" {
		t.Fatalf("deploy from stdin: %d %q %s", code, out, errOut)
	}
	tbl := s.must("apps")
	if !strings.HasPrefix(tbl, "NAME ") || !strings.Contains(tbl, "myapp") || !strings.Contains(tbl, url) || !strings.Contains(tbl, " v6 ") {
		t.Fatalf("dust apps:\n%s", tbl)
	}
	if txt := s.must("app", "myapp"); !strings.Contains(txt, "timeout") || !strings.Contains(txt, "2s") || !strings.Contains(txt, "max-concurrency     16 (default)") {
		t.Fatalf("dust app:\n%s", txt)
	}
	code, body := s.api("GET", "/v1/info")
	if code != 200 || !strings.Contains(body, `"url": "http://`+s.app+`"`) {
		t.Fatalf("/v1/info: %d %s", code, body)
	}
}

const secretValue = "s3cr3t-Value-93f1"

// A secret reaches the app's environment and never any output: every CLI
// command's, every API answer, the status page, the server's log, the
// app's log (where the app itself printed it).
func TestCLISecretsNeverShown(t *testing.T) {
	s := newCLIServer(t)
	img := guestELF(t, "tell", `#include <stdio.h>
#include <stdlib.h>
int main(void){
	const char *p = getenv("DB_PASS"), *n = getenv("NEW_ONE");
	fprintf(stderr, "my password is %s\n", p ? p : "(none)");
	printf("Content-Type: text/plain\n\npass=%s new=%s\n", p ? p : "", n ? n : "");
	return 0;
}
`)
	var outputs []string
	keep := func(code int, out, errOut string) {
		t.Helper()
		if code != 0 {
			t.Fatalf("exit %d: %s %s", code, out, errOut)
		}
		outputs = append(outputs, out, errOut)
	}
	keep(s.dust("deploy", "tell", img, "--secret", "DB_PASS="+secretValue, "--env", "PLAIN=visible"))
	if code, body := s.get("/tell", "X-Request-Id", "sec-1"); code != 200 || body != "pass="+secretValue+" new=\n" {
		t.Fatalf("the machine did not get the secret: %d %q", code, body)
	}
	keep(s.dust("secret", "set", "tell", "NEW_ONE=second-"+secretValue))
	if code, body := s.get("/tell"); code != 200 || !strings.Contains(body, "new=second-"+secretValue) {
		t.Fatalf("dust secret set did not reach the next request: %d %q", code, body)
	}
	keep(s.dust("secret", "ls", "tell"))
	if !strings.Contains(outputs[len(outputs)-2], "DB_PASS, NEW_ONE") {
		t.Fatalf("secret ls: %q", outputs[len(outputs)-2])
	}
	for _, args := range [][]string{{"apps"}, {"apps", "--json"}, {"app", "tell"}, {"app", "tell", "--json"}, {"logs", "tell"}, {"logs", "tell", "--json"}} {
		keep(s.dust(args...))
	}
	if !strings.Contains(outputs[len(outputs)-6], "DB_PASS") || !strings.Contains(outputs[len(outputs)-6], "PLAIN=visible") {
		t.Fatalf("dust app --json shows no secret names or env: %s", outputs[len(outputs)-6])
	}
	if logs := outputs[len(outputs)-4]; !strings.Contains(logs, "sec-1 my password is [secret DB_PASS]") {
		t.Fatalf("the app's log line is not there, redacted: %q", logs)
	}
	for _, path := range []string{"/v1/apps", "/v1/apps/tell", "/v1/status", "/v1/info", "/metrics", "/v1/apps/tell/logs", "/v1/apps/tell/logs?format=json", "/v1/apps/tell/secrets", "/"} {
		code, body := s.api("GET", path)
		if code != 200 {
			t.Fatalf("GET %s: %d", path, code)
		}
		outputs = append(outputs, body)
	}
	keep(s.dust("secret", "rm", "tell", "NEW_ONE"))
	if code, body := s.get("/tell"); code != 200 || body != "pass="+secretValue+" new=\n" {
		t.Fatalf("after secret rm: %d %q", code, body)
	}
	s.stop()
	outputs = append(outputs, s.allStderr...)
	logFiles, _ := filepath.Glob(filepath.Join(s.data, "logs", "*"))
	for _, f := range logFiles {
		b, _ := os.ReadFile(f)
		outputs = append(outputs, string(b))
	}
	for i, o := range outputs {
		if strings.Contains(o, secretValue) {
			t.Errorf("output %d shows the secret:\n%s", i, o)
		}
	}
	st, err := os.Stat(filepath.Join(s.data, "dust.db"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("dust.db holding the secrets: %v, mode %v", err, st.Mode())
	}
}

// A failed request leaves a line in the app's log with its id, status,
// outcome and detail; the log survives a restart; --since filters; and
// `logs -f` reconnects across a restart, then gives up with exit 7.
func TestCLILogsLast(t *testing.T) {
	s := newCLIServer(t)
	s.must("deploy", "crash", example(t, "crash"))
	if code, _ := s.get("/crash", "X-Request-Id", "before-restart"); code != 502 {
		t.Fatalf("crash answered %d", code)
	}
	logs := s.must("logs", "crash")
	if !strings.Contains(logs, "before-restart dust: request failed: status 502, outcome ") {
		t.Fatalf("no failure line in the app's log:\n%s", logs)
	}
	restartedAt := time.Now()
	s.restart()
	if logs := s.must("logs", "crash"); !strings.Contains(logs, "before-restart dust: request failed: status 502") {
		t.Fatalf("the log did not survive a restart:\n%s", logs)
	}
	if code, _ := s.get("/crash", "X-Request-Id", "after-restart"); code != 502 {
		t.Fatalf("crash answered %d", code)
	}
	since := (time.Since(restartedAt) + time.Millisecond).Round(time.Millisecond)
	logs = s.must("logs", "crash", "--since", since.String())
	if strings.Contains(logs, "before-restart") || !strings.Contains(logs, "after-restart") {
		t.Fatalf("logs --since %v:\n%s", since, logs)
	}

	// A follower across a restart.
	f := exec.Command(s.bin, "logs", "crash", "-f", "--since", "1ms", "--reconnect", "10s")
	f.Env = append(os.Environ(), "DUST_ADMIN="+s.admin, "DUST_TOKEN="+s.token)
	fout, _ := f.StdoutPipe()
	var ferr bytes.Buffer
	var ferrMu sync.Mutex
	f.Stderr = lockedBuf{&ferrMu, &ferr}
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(fout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitLine := func(id string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case l := <-lines:
				if strings.Contains(l, id) {
					return
				}
			case <-deadline:
				t.Fatalf("the follower never showed %s", id)
			}
		}
	}
	// The follower has connected once it shows a line written after it
	// started.
	for i := 0; ; i++ {
		s.get("/crash", "X-Request-Id", fmt.Sprintf("follow-%d", i))
		ok := false
		select {
		case l := <-lines:
			ok = strings.Contains(l, "follow-")
		case <-time.After(2 * time.Second):
		}
		if ok {
			break
		}
		if i > 10 {
			t.Fatal("the follower shows nothing")
		}
	}
	s.restart()
	s.get("/crash", "X-Request-Id", "while-following")
	waitLine("while-following")
	// stderr reaches ferr through a copying goroutine: it may lag stdout.
	var msg string
	for deadline := time.Now().Add(10 * time.Second); ; {
		ferrMu.Lock()
		msg = ferr.String()
		ferrMu.Unlock()
		if strings.Contains(msg, "reconnected") || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not a race fix
	}
	if !strings.Contains(msg, "lost the connection") || !strings.Contains(msg, "reconnected") {
		t.Fatalf("the follower did not say it reconnected: %q", msg)
	}
	s.stop()
	done := make(chan error, 1)
	go func() { done <- f.Wait() }()
	select {
	case err := <-done:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != exitUnavailable {
			t.Fatalf("follower without a server: %v", err)
		}
		ferrMu.Lock()
		defer ferrMu.Unlock()
		if !strings.Contains(ferr.String(), "could not reconnect") {
			t.Fatalf("follower's last words: %q", ferr.String())
		}
	case <-time.After(30 * time.Second):
		f.Process.Kill()
		t.Fatal("the follower did not give up")
	}
}

// The log is bounded: with --log-max-size 64KiB an app's log files never
// pass it, and the newest lines are the ones kept.
func TestCLILogsBounded(t *testing.T) {
	s := newCLIServer(t, "--log-max-size", "64KiB")
	s.must("deploy", "crash", example(t, "crash"))
	for i := 0; i < 400; i++ {
		s.get("/crash", "X-Request-Id", fmt.Sprintf("req-%03d", i))
	}
	files, _ := filepath.Glob(filepath.Join(s.data, "logs", "crash.log*"))
	var total int64
	for _, f := range files {
		st, _ := os.Stat(f)
		total += st.Size()
	}
	if total > 64<<10 || len(files) != 2 {
		t.Fatalf("log files %v take %d bytes, cap 64KiB", files, total)
	}
	logs := s.must("logs", "crash")
	if !strings.Contains(logs, "req-399 ") || strings.Contains(logs, "req-000 ") {
		t.Fatalf("the log kept the wrong lines:\n%.500s", logs)
	}
}

// Every error path docs/cli.md lists: the exit code and the message.
func TestCLIErrorPaths(t *testing.T) {
	s := newCLIServer(t)
	hello := example(t, "hello")
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.elf")
	os.WriteFile(empty, nil, 0o644)
	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("just some text\n"), 0o644)
	s.must("deploy", "myapp", hello, "--route", "/my")
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		code int
		msg  string // in stderr, and in docs/cli.md
	}{
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"deploy", "myapp"}, exitUsage, "want NAME IMAGE, got 1 argument(s)"},
		{[]string{"deploy", "myapp", hello, "--timeout", "abc"}, exitUsage, `--timeout "abc": want a duration such as 2s or 500ms`},
		{[]string{"deploy", "myapp", hello, "--memory", "lots"}, exitUsage, `--memory "lots": want a size such as 16MiB, 512KiB or 1GiB`},
		{[]string{"deploy", "myapp", hello, "--max-concurrency", "x"}, exitUsage, `--max-concurrency "x": want a whole number`},
		{[]string{"deploy", "myapp", hello, "--queue-len", "-5"}, exitUsage, `--queue-len "-5": want a whole number, 0 for the default or -1 for no queue`},
		{[]string{"deploy", "myapp", hello, "--env", "NOEQUALS"}, exitUsage, `--env "NOEQUALS": want KEY=VALUE`},
		{[]string{"deploy", "myapp", hello, "--isolation", "sometimes"}, exitUsage, `--isolation "sometimes": want restore or fresh`},
		{[]string{"deploy", "myapp", hello, "--route", "my"}, exitUsage, `--route "my": want a path starting with /`},
		{[]string{"deploy", "myapp", hello, "--bogus"}, exitUsage, "unknown flag -bogus"},
		{[]string{"deploy", "other", hello, "--route", "/my"}, exitUsage, "is already served by app myapp"},
		{[]string{"deploy", "myapp", hello, "--unset-env", "NOPE"}, exitUsage, "NOPE is not set"},
		{[]string{"deploy", "myapp", empty}, exitBadImage, "is empty (0 bytes)"},
		{[]string{"deploy", "myapp", text}, exitBadImage, "neither an ELF (hvt) nor a WebAssembly image"},
		{[]string{"deploy", "myapp", filepath.Join(dir, "missing.elf")}, exitError, "no such file or directory"},
		{[]string{"app", "nope"}, exitNotFound, `app "nope": not found`},
		{[]string{"logs", "nope"}, exitNotFound, `app "nope": not found`},
		{[]string{"rollback", "myapp"}, exitUsage, "no version before 1 is kept"},
		{[]string{"rollback", "myapp", "--to", "9"}, exitUsage, "v9 is not kept"},
		{[]string{"rollback", "myapp", "--to", "x"}, exitUsage, `--to "x": want a version number`},
		{[]string{"logs", "myapp", "--since", "yesterday"}, exitUsage, `--since "yesterday": want a duration`},
		{[]string{"secret", "set", "myapp"}, exitUsage, "want set APP NAME=VALUE..., rm APP NAME... or ls APP"},
		{[]string{"secret", "rm", "myapp", "NOPE"}, exitUsage, "app myapp has no secret NOPE"},
		{[]string{"apps", "--admin", "127.0.0.1:1"}, exitUnavailable, "is `dust serve` running?"},
		{[]string{"version", "extra"}, exitUsage, "want no arguments"},
	}
	for _, c := range cases {
		code, _, errOut := s.dust(c.args...)
		if code != c.code || !strings.Contains(errOut, c.msg) {
			t.Errorf("dust %s: exit %d, want %d; stderr %q, want %q in it", strings.Join(c.args, " "), code, c.code, errOut, c.msg)
		}
		if !bytes.Contains(doc, []byte(c.msg)) {
			t.Errorf("docs/cli.md does not list %q (dust %s)", c.msg, strings.Join(c.args, " "))
		}
	}
	// A refused token.
	cmd := exec.Command(s.bin, "apps")
	cmd.Env = append(os.Environ(), "DUST_ADMIN="+s.admin, "DUST_TOKEN=wrong-token")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitUnavailable || !strings.Contains(string(out), "missing or wrong bearer token") {
		t.Errorf("wrong token: %v %s", err, out)
	}
	// No failed command changed the app.
	if a := s.appJSON("myapp"); a.Version != 1 || a.Settings.Route != "/my" {
		t.Errorf("the failed commands changed myapp: %+v", a)
	}
	// Every subcommand has help with a synopsis, its flags and an example.
	for _, sub := range []string{"run", "serve", "deploy", "apps", "app", "rollback", "rm", "gc", "logs", "secret", "bench", "new", "dev", "version"} {
		code, out, errOut := s.dust(sub, "-h")
		if code != 0 || !strings.Contains(out+errOut, "usage: dust "+sub) {
			t.Errorf("dust %s -h: exit %d: %s%s", sub, code, out, errOut)
		}
		if !strings.Contains(out+errOut, "example:") {
			t.Errorf("dust %s -h has no example:\n%s", sub, out)
		}
	}
	if code, out, _ := s.dust("version"); code != 0 || !strings.HasPrefix(out, "dust ") || !strings.Contains(out, "go1.") {
		t.Errorf("dust version: %d %q", code, out)
	}
}

// argvC shows how a libdust program was called.
const argvC = `#include <stdio.h>
int main(int argc, char **argv) {
	printf("Content-Type: text/plain\r\n\r\n");
	for (int i = 0; i < argc; i++)
		printf("argv[%d]=%s\n", i, argv[i]);
	return 0;
}
`

// probeGo shows how a wasm program was called and what it sees at /app;
// MODE makes it end otherwise (for -v's memory on every outcome).
const probeGo = `package main

import (
	"fmt"
	"io/fs"
	"os"
)

var keep [][]byte

func main() {
	switch os.Getenv("MODE") {
	case "panic":
		panic("asked to")
	case "loop":
		for {
		}
	case "grow":
		for {
			keep = append(keep, make([]byte, 1<<20))
		}
	}
	fmt.Print("Content-Type: text/plain\r\n\r\n")
	for i, a := range os.Args {
		fmt.Printf("argv[%d]=%q\n", i, a)
	}
	err := fs.WalkDir(os.DirFS("/app"), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			b, err := os.ReadFile("/app/" + p)
			fmt.Printf("file %s=%q %v\n", p, b, err)
		}
		return nil
	})
	fmt.Printf("walk: %v\n", err)
	if err := os.WriteFile("/app/new.txt", []byte("x"), 0o644); err != nil {
		fmt.Println("write refused")
	}
}
`

// httpResponse splits what `dust run` printed into status and body.
func httpResponse(t *testing.T, out string) (int, string) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
	if err != nil {
		t.Fatalf("dust run printed no HTTP response: %v\n%q", err, out)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// `dust run` gives a machine the argv and the files a deployed app's
// machine gets: the same image with the same --arg, --no-args,
// --query-args and --files answers the same through `dust run` as through
// `dust deploy` and the gateway, on both kinds, with query items that are
// options, encoded, empty or a NUL.
func TestCLIRunAsDeployed(t *testing.T) {
	s := newCLIServer(t)
	t.Setenv("DUST_WASM_CACHE", t.TempDir()) // the dust run children's
	files := t.TempDir()
	os.MkdirAll(filepath.Join(files, "sub"), 0o755)
	os.WriteFile(filepath.Join(files, "hello.txt"), []byte("hi from /app\n"), 0o644)
	os.WriteFile(filepath.Join(files, "sub", "x.txt"), []byte("x"), 0o644)
	images := map[string]string{"c": guestELF(t, "argv", argvC), "go": goWasmSource(t, "probe", probeGo)}
	variants := [][]string{
		nil,
		{"--no-args"},
		{"--arg", "-e", "--arg", "two words", "--arg", ""},
		{"--arg", "/app/script", "--query-args"},
		{"--query-args=true"},
	}
	for kind, img := range images {
		for i, v := range variants {
			name := fmt.Sprintf("%s%d", kind, i)
			flags := slices.Clone(v)
			if kind == "go" {
				flags = append(flags, "--files", files)
			}
			s.must(append([]string{"deploy", name, img}, flags...)...)
			for _, rest := range []string{"", "/sub?-e&os.exit(3)&a%20b&&x=%00y"} {
				path := "/" + name + rest
				wantCode, want := s.get(path)
				code, out, errOut := s.dust(append([]string{"run", img, "--path", path}, flags...)...)
				if code != 0 {
					t.Fatalf("dust run %s %v: exit %d: %s", path, flags, code, errOut)
				}
				gotCode, got := httpResponse(t, out)
				if gotCode != wantCode || got != want {
					t.Errorf("%s %v:\ndust run:  %d %q\ndeployed:  %d %q", path, flags, gotCode, got, wantCode, want)
				}
			}
		}
	}
	// What the variants showed: the query is argv only when asked.
	code, out, _ := s.dust("run", images["go"], "--files", files, "--path", "/p?-e&x")
	if _, body := httpResponse(t, out); code != 0 || !strings.Contains(body, `argv[0]="/p"`+"\n"+`file hello.txt="hi from /app\n" <nil>`) ||
		strings.Contains(body, "argv[1]") || !strings.Contains(body, `file sub/x.txt="x" <nil>`) || !strings.Contains(body, "write refused") {
		t.Errorf("dust run with --files and no args: %d %q", code, body)
	}

	// A Linux program on hvt reads the same /app.
	t.Run("linux", func(t *testing.T) {
		form := linuxForm(t)
		app := t.TempDir()
		os.WriteFile(filepath.Join(app, "units.txt"), []byte("furlong\t201.168\tfurlongs\n"), 0o644)
		s.must("deploy", "form", form, "--files", app)
		path := "/form?unit=furlong&values=1,2&ts=0"
		wantCode, want := s.get(path)
		code, out, errOut := s.dust("run", form, "--files", app, "--path", path)
		if gotCode, got := httpResponse(t, out); code != 0 || gotCode != wantCode || got != want || !strings.Contains(got, "metres=603.504\n") {
			t.Errorf("dust run: exit %d %s\n%d %q\ndeployed: %d %q", code, errOut, gotCode, got, wantCode, want)
		}
	})
}

// `dust run` refuses a files directory, and fixed arguments, exactly as
// `dust deploy` does: the same exit code and the same words.
func TestCLIRunRefusesAsDeploy(t *testing.T) {
	s := newCLIServer(t)
	hello := example(t, "hello")
	linked := t.TempDir()
	os.WriteFile(filepath.Join(linked, "ok.txt"), []byte("ok"), 0o644)
	os.Symlink("/etc/passwd", filepath.Join(linked, "passwd"))
	deep := t.TempDir()
	p := deep
	for i := 0; i <= store.MaxLayerDepth; i++ {
		p = filepath.Join(p, "d")
	}
	os.MkdirAll(p, 0o755)
	for _, flags := range [][]string{
		{"--files", linked},
		{"--files", hello},
		{"--files", filepath.Join(linked, "missing")},
		{"--files", ""},
		{"--files", deep},
		{"--arg", "x", "--no-args"},
		{"--query-args=maybe"},
		{"--no-args=perhaps"},
	} {
		rc, _, runErr := s.dust(append([]string{"run", hello}, flags...)...)
		dc, _, deployErr := s.dust(append([]string{"deploy", "refused", hello}, flags...)...)
		if rc == 0 || rc != dc || strings.ReplaceAll(runErr, "dust run", "dust deploy") != deployErr {
			t.Errorf("%v:\ndust run:    %d %q\ndust deploy: %d %q", flags, rc, runErr, dc, deployErr)
		}
	}
	if code, _, _ := s.dust("app", "refused"); code != exitNotFound {
		t.Errorf("a refused deploy made the app (dust app: exit %d)", code)
	}
}

// -v says the memory the machine touched for every outcome: a figure on
// wasm, which measures it, and that it is not measured on hvt.
func TestCLIRunVerboseMemory(t *testing.T) {
	kvmtest.Require(t)
	_, bin := buildDust(t)
	t.Setenv("DUST_WASM_CACHE", t.TempDir())
	probe := goWasmSource(t, "probe", probeGo)
	figure := regexp.MustCompile(`, memory \d+(\.\d)?(B|KiB|MiB|GiB), `)
	for _, c := range []struct {
		args    []string
		code    int
		outcome string
		memory  *regexp.Regexp
	}{
		{[]string{probe}, exitOK, "served, exit status 0", figure},
		{[]string{probe, "-e", "MODE=panic"}, exitBadOutput, "served, exit status 2", figure},
		{[]string{probe, "-e", "MODE=loop", "--timeout", "300ms"}, exitDeadline, "deadline exceeded", figure},
		{[]string{probe, "-e", "MODE=grow", "--memory", "48MiB"}, exitFault, "memory limit", regexp.MustCompile(`, memory (4[0-8](\.\d)?MiB), `)},
		{[]string{example(t, "hello")}, exitOK, "served, exit status 0", regexp.MustCompile(`, memory not measured \(hvt\), `)},
		{[]string{example(t, "crash")}, exitFault, "fault", regexp.MustCompile(`, memory not measured \(hvt\), `)},
	} {
		cmd := exec.Command(bin, append([]string{"run", "-v"}, c.args...)...)
		var errOut bytes.Buffer
		cmd.Stderr = &errOut
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		// The guest's own stderr (a panic, the runtime's last words)
		// comes first.
		var line string
		for _, l := range strings.Split(errOut.String(), "\n") {
			if strings.HasPrefix(l, "dust run: ") {
				line = l
				break
			}
		}
		if code != c.code || !strings.HasPrefix(line, "dust run: "+c.outcome+", ") || !c.memory.MatchString(line) {
			t.Errorf("dust run -v %v: exit %d, want %d; -v line %q, want %q and %v", c.args[1:], code, c.code, line, c.outcome, c.memory)
		}
	}
}

type failuresJSON struct {
	RecentFailures []struct {
		Time      time.Time
		RequestID string `json:"request_id"`
		Status    int
		Outcome   string
		Detail    string
	} `json:"recent_failures"`
}

// `dust app NAME` lists the app's own last 10 failed requests, 4xx ones
// too, newest first, from its log on disk: after a restart they are still
// there. Sizes read as sizes, an empty env as none.
func TestCLIRecentFailures(t *testing.T) {
	s := newCLIServer(t)
	s.must("deploy", "crash", example(t, "crash"), "--max-body", "1KiB")
	s.must("deploy", "hello", example(t, "hello"))
	for i := 0; i < 12; i++ {
		if code, _ := s.get("/crash", "X-Request-Id", fmt.Sprintf("crash-%02d", i)); code != 502 {
			t.Fatalf("crash answered %d", code)
		}
	}
	if code, _ := s.get("/hello"); code != 200 {
		t.Fatalf("hello answered %d", code)
	}
	req, _ := http.NewRequest("POST", "http://"+s.app+"/crash", strings.NewReader(strings.Repeat("x", 2048)))
	req.Header.Set("X-Request-Id", "too-big")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 413 {
		t.Fatalf("a body over max-body: %v %v", resp, err)
	}
	resp.Body.Close()

	check := func(when string) {
		t.Helper()
		var a failuresJSON
		if err := json.Unmarshal([]byte(s.must("app", "crash", "--json")), &a); err != nil {
			t.Fatal(err)
		}
		f := a.RecentFailures
		if len(f) != 10 {
			t.Fatalf("%s: %d recent failures, want 10: %+v", when, len(f), f)
		}
		if f[0].RequestID != "too-big" || f[0].Status != 413 || f[0].Outcome != "body too large" || f[0].Detail != "Content-Length 2048, max_body is 1KiB" {
			t.Errorf("%s: newest failure %+v", when, f[0])
		}
		for i, e := range f[1:] {
			if id := fmt.Sprintf("crash-%02d", 11-i); e.RequestID != id || e.Status != 502 || e.Outcome != "fault" || !strings.Contains(e.Detail, "(rip=0x") {
				t.Errorf("%s: failure %d: %+v, want %s", when, i+1, e, id)
			}
		}
		text := s.must("app", "crash")
		_, list, ok := strings.Cut(text, "\nrecent failures")
		lines := strings.Split(strings.TrimSpace(list), "\n")
		if !ok || len(lines) != 11 || !regexp.MustCompile(`^  \S+ \S+  413  too-big +body too large: Content-Length 2048, max_body is 1KiB$`).MatchString(lines[1]) ||
			!regexp.MustCompile(`^  \S+ \S+  502  crash-11 +fault: .*\(rip=0x[0-9a-f]+\)$`).MatchString(lines[2]) {
			t.Errorf("%s: dust app crash:\n%s", when, text)
		}
		for _, want := range []string{`\n  env +none\n`, `\n  \* +v1 .* hvt +\d+(\.\d)?KiB +[0-9a-f]{12} +/crash\n`} {
			if !regexp.MustCompile(want).MatchString(text) {
				t.Errorf("%s: dust app crash lacks %s:\n%s", when, want, text)
			}
		}
		if text := s.must("app", "hello"); strings.Contains(text, "recent failures") {
			t.Errorf("%s: another app's failures shown for hello:\n%s", when, text)
		}
	}
	check("live")
	s.restart()
	check("after a restart")
}

// runBin runs the built binary with no server.
func runBin(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errOut.String()
	} else if err != nil {
		t.Fatalf("dust %v: %v", args, err)
	}
	return 0, out.String(), errOut.String()
}

// Every `dust run` error path docs/cli.md lists, through the built binary:
// the exit code, the message, and that the message is listed.
func TestCLIRunErrorPaths(t *testing.T) {
	kvmtest.Require(t)
	_, bin := buildDust(t)
	t.Setenv("DUST_WASM_CACHE", t.TempDir())
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	hello, wasm := example(t, "hello"), goWasmSource(t, "probe", probeGo)
	dir := t.TempDir()
	empty, text := filepath.Join(dir, "empty.elf"), filepath.Join(dir, "notes.txt")
	os.WriteFile(empty, nil, 0o644)
	os.WriteFile(text, []byte("just some text\n"), 0o644)
	linked := t.TempDir()
	os.Symlink("/etc/passwd", filepath.Join(linked, "passwd"))
	var big []string
	for i := 0; i < 10; i++ {
		big = append(big, "-H", fmt.Sprintf("X-Big-%d: %s", i, strings.Repeat("a", 100_000)))
	}
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"run"}, exitUsage, "want IMAGE, got 0 argument(s)"},
		{[]string{"run", hello, "--bogus"}, exitUsage, "unknown flag -bogus"},
		{[]string{"run", hello, "--memory", "lots"}, exitUsage, `--memory "lots": want a size such as 16MiB, 512KiB or 1GiB`},
		{[]string{"run", hello, "--memory", "3MiB"}, exitUsage, "--memory 3MiB: want a multiple of 2MiB from 2MiB to 4096MiB for an hvt image"},
		{[]string{"run", hello, "--memory", "8GiB"}, exitUsage, "want a multiple of 2MiB from 2MiB to 4096MiB for an hvt image"},
		{[]string{"run", wasm, "--memory", "1KiB"}, exitUsage, "--memory 1KiB: memory limit 1024 is below one wasm page (64 KiB)"},
		{[]string{"run", hello, "--timeout", "soon"}, exitUsage, `--timeout "soon": want a duration such as 2s or 500ms`},
		{[]string{"run", hello, "--path", "p"}, exitUsage, `--path "p": want a path starting with /`},
		{[]string{"run", hello, "-H", "nocolon"}, exitUsage, `--header "nocolon": want "Name: value"`},
		{[]string{"run", hello, "--env", "NOEQUALS"}, exitUsage, `--env "NOEQUALS": want KEY=VALUE`},
		{[]string{"run", hello, "--requests", "0"}, exitUsage, "--requests 0: want at least 1"},
		{[]string{"run", hello, "--isolation", "sometimes"}, exitUsage, `--isolation "sometimes": want restore or fresh`},
		{[]string{"run", hello, "--arg", "x", "--no-args"}, exitUsage, "--arg and --no-args"},
		{[]string{"run", hello, "--query-args=maybe"}, exitUsage, `--query-args "maybe": want true or false`},
		{[]string{"run", hello, "--files", linked}, exitUsage, "is a symbolic link"},
		{[]string{"run", hello, "--files", hello}, exitUsage, "is not a directory"},
		{[]string{"run", hello, "--files", filepath.Join(dir, "missing")}, exitError, "no such file or directory"},
		{[]string{"run", filepath.Join(dir, "missing.elf")}, exitError, "no such file or directory"},
		{[]string{"run", hello, "--data", "@" + filepath.Join(dir, "missing")}, exitError, "no such file or directory"},
		{[]string{"run", empty}, exitBadImage, "is empty (0 bytes)"},
		{[]string{"run", text}, exitBadImage, "neither an ELF (hvt) nor a WebAssembly image"},
		{[]string{"run", example(t, "loop"), "--timeout", "100ms"}, exitDeadline, "deadline exceeded"},
		{[]string{"run", example(t, "crash")}, exitFault, "fault: triple fault"},
		{[]string{"run", example(t, "flood"), "--max-output", "64KiB"}, exitFault, "output limit"},
		{[]string{"run", guestELF(t, "nohdr", "#include <stdio.h>\nint main(void){puts(\"just text\");return 0;}\n")}, exitBadOutput, "malformed header"},
		{append([]string{"run", hello}, big...), exitTooLarge, "request does not fit the machine's request area"},
	}
	for _, c := range cases {
		code, _, errOut := runBin(t, bin, c.args...)
		shown := strings.Join(c.args, " ")[:min(120, len(strings.Join(c.args, " ")))]
		if code != c.code || !strings.Contains(errOut, c.msg) {
			t.Errorf("dust %s: exit %d, want %d; stderr %q, want %q in it", shown, code, c.code, errOut, c.msg)
		}
		// One line; a wrong count of arguments adds the synopsis.
		if lines := strings.Split(strings.TrimSpace(errOut), "\n"); len(lines) > 2 || len(lines) == 2 && !strings.HasPrefix(lines[1], "usage: dust run ") {
			t.Errorf("dust %s: more than one line on stderr: %q", shown, errOut)
		}
		if !bytes.Contains(doc, []byte(c.msg)) {
			t.Errorf("docs/cli.md does not list %q (dust %s)", c.msg, shown)
		}
	}
	// The help the docs promise: a synopsis, flags, an example.
	for _, sub := range []string{"run", "bench"} {
		code, out, _ := runBin(t, bin, sub, "-h")
		if code != 0 || !strings.HasPrefix(out, "usage: dust "+sub+" ") || !strings.Contains(out, "\nflags:\n") || !strings.Contains(out, "\nexample:\n  dust "+sub+" ") {
			t.Errorf("dust %s -h: exit %d:\n%s", sub, code, out)
		}
	}
	if _, out, _ := runBin(t, bin, "bench", "-h"); !strings.Contains(out, "--quick writes nothing unless\n--out is given") {
		t.Errorf("dust bench -h does not say where --quick writes:\n%s", out)
	}
	// A size's default is said once.
	if _, out, errOut := runBin(t, bin, "serve", "-h"); strings.Count(out+errOut, "4MiB") != 1 || strings.Contains(out+errOut, "4194304") {
		t.Errorf("dust serve -h, --log-max-size:\n%s%s", out, errOut)
	}
}

// --out: docs/bench for a full run, none for --quick, unless given.
func TestBenchOut(t *testing.T) {
	for _, c := range []struct {
		quick bool
		out   *strValue
		want  string
	}{
		{false, &strValue{}, "docs/bench"},
		{true, &strValue{}, ""},
		{true, &strValue{v: "/tmp/b", given: true}, "/tmp/b"},
		{false, &strValue{v: "", given: true}, ""},
	} {
		if got := benchOut(c.quick, c.out); got != c.want {
			t.Errorf("quick %v, --out %+v: %q, want %q", c.quick, *c.out, got, c.want)
		}
	}
}

// Every exit code and every error message docs/cli.md documents is one a
// test checks: each code is one of cmd/dust/exitcodes.go's, and each
// message in an error table appears in a test of this package, where it
// is run and matched (this file, files_test.go, dev_test.go...).
func TestCLIDocumentedErrorsTested(t *testing.T) {
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]bool{}
	for _, c := range []int{exitOK, exitError, exitUsage, exitBadImage, exitDeadline, exitFault, exitBadOutput, exitUnavailable, exitTooLarge, exitNotFound} {
		codes[fmt.Sprint(c)] = true
	}
	tests, _ := filepath.Glob("*_test.go")
	var src []byte
	for _, f := range tests {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src = append(src, b...)
	}
	row := regexp.MustCompile("^\\| (.+) \\| (\\d+) \\| (.+) \\|$")
	var section string
	tableCodes, messages := map[string]bool{}, 0
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "## ") {
			section = line
		}
		if section == "## Exit codes" {
			if m := regexp.MustCompile(`^\| (\d+) \|`).FindStringSubmatch(line); m != nil {
				if !codes[m[1]] {
					t.Errorf("docs/cli.md documents exit code %s, which exitcodes.go does not have", m[1])
				}
				tableCodes[m[1]] = true
			}
		}
		m := row.FindStringSubmatch(line)
		if section != "## Error messages" || m == nil {
			continue
		}
		if !codes[m[2]] {
			t.Errorf("docs/cli.md: %q exits %s, not a documented code", m[1], m[2])
		}
		msg := strings.TrimSpace(m[3])
		if strings.HasPrefix(msg, "``") {
			msg = strings.TrimSpace(strings.Trim(msg, "`"))
		} else {
			msg = strings.Trim(msg, "`")
		}
		messages++
		// A manifest's line number is the example's; tests compute theirs.
		msg = regexp.MustCompile(`^dust\.toml:\d+: `).ReplaceAllString(msg, "")
		quoted := strconv.Quote(msg)
		if !bytes.Contains(src, []byte(msg)) && !bytes.Contains(src, []byte(quoted[1:len(quoted)-1])) {
			t.Errorf("docs/cli.md lists %q (%s, exit %s), which no test of cmd/dust checks", msg, m[1], m[2])
		}
	}
	if len(tableCodes) != len(codes) {
		t.Errorf("the exit code table lists %d codes, exitcodes.go has %d", len(tableCodes), len(codes))
	}
	if messages < 50 {
		t.Errorf("found only %d documented messages: has the table's form changed?", messages)
	}
}
