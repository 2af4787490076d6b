package hvt

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/machine"
)

// A dustgo program built for Linux (testdata/go/ready) is snapshotted at
// its ready point once per image, and every request, on a fresh machine
// or on one restored between requests, resumes a copy of that state with
// its own arguments, environment and body, fresh random values on every
// thread, and nothing an earlier request left behind.

var readyLine = regexp.MustCompile(`^served=(\d+) seen=(\d+) left="(.*)"/(true|false) init=(\w+) rand=(\w+) other=(\w+) crypto=(\w+) order=(\d+)\nargs=(.*) method=(\w+) query=(.*) body="(.*)" env=(.*)\n$`)

type readyAnswer struct {
	served, seen, left, noLeft, init, rand, other, crypto, order string
	args, method, query, body, env                               string
}

func parseReady(t *testing.T, what, out string) readyAnswer {
	t.Helper()
	body, ok := strings.CutPrefix(out, "Content-Type: text/plain\r\n\r\n")
	m := readyLine.FindStringSubmatch(body)
	if !ok || m == nil {
		t.Fatalf("%s: answered %q", what, out)
	}
	return readyAnswer{m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12], m[13], m[14]}
}

func TestLinuxGoSnapshot(t *testing.T) {
	im := prepareGo(t, "ready", goLimits)
	if !im.Snapshotted() {
		t.Fatal("a program linking dustgo's ready point was not snapshotted")
	}
	var answers []readyAnswer
	check := func(what string, m *Machine, res machine.Result, out, log string) {
		t.Helper()
		if err := res.Err(); err != nil || res.ExitStatus != 0 {
			t.Fatalf("%s: %v status %d, log %q", what, err, res.ExitStatus, log)
		}
		a := parseReady(t, what, out)
		calls, unknown := m.LinuxCalls()
		t.Logf("%s: %v, %d exits, %d system calls, unanswered %v", what, res.RunTime, res.Exits, calls, unknown)
		if a.served != "1" || a.seen != "1" || a.left != "" || a.noLeft != "true" {
			t.Errorf("%s: found an earlier request's state: %+v", what, a)
		}
		answers = append(answers, a)
	}
	freshThenRestored(t, im, 3, 4, check)
	for i, a := range answers {
		if a.init != answers[0].init {
			t.Errorf("request %d: a value drawn at start-up changed (%s, then %s): the start-up ran again", i, answers[0].init, a.init)
		}
		if a.method != "GET" || a.env != "" || a.args != `["/app/main"]` {
			t.Errorf("request %d: request seen as method %q, env %q, args %s", i, a.method, a.env, a.args)
		}
		for j := range i {
			b := answers[j]
			for _, f := range []struct{ name, x, y string }{{"math/rand", a.rand, b.rand}, {"math/rand on another thread", a.other, b.other}, {"crypto/rand", a.crypto, b.crypto}} {
				if f.x == f.y {
					t.Errorf("requests %d and %d drew the same %s value %s", j, i, f.name, f.x)
				}
			}
		}
	}
}

// The request's arguments, environment and body are the request's, not
// the snapshot's; a panic is the request's failure only.
func TestLinuxGoSnapshotRequest(t *testing.T) {
	im := prepareGo(t, "ready", goLimits)
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i := range 3 {
		body := strings.Repeat(fmt.Sprintf("b%d", i), 1000*i)
		req := &machine.Request{
			Args: []string{"/app/ready", fmt.Sprint("arg", i), ""},
			Env:  withEnv(helloEnv, "REQUEST_METHOD=POST", fmt.Sprintf("QUERY_STRING=q=%d", i), fmt.Sprintf("CONTENT_LENGTH=%d", len(body)), fmt.Sprintf("DUST_TEST=v%d", i)),
			Body: strings.NewReader(body), BodyLen: int64(len(body)),
		}
		res, out, log := runLinux(m, req)
		if err := res.Err(); err != nil {
			t.Fatalf("request %d: %v (log %q)", i, err, log)
		}
		a := parseReady(t, fmt.Sprint("request ", i), out)
		if a.args != fmt.Sprintf(`["/app/ready" "arg%d" ""]`, i) || a.method != "POST" || a.query != fmt.Sprintf("q=%d", i) || a.env != fmt.Sprint("v", i) {
			t.Errorf("request %d saw args %s, method %s, query %s, env %s", i, a.args, a.method, a.query, a.env)
		}
		if a.body != body {
			t.Errorf("request %d: a %d-byte body came as %d bytes", i, len(body), len(a.body))
		}
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	res, _, log := runLinux(m, &machine.Request{Env: []string{"REQUEST_METHOD=GET", "QUERY_STRING=panic"}})
	if res.Outcome != machine.Served || res.ExitStatus != 2 || !strings.Contains(log, "asked to") {
		t.Fatalf("panic: %v status %d, log %q", res.Outcome, res.ExitStatus, log)
	}
	if err := m.Reset(); err != nil {
		t.Fatal(err)
	}
	res, out, log := runLinux(m, &machine.Request{Env: helloEnv})
	if err := res.Err(); err != nil {
		t.Fatalf("after the panic: %v (log %q)", err, log)
	}
	if a := parseReady(t, "after the panic", out); a.served != "1" {
		t.Errorf("after the panic: %+v", a)
	}
}

// A program that links the ready point but never reaches it is refused at
// Prepare, saying why.
func TestLinuxGoSnapshotNeverReady(t *testing.T) {
	// Prepare sees a ready point where the marker is: an ordinary Go
	// program with it added ends without reaching one.
	plain, _ := goELF(t, "hello")
	marked := append(append([]byte(nil), plain...), goReadyPoint...)
	_, err := Prepare(marked, goLimits)
	if err == nil || !strings.Contains(err.Error(), "ended before reaching it") {
		t.Fatalf("prepare: %v", err)
	}
}

// withEnv is env with the variables in set replacing those of the same
// names.
func withEnv(env []string, set ...string) []string {
	out := append([]string(nil), set...)
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.ContainsFunc(set, func(s string) bool { return strings.HasPrefix(s, name+"=") }) {
			out = append(out, kv)
		}
	}
	return out
}

// An http.Handler through dusthttp, from its snapshot: routes, methods,
// bodies and status codes are the request's.
func TestLinuxGoSnapshotHTTP(t *testing.T) {
	im := prepareGo(t, "readyhttp", goLimits)
	if !im.Snapshotted() {
		t.Fatal("not snapshotted")
	}
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i, tc := range []struct {
		method, path, body, want string
	}{
		{"POST", "/upper", "hello", "X-Len: 5\r\n"},
		{"GET", "/teapot", "", "Status: 418"},
		{"GET", "/nothing", "", "Status: 404"},
		{"POST", "/upper", strings.Repeat("x", 100000), "X-Len: 100000\r\n"},
	} {
		req := &machine.Request{
			Env: withEnv(helloEnv, "REQUEST_METHOD="+tc.method, "SCRIPT_NAME=", "PATH_INFO="+tc.path,
				fmt.Sprintf("CONTENT_LENGTH=%d", len(tc.body)), "CONTENT_TYPE=text/plain"),
			Body: strings.NewReader(tc.body), BodyLen: int64(len(tc.body)),
		}
		res, out, log := runLinux(m, req)
		if err := res.Err(); err != nil || res.ExitStatus != 0 {
			t.Fatalf("%d: %v status %d (log %q)", i, err, res.ExitStatus, log)
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("%d %s %s: answered %.200q, want %q in it", i, tc.method, tc.path, out, tc.want)
		}
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
}

// A request whose arguments and environment exceed the snapshot's bound
// (2 MiB, as ARG_MAX bounds execve) is refused before the program runs,
// and the machine serves the next one.
func TestLinuxGoSnapshotRequestTooLarge(t *testing.T) {
	im := prepareGo(t, "readyhello", goLimits)
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	huge := "X=" + strings.Repeat("x", maxRequestBlock)
	res, _, _ := runLinux(m, &machine.Request{Env: []string{huge}})
	if res.Outcome != machine.Refused || !errors.Is(res.Cause, ErrRequestTooLarge) {
		t.Fatalf("a %d-byte environment: %v (%s)", len(huge), res.Outcome, res.Detail)
	}
	if err := m.Reset(); err != nil {
		t.Fatal(err)
	}
	if res, out, _ := runLinux(m, &machine.Request{Env: helloEnv}); res.Err() != nil || !strings.Contains(out, "Hello from Go!") {
		t.Fatalf("after the refusal: %v %q", res.Err(), out)
	}
}
