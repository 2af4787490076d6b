package hvt

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// An unmodified Go net/http server as a server app: snapshotted when it
// first waits for a connection, one connection per request.

func prepareServer(t testing.TB, name string, l machine.Limits) *Image {
	t.Helper()
	kvmtest.Require(t)
	elf, _ := goELF(t, name)
	im, err := PrepareWith(elf, l, Options{Server: &ServerOptions{Env: []string{"GODEBUG=madvdontneed=1"}}})
	if err != nil {
		t.Fatalf("prepare %s: %v", name, err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// serve sends one raw HTTP request through m and parses the response.
func serveHTTP(t testing.TB, m *Machine, raw string) (machine.Result, *http.Response, string, string) {
	t.Helper()
	var out, log strings.Builder
	res := m.Run(context.Background(), &machine.Request{Body: strings.NewReader(raw), BodyLen: -1, Env: []string{"REMOTE_ADDR=192.0.2.7", "REMOTE_PORT=4321"}}, &out, &log)
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out.String())), nil)
	if err != nil {
		return res, nil, out.String(), log.String()
	}
	body, _ := io.ReadAll(resp.Body)
	return res, resp, string(body), log.String()
}

func TestServerApp(t *testing.T) {
	im := prepareServer(t, "server", goLimits)
	if !im.Snapshotted() || !im.Server() {
		t.Fatal("the server was not snapshotted")
	}
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	counts := countCalls(t)
	big := strings.Repeat("0123456789abcdef", 4<<20/16)
	seen := map[string]bool{}
	for i, tc := range []struct {
		raw, want string
		status    int
	}{
		{"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "served=1 seen=1 left=\"\"/true", 200},
		{"GET /again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "served=1 seen=1 left=\"\"/true", 200},
		{"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/x\r\nContent-Length: 5\r\n\r\nhello", "hello", 200},
		{"POST /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUser-Agent: t\r\nContent-Length: 7\r\n\r\n{\"a\":1}", `{"agent":"t","in":{"a":1},"method":"POST"}`, 200},
		{"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n", 200},
		{"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " + fmt.Sprint(len(big)) + "\r\n\r\n" + big, big, 200},
		{"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "served=1 seen=1 left=\"\"/true", 200},
	} {
		t0 := time.Now()
		res, resp, body, log := serveHTTP(t, m, tc.raw)
		calls, unknown := m.LinuxCalls()
		byName, switches := counts()
		t.Logf("%d: %v in %v, %d exits, %d calls (%d thread switches), unanswered %v; %s", i, res.Outcome, time.Since(t0), res.Exits, calls, switches, unknown, topCalls(byName))
		if err := res.Err(); err != nil {
			t.Fatalf("%d: %v (log %q)", i, err, log)
		}
		if resp == nil || resp.StatusCode != tc.status || !strings.Contains(body, tc.want) {
			t.Fatalf("%d: status %v, body %.300q, want %q (log %q)", i, resp, body, tc.want, log)
		}
		if strings.HasPrefix(body, "served=") {
			r := strings.Fields(body)[3]
			if seen[r] {
				t.Errorf("%d: random value %s seen in an earlier request", i, r)
			}
			seen[r] = true
		}
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
}

// A handler that panics: net/http recovers and closes the connection
// without an answer; the next request is clean. One that hangs ends at
// the deadline.
func TestServerAppFailures(t *testing.T) {
	im := prepareServer(t, "server", machine.Limits{Memory: linuxGoMinMemory, Timeout: 500 * time.Millisecond})
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	res, resp, _, log := serveHTTP(t, m, "GET /panic HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if resp != nil || res.StdoutBytes != 0 || !strings.Contains(log, "asked to") {
		t.Fatalf("panic: %v %v, %d bytes, log %q", res.Outcome, resp, res.StdoutBytes, log)
	}
	if err := m.Reset(); err != nil {
		t.Fatal(err)
	}
	res, _, _, _ = serveHTTP(t, m, "GET /hang HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if res.Outcome != machine.DeadlineExceeded {
		t.Fatalf("hang: %v", res.Outcome)
	}
	if err := m.Reset(); err != nil {
		t.Fatal(err)
	}
	res, resp, body, log := serveHTTP(t, m, "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if res.Err() != nil || resp == nil || !strings.Contains(body, "served=1") {
		t.Fatalf("after the failures: %v %v %q (log %q)", res.Err(), resp, body, log)
	}
}

// The C server example (examples/linux/cserver), built with gcc -static:
// a blocking accept loop rather than Go's epoll.
func TestServerAppC(t *testing.T) {
	kvmtest.Require(t)
	elf, _ := buildLinux(t, toolchain{"glibc", "gcc", nil}, "cserver", "cserver", func(out string) *exec.Cmd {
		return exec.Command("gcc", "-static", "-O2", "-o", out, "../../examples/linux/cserver/cserver.c")
	})
	im, err := PrepareWith(elf, machine.Limits{}, Options{Server: &ServerOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i, tc := range []struct{ raw, want string }{
		{"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "Hello from a C server!\n"},
		{"GET /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "1\n"},
		{"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 11\r\n\r\nhello world", "hello world"},
		{"GET /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "1\n"},
	} {
		res, resp, body, log := serveHTTP(t, m, tc.raw)
		calls, _ := m.LinuxCalls()
		t.Logf("%d: %v, %d exits, %d calls", i, res.Outcome, res.Exits, calls)
		if res.Err() != nil || resp == nil || body != tc.want {
			t.Fatalf("%d: %v %v %q (log %q)", i, res.Err(), resp, body, log)
		}
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	// Fresh machines (isolation fresh) start from the same snapshot.
	for i := range 2 {
		f, err := im.newMachine()
		if err != nil {
			t.Fatal(err)
		}
		res, resp, body, log := serveHTTP(t, f, "GET /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		f.Close()
		if res.Err() != nil || resp == nil || body != "1\n" {
			t.Fatalf("fresh %d: %v %v %q (log %q)", i, res.Err(), resp, body, log)
		}
	}
}

// Hostile server apps: each misbehaviour gets its typed outcome, the host
// stays at its baseline, and the next request on the same machine (where
// there is one) is unaffected.
func TestServerAppHostile(t *testing.T) {
	kvmtest.Require(t)
	elf, _ := buildLinux(t, toolchain{"glibc", "gcc", nil}, "server-hostile", "server-hostile", func(out string) *exec.Cmd {
		return exec.Command("gcc", "-static", "-O2", "-o", out, "testdata/server/hostile.c")
	})
	fds0, threads0 := -1, -1
	limits := machine.Limits{Timeout: 500 * time.Millisecond, MaxOutput: 1 << 20}
	prep := func(c string) (*Image, error) {
		return PrepareWith(elf, limits, Options{Server: &ServerOptions{Env: []string{"CASE=" + c}}})
	}
	for _, c := range []string{"never-listen", "listen-exit"} {
		im, err := prep(c)
		if err == nil {
			im.Close()
			t.Fatalf("%s: prepared", c)
		}
		if !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), "did not wait for a connection") {
			t.Errorf("%s: %v", c, err)
		}
	}
	const get = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	for _, tc := range []struct {
		c       string
		outcome machine.Outcome
		body    string // for a served response
	}{
		// Waiting for what can never come ends the run at once.
		{"no-answer", machine.BadOutput, ""},
		{"garbage", machine.Served, ""},
		{"forever", machine.OutputLimit, ""},
		{"exit-mid", machine.Served, ""},
		{"connect", machine.Served, "connect -1 errno 101\n"},
		// Holding every socket it may, it cannot take a connection.
		{"socket-bomb", machine.BadOutput, ""},
		{"epoll-bomb", machine.Served, "made 16, then errno 24\n"},
	} {
		im, err := prep(tc.c)
		if err != nil {
			t.Fatalf("%s: %v", tc.c, err)
		}
		m, err := im.newMachine()
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 { // and again on the restored machine
			res, resp, body, log := serveHTTP(t, m, get)
			t.Logf("%s %d: %v (%s), exit %d, %d bytes out, unanswered %v", tc.c, i, res.Outcome, res.Detail, res.ExitStatus, res.StdoutBytes, res.Unsupported)
			if res.Outcome != tc.outcome {
				t.Errorf("%s %d: %v (%s), want %v (log %q)", tc.c, i, res.Outcome, res.Detail, tc.outcome, log)
			}
			if tc.body != "" && (resp == nil || body != tc.body) {
				t.Errorf("%s %d: answered %v %q, want %q", tc.c, i, resp, body, tc.body)
			}
			if err := m.Reset(); err != nil {
				t.Fatal(err)
			}
		}
		m.Close()
		im.Close()
		if fds0 < 0 {
			// After the first case: what a first machine opens for good
			// (the page map, vCPU worker threads) is not growth.
			fds0, threads0 = machinetest.HostUsage(t)
		}
	}
	if fds, threads := machinetest.HostUsage(t); fds > fds0 || threads > threads0+2 {
		t.Errorf("host grew: fds %d→%d threads %d→%d", fds0, fds, threads0, threads)
	}
}

// 1,000 sequential requests on one restored machine each meet the state
// of the snapshot, which is taken once per image.
func TestServerAppThousand(t *testing.T) {
	im := prepareServer(t, "server", goLimits)
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	seen := map[string]bool{}
	for i := range 1000 {
		res, resp, body, log := serveHTTP(t, m, "GET /n HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		if res.Err() != nil || resp == nil || !strings.HasPrefix(body, `served=1 seen=1 left=""/true`) {
			t.Fatalf("request %d: %v %q (log %q)", i, res.Err(), body, log)
		}
		r := strings.Fields(body)[3]
		if seen[r] {
			t.Fatalf("request %d drew %s again", i, r)
		}
		seen[r] = true
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	if n := im.SnapshotRuns(); n != 1 {
		t.Errorf("%d snapshot runs for one image", n)
	}
}
