package hvt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/linux"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// Static Go programs (testdata/go/*) as hvt guests: green threads, futex,
// epoll for the runtime's timers, Go's address-space reservations.

// goLimits: the least memory a Go program is allowed (linuxGoMinMemory).
var goLimits = machine.Limits{Memory: linuxGoMinMemory}

// goELF builds testdata/go/name with the go command running the tests.
func goELF(t testing.TB, name string) ([]byte, string) {
	t.Helper()
	goCmd := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goCmd); err != nil {
		t.Skipf("no go command at %s", goCmd)
	}
	return buildLinux(t, toolchain{}, "go/"+name, "go-"+name, func(out string) *exec.Cmd {
		cmd := exec.Command(goCmd, "build", "-o", out, "./testdata/go/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		return cmd
	})
}

func prepareGo(t testing.TB, name string, l machine.Limits) *Image {
	t.Helper()
	kvmtest.Require(t)
	elf, _ := goELF(t, name)
	im, err := Prepare(elf, l)
	if err != nil {
		t.Fatalf("prepare %s: %v", name, err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// countingProc counts a process's system calls by name and the switches
// between threads, for the tests' reports of where a request's time goes.
type countingProc struct {
	syscaller
	byName   map[string]int
	switches *int
}

func (c countingProc) Call(nr uint64, a [6]uint64) linux.Result {
	r := c.syscaller.Call(nr, a)
	c.byName[linux.SysName(nr)]++
	if r.Next != 0 {
		*c.switches++
	}
	return r
}

// countCalls makes every process of the test a countingProc; the
// returned function reports the last one's counts.
func countCalls(t testing.TB) func() (map[string]int, int) {
	old := newProcess
	var last countingProc
	newProcess = func(cfg linux.Config, im *Image) syscaller {
		last = countingProc{old(cfg, im), map[string]int{}, new(int)}
		return last
	}
	oldClone := wrapClone
	wrapClone = func(p *linux.Process) syscaller {
		last = countingProc{p, map[string]int{}, new(int)}
		return last
	}
	t.Cleanup(func() { newProcess, wrapClone = old, oldClone })
	return func() (map[string]int, int) { return last.byName, *last.switches }
}

// topCalls formats the most frequent calls of a count.
func topCalls(m map[string]int) string {
	type kv struct {
		k string
		v int
	}
	var l []kv
	for k, v := range m {
		l = append(l, kv{k, v})
	}
	slices.SortFunc(l, func(a, b kv) int { return b.v - a.v })
	var s []string
	for _, e := range l[:min(len(l), 12)] {
		s = append(s, fmt.Sprintf("%s %d", e.k, e.v))
	}
	return strings.Join(s, ", ")
}

// The Go CGI hello on fresh machines and on one machine restored between
// requests (no snapshot: the runtime starts from its entry point each time).
func TestLinuxGoHello(t *testing.T) {
	im := prepareGo(t, "hello", goLimits)
	counts := countCalls(t)
	check := func(what string, m *Machine, res machine.Result, out, log string) {
		t.Helper()
		if err := res.Err(); err != nil || res.ExitStatus != 0 {
			t.Fatalf("%s: %v status %d, log %q", what, err, res.ExitStatus, log)
		}
		if out != "Content-Type: text/plain\r\n\r\nHello from Go!\n" {
			t.Fatalf("%s: answered %q (log %q)", what, out, log)
		}
		calls, unknown := m.LinuxCalls()
		if res.Exits > calls+1 {
			t.Errorf("%s: %d exits for %d system calls", what, res.Exits, calls)
		}
		byName, switches := counts()
		t.Logf("%s: %v, %d exits, %d system calls (%d thread switches), unanswered %v; %s", what, res.RunTime, res.Exits, calls, switches, unknown, topCalls(byName))
	}
	freshThenRestored(t, im, 1, 3, check)
}

// 100 goroutines sleeping, talking over channels and making garbage for
// several collections: the runtime's threads (sysmon, GC workers, timers
// through epoll) on green threads.
func TestLinuxGoRuntime(t *testing.T) {
	im := prepareGo(t, "work", goLimits)
	counts := countCalls(t)
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i := range 2 {
		res, out, log := runLinux(m, &machine.Request{Env: helloEnv})
		if err := res.Err(); err != nil || res.ExitStatus != 0 {
			t.Fatalf("run %d: %v status %d, log %q", i, err, res.ExitStatus, log)
		}
		var sum, gcs, gor int
		if _, err := fmt.Sscanf(out, "Content-Type: text/plain\r\n\r\nsum=%d gcs=%d goroutines=%d\n", &sum, &gcs, &gor); err != nil {
			t.Fatalf("run %d answered %q: %v", i, out, err)
		}
		// 1000 items of 64 KiB, byte i of item n being n+i: the sum is
		// the same however the items were spread over the goroutines.
		if sum != 8355840000 || gcs < 5 || gor != 1 {
			t.Fatalf("run %d: sum %d (want 8355840000), %d collections (want ≥ 5), %d goroutines left", i, sum, gcs, gor)
		}
		byName, switches := counts()
		calls, _ := m.LinuxCalls()
		t.Logf("run %d: %v, %d exits, %d calls, %d thread switches; %s", i, res.RunTime, res.Exits, calls, switches, topCalls(byName))
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
}

// A Go panic is the runtime's own exit(2) with its trace on stderr; a nil
// dereference is a CPU exception the runtime would have turned into a
// panic through a SIGSEGV handler, which is not run here: a fault. Either
// way a typed outcome, not a hang.
func TestLinuxGoPanic(t *testing.T) {
	im := prepareGo(t, "panic", goLimits)
	run := func(q string) (machine.Result, string, string) {
		m, err := im.newMachine()
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		return runLinux(m, &machine.Request{Env: append([]string{"QUERY_STRING=" + q}, helloEnv...)})
	}
	if res, out, log := run(""); res.Err() != nil || res.ExitStatus != 0 || !strings.HasSuffix(out, "no panic\n") {
		t.Fatalf("no panic: %v status %d %q log %q", res.Err(), res.ExitStatus, out, log)
	}
	res, out, log := run("panic")
	if res.ExitStatus != 2 || out != "" || !strings.Contains(log, "panic: asked to panic") {
		t.Fatalf("panic: %v status %d out %q log %q", res.Outcome, res.ExitStatus, out, log)
	}
	res, _, _ = run("nil")
	if res.Outcome != machine.Fault {
		t.Fatalf("nil dereference: %v (%s), want a fault", res.Outcome, res.Detail)
	}
}

// An unmodified net/http/cgi handler: query, headers, a POST body, status
// codes; and the system calls of one request by name.
func TestLinuxGoCGI(t *testing.T) {
	im := prepareGo(t, "cgi", goLimits)
	counts := countCalls(t)
	env := func(method, path, query string, extra ...string) []string {
		return append([]string{"GATEWAY_INTERFACE=CGI/1.1", "REQUEST_METHOD=" + method, "SCRIPT_NAME=",
			"PATH_INFO=" + path, "QUERY_STRING=" + query, "SERVER_PROTOCOL=HTTP/1.1", "SERVER_NAME=localhost",
			"SERVER_PORT=8080", "REMOTE_ADDR=127.0.0.1", "HTTP_HOST=localhost:8080", "HTTP_USER_AGENT=dust-test"}, extra...)
	}
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i, c := range []struct {
		req  *machine.Request
		want []string
	}{
		{&machine.Request{Env: env("GET", "/hi", "name=gopher")},
			[]string{"Status: 200 OK\r\n", "X-Method: GET\r\n", "\r\n\r\nname=gopher agent=dust-test body= len=0 upper=\n"}},
		{&machine.Request{Env: env("POST", "/hi", "name=poster", "CONTENT_LENGTH=11", "CONTENT_TYPE=text/plain"), Body: strings.NewReader("hello world"), BodyLen: 11},
			[]string{"Status: 200 OK\r\n", "X-Method: POST\r\n", "\r\n\r\nname=poster agent=dust-test body=hello world len=11 upper=HELLO WORLD\n"}},
		{&machine.Request{Env: env("GET", "/missing", "")}, []string{"Status: 404 Not Found\r\n", "nothing here\n"}},
		{&machine.Request{Env: env("GET", "/teapot", "")}, []string{"Status: 418 I'm a teapot\r\n"}},
	} {
		res, out, log := runLinux(m, c.req)
		if err := res.Err(); err != nil || res.ExitStatus != 0 {
			t.Fatalf("request %d: %v status %d log %q", i, err, res.ExitStatus, log)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Fatalf("request %d answered %q, want %q in it", i, out, w)
			}
		}
		calls, unknown := m.LinuxCalls()
		byName, switches := counts()
		t.Logf("request %d: %v, %d exits (≈ %v at 40 µs each), %d system calls, %d thread switches, unanswered %v; %s",
			i, res.RunTime, res.Exits, time.Duration(res.Exits)*40*time.Microsecond, calls, switches, unknown, topCalls(byName))
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
}

// Too little memory for the Go runtime's reservations is refused when the
// image is prepared, saying how much it needs.
func TestLinuxGoMemoryRefused(t *testing.T) {
	kvmtest.Require(t)
	elf, _ := goELF(t, "hello")
	_, err := Prepare(elf, machine.Limits{Memory: 256 << 20})
	if !errors.Is(err, machine.ErrBadLimits) || !strings.Contains(err.Error(), "Go program needs at least 1536 MiB") {
		t.Fatalf("got %v, want ErrBadLimits naming 1536 MiB", err)
	}
}

// A futex wait nothing will ever wake, while the runtime's other threads
// sleep with timeouts: the request's deadline ends it.
func TestLinuxGoFutexNeverWakes(t *testing.T) {
	l := goLimits
	l.Timeout = 500 * time.Millisecond
	im := prepareGo(t, "stuck", l)
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	t0 := time.Now()
	res, _, log := runLinux(m, &machine.Request{Env: helloEnv})
	if res.Outcome != machine.DeadlineExceeded {
		t.Fatalf("outcome %v (%s), log %q", res.Outcome, res.Detail, log)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("took %v for a 500 ms deadline", d)
	}
	if err := m.Reset(); err != nil {
		t.Fatal(err)
	}
	// The machine is clean for the next request.
	im2 := prepareGo(t, "hello", goLimits)
	m2, err := im2.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if res, out, _ := runLinux(m2, &machine.Request{Env: helloEnv}); res.Err() != nil || !strings.HasSuffix(out, "Hello from Go!\n") {
		t.Fatalf("after: %v %q", res.Err(), out)
	}
}

// C threads: pthread_create (glibc: clone3, musl: clone) until the cap,
// joins through CLONE_CHILD_CLEARTID, and a deadlock of every thread.
func TestLinuxThreads(t *testing.T) {
	for _, tc := range []toolchain{linuxToolchains[0], linuxToolchains[2]} {
		t.Run(tc.name, func(t *testing.T) {
			im := prepareLinux(t, tc, "threads", machine.Limits{Memory: 64 << 20})
			m, err := im.newMachine()
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			runLinux(m, &machine.Request{Env: helloEnv})
			m.Reset()
			fds0, threads0 := machinetest.HostUsage(t)
			for i := range 3 {
				res, out, log := runLinux(m, &machine.Request{Env: helloEnv})
				if err := res.Err(); err != nil || res.ExitStatus != 0 {
					t.Fatalf("run %d: %v status %d log %q", i, err, res.ExitStatus, log)
				}
				// 63 threads besides main, then EAGAIN (11); 63 joined
				// with their results summed; 8 ping-pong rounds.
				want := "Content-Type: text/plain\r\n\r\ncreated=63 err=11 joined=63 sum=1953 pingpong=8\n"
				if out != want {
					t.Fatalf("run %d answered %q, want %q (log %q)", i, out, want, log)
				}
				if i == 0 {
					calls, _ := m.LinuxCalls()
					t.Logf("%d exits, %d calls", res.Exits, calls)
				}
				if err := m.Reset(); err != nil {
					t.Fatal(err)
				}
			}
			if fds, threads := machinetest.HostUsage(t); fds > fds0 || threads > threads0+2 {
				t.Errorf("host grew: fds %d→%d threads %d→%d", fds0, fds, threads0, threads)
			}
		})
	}
}

// Every thread waiting with nothing to wake it ends the run at once with
// a clear error, not at the deadline.
func TestLinuxThreadsDeadlock(t *testing.T) {
	im := prepareLinux(t, linuxToolchains[0], "deadlock", machine.Limits{Memory: 16 << 20, Timeout: 30 * time.Second})
	t0 := time.Now()
	res, _, log := runOnce(t, im, nil)
	if res.Outcome != machine.BadOutput || !strings.Contains(res.Detail, "every thread waits") {
		t.Fatalf("outcome %v (%s), log %q", res.Outcome, res.Detail, log)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// BenchmarkLinuxGo: the Go hello and an unmodified net/http/cgi hello per
// request on a restored machine without a snapshot (the runtime starts
// from its entry point every request): p50, exits and system calls per
// request.
func BenchmarkLinuxGo(b *testing.B) {
	for _, name := range []string{"hello", "cgi", "readyhello"} {
		b.Run("hvt-restore-"+name, func(b *testing.B) {
			elf, _ := goELF(b, name)
			im, err := Prepare(elf, goLimits)
			if err != nil {
				b.Fatal(err)
			}
			defer im.Close()
			m, err := im.newMachine()
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			lat := make(latencies, 0, b.N)
			exits, calls := 0, 0
			var out strings.Builder
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				out.Reset()
				t0 := time.Now()
				res := m.Run(context.Background(), &machine.Request{Env: helloEnv}, &out, discard{})
				lat = append(lat, time.Since(t0))
				if res.Outcome != machine.Served || res.ExitStatus != 0 || !strings.Contains(out.String(), "\r\n\r\n") {
					b.Fatalf("%v status %d %q", res.Err(), res.ExitStatus, out.String())
				}
				exits += res.Exits
				n, _ := m.LinuxCalls()
				calls += n
				if err := m.Reset(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/req")
			b.ReportMetric(float64(exits)/float64(b.N), "exits/req")
			b.ReportMetric(float64(calls)/float64(b.N), "syscalls/req")
			lat.Report(b)
		})
	}
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }
