package wasm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// The example table shared with hvt: the same programs, the same answers.
func TestContract(t *testing.T) {
	machinetest.Contract(t, func(t testing.TB, name string, l machine.Limits) machine.Image {
		return prepare(t, name, l)
	}, machinetest.Options{Hello: []string{"hello", "go-hello", "go-fast-hello"}, Echo: []string{"echo", "go-echo", "go-fast-echo"}})
}

// waitGoroutines waits until the goroutine count is back to n: wazero's
// context watcher leaves when a call returns, a moment after Run does.
func waitGoroutines(n int) int {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	return runtime.NumGoroutine()
}

func TestFaultZoo(t *testing.T) {
	hello := prepare(t, "hello", machine.Limits{})
	runOnce(t, hello, nil)
	g0 := runtime.NumGoroutine()

	query := func(q string) *machine.Request { return &machine.Request{Env: []string{"QUERY_STRING=" + q}} }
	cases := []struct {
		name, example string
		req           *machine.Request
		limits        machine.Limits
		outcome       machine.Outcome
		check         func(t *testing.T, res machine.Result, out, log string, took time.Duration)
	}{
		{"unreachable", "trap", nil, machine.Limits{}, machine.Fault, detail("unreachable (in ")},
		{"oob", "trap", query("oob"), machine.Limits{}, machine.Fault, detail("out of bounds memory access")},
		{"div0", "trap", query("div0"), machine.Limits{}, machine.Fault, detail("integer divide by zero")},
		{"loop", "loop", nil, machine.Limits{Timeout: 200 * time.Millisecond}, machine.DeadlineExceeded, func(t *testing.T, _ machine.Result, _, _ string, took time.Duration) {
			if took > 2*time.Second {
				t.Errorf("a 200 ms deadline stopped the loop after %v", took)
			}
		}},
		{"oom", "oom", nil, machine.Limits{Memory: 8 << 20}, machine.MemoryLimit, detail("memory.grow beyond 8192 KiB refused")},
		{"flood", "flood", nil, machine.Limits{MaxOutput: 1 << 20}, machine.OutputLimit, func(t *testing.T, res machine.Result, out, _ string, _ time.Duration) {
			if len(out) != 1<<20 || res.StdoutBytes != 1<<20 {
				t.Errorf("%d bytes delivered (%d counted), want exactly the 1 MiB limit", len(out), res.StdoutBytes)
			}
		}},
		{"logflood", "logflood", nil, machine.Limits{MaxLog: 64 << 10}, machine.LogLimit, func(t *testing.T, _ machine.Result, _, log string, _ time.Duration) {
			if len(log) != 64<<10 {
				t.Errorf("%d bytes of log, want the 64 KiB limit", len(log))
			}
		}},
		{"exitcode", "exitcode", nil, machine.Limits{}, machine.Served, func(t *testing.T, res machine.Result, out, _ string, _ time.Duration) {
			if res.ExitStatus != 3 || !strings.Contains(out, "Content-Type") {
				t.Errorf("status %d, out %q", res.ExitStatus, out)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			im := prepare(t, c.example, c.limits)
			start := time.Now()
			res, out, log := runOnce(t, im, c.req)
			took := time.Since(start)
			if res.Outcome != c.outcome {
				t.Fatalf("outcome %v (%v), want %v", res.Outcome, res.Err(), c.outcome)
			}
			if c.outcome != machine.Served {
				var oe *machine.OutcomeError
				if err := res.Err(); !errors.As(err, &oe) {
					t.Errorf("error %v is not an OutcomeError", err)
				}
			}
			c.check(t, res, out, log, took)
			t.Logf("%s: %v in %v", c.name, res.Err(), took)
			if res, out, _ := runOnce(t, hello, nil); res.Outcome != machine.Served || !strings.HasSuffix(out, "Hello, world!\n") {
				t.Fatalf("hello after %s: %v %q", c.name, res.Err(), out)
			}
		})
	}
	if g := waitGoroutines(g0); g > g0 {
		t.Errorf("goroutines grew from %d to %d", g0, g)
	}
}

func detail(want string) func(*testing.T, machine.Result, string, string, time.Duration) {
	return func(t *testing.T, res machine.Result, _, _ string, _ time.Duration) {
		if !strings.Contains(res.Detail, want) {
			t.Errorf("detail %q lacks %q", res.Detail, want)
		}
	}
}

// The Go runtime, too, running out of memory is MemoryLimit, not a bare
// exit status 2.
func TestGoMemoryLimit(t *testing.T) {
	im := prepareBytes(t, buildGo(t, "testdata/gooom"), machine.Limits{Memory: 16 << 20}, testOptions)
	res, _, log := runOnce(t, im, nil)
	if res.Outcome != machine.MemoryLimit || !errors.Is(res.Err(), machine.ErrMemoryLimit) {
		t.Fatalf("outcome %v: %v\n%s", res.Outcome, res.Err(), log)
	}
	if !strings.Contains(log, "out of memory") {
		t.Errorf("the Go runtime did not say why:\n%s", log)
	}
}

func TestCounterStaysOne(t *testing.T) {
	im := prepare(t, "counter", machine.Limits{})
	pool := machine.NewPool(im, machine.PoolOptions{Size: 2})
	defer pool.Close()
	for i := 0; i < 5; i++ {
		var out bytes.Buffer
		if _, err := pool.Do(context.Background(), &machine.Request{}, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		if _, body := splitCGI(t, out.String()); body != "counter=1 heap=1\n" {
			t.Fatalf("request %d: %q", i, body)
		}
	}
}

func TestImageCloseKeepsMachines(t *testing.T) {
	im, err := Prepare(exampleWasm(t, "hello"), machine.Limits{}, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	m, err := im.NewMachine()
	if err != nil {
		t.Fatal(err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := im.NewMachine(); !errors.Is(err, ErrClosed) {
		t.Errorf("NewMachine after Close: %v", err)
	}
	var out bytes.Buffer
	if res := m.Run(context.Background(), &machine.Request{}, &out, io.Discard); res.Outcome != machine.Served || !strings.HasSuffix(out.String(), "Hello, world!\n") {
		t.Fatalf("%v %q", res.Err(), out.String())
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestReadOnlyDirs(t *testing.T) {
	probe := buildGo(t, "testdata/fsprobe")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("from the host"), 0o644)
	cases := []struct {
		name string
		dirs []Mount
		want string
	}{
		{"none", nil, "read: denied\nwrite: denied\nhost: denied\n"},
		{"data", []Mount{{HostDir: dir, GuestPath: "/data"}}, "read: from the host\nwrite: denied\nhost: denied\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			im := prepareBytes(t, probe, machine.Limits{}, Options{NoDiskCache: true, Dirs: c.dirs})
			res, out, log := runOnce(t, im, nil)
			if err := res.Err(); err != nil {
				t.Fatalf("%v\n%s", err, log)
			}
			if _, body := splitCGI(t, out); body != c.want {
				t.Fatalf("got %q, want %q", body, c.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "new.txt")); !os.IsNotExist(err) {
		t.Errorf("the guest wrote into a read-only mount: %v", err)
	}
	if _, err := Prepare(probe, machine.Limits{}, Options{NoDiskCache: true, Dirs: []Mount{{HostDir: dir, GuestPath: "data"}}}); err == nil {
		t.Error("a relative guest path was accepted")
	}
}

func TestCompilationCacheDir(t *testing.T) {
	dir := t.TempDir()
	b := exampleWasm(t, "hello")
	for i := 0; i < 2; i++ {
		im := prepareBytes(t, b, machine.Limits{}, Options{CacheDir: dir})
		if res, _, _ := runOnce(t, im, nil); res.Outcome != machine.Served {
			t.Fatal(res.Err())
		}
	}
	n := 0
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, _ error) error {
		if d != nil && !d.IsDir() {
			n++
		}
		return nil
	})
	if n == 0 {
		t.Fatal("nothing was written to the compilation cache directory")
	}
}

func TestDefaultCacheDirFromEnv(t *testing.T) {
	t.Setenv(CacheEnv, "/somewhere/else")
	if d, err := DefaultCacheDir(); err != nil || d != "/somewhere/else" {
		t.Fatalf("%q %v", d, err)
	}
}
