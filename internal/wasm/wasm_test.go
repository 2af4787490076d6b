package wasm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// The example table shared with hvt: the same programs, the same answers.
func TestHello(t *testing.T) {
	for _, name := range []string{"hello", "go-hello"} {
		t.Run(name, func(t *testing.T) {
			im := prepare(t, name, machine.Limits{})
			res, out, _ := runOnce(t, im, nil)
			if res.Outcome != machine.Served || res.ExitStatus != 0 {
				t.Fatalf("outcome %v status %d: %v", res.Outcome, res.ExitStatus, res.Err())
			}
			h, body := splitCGI(t, out)
			if !strings.Contains(h, "Content-Type: text/plain") || body != "Hello, world!\n" {
				t.Fatalf("got %q", out)
			}
		})
	}
}

func TestEcho(t *testing.T) {
	for _, name := range []string{"echo", "go-echo"} {
		t.Run(name, func(t *testing.T) {
			im := prepare(t, name, machine.Limits{})
			body := "name=dust&kind=wasm"
			req := &machine.Request{
				Args:    []string{"/echo/x", "a=1"},
				Env:     []string{"REQUEST_METHOD=POST", "PATH_INFO=/x", "QUERY_STRING=a=1", "CONTENT_LENGTH=19", "HTTP_X_FOO=bar", "HTTP_ACCEPT=*/*"},
				Body:    strings.NewReader(body + "and what lies beyond CONTENT_LENGTH"),
				BodyLen: int64(len(body)),
			}
			res, out, _ := runOnce(t, im, req)
			if err := res.Err(); err != nil {
				t.Fatal(err)
			}
			_, got := splitCGI(t, out)
			want := "method=POST\npath=/x\nquery=a=1\ncontent_length=19\nheader HTTP_X_FOO=bar\nheader HTTP_ACCEPT=*/*\nbody:\n" + body
			if got != want {
				t.Fatalf("echo body:\n%q\nwant\n%q", got, want)
			}
		})
	}
}

func TestSHA256OfLargeBody(t *testing.T) {
	im := prepare(t, "sha256", machine.Limits{})
	body := make([]byte, 3<<20+12345)
	rand.Read(body)
	sum := sha256.Sum256(body)
	res, out, _ := runOnce(t, im, &machine.Request{
		Env:  []string{fmt.Sprintf("CONTENT_LENGTH=%d", len(body))},
		Body: bytes.NewReader(body), BodyLen: int64(len(body)),
	})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	_, got := splitCGI(t, out)
	if got != hex.EncodeToString(sum[:])+"\n" {
		t.Fatalf("sha256 = %q, want %x", got, sum)
	}
}

// chunkRecorder counts the writes it receives, to show the response was
// streamed rather than handed over whole at the end.
type chunkRecorder struct {
	bytes.Buffer
	writes int
}

func (c *chunkRecorder) Write(p []byte) (int, error) { c.writes++; return c.Buffer.Write(p) }

// An 8 MiB body streams through echo both ways; the guest has 8 MiB of
// memory in all, so it cannot have buffered it.
func TestEchoStreams8MiB(t *testing.T) {
	im := prepare(t, "echo", machine.Limits{Memory: 8 << 20})
	body := make([]byte, 8<<20)
	rand.Read(body)
	var out chunkRecorder
	m, err := im.NewMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	res := m.Run(context.Background(), &machine.Request{
		Env:  []string{"REQUEST_METHOD=PUT", fmt.Sprintf("CONTENT_LENGTH=%d", len(body))},
		Body: bytes.NewReader(body), BodyLen: int64(len(body)),
	}, &out, io.Discard)
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	_, got := splitCGI(t, out.String())
	want := "method=PUT\npath=\nquery=\ncontent_length=8388608\nbody:\n" + string(body)
	if got != want {
		t.Fatalf("streamed body differs: got %d bytes, want %d", len(got), len(want))
	}
	if out.writes < 8 || res.MemoryBytes >= 8<<20 {
		t.Errorf("%d writes, %d bytes of guest memory: not streamed", out.writes, res.MemoryBytes)
	}
	t.Logf("8 MiB echo: %d writes, %d KiB guest memory, %v", out.writes, res.MemoryBytes>>10, res.RunTime)
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

func TestCancel(t *testing.T) {
	im := prepare(t, "loop", machine.Limits{Timeout: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	m, err := im.NewMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	done := make(chan machine.Result)
	go func() { done <- m.Run(ctx, &machine.Request{}, io.Discard, io.Discard) }()
	cancel()
	if res := <-done; res.Outcome != machine.Canceled || !errors.Is(res.Err(), machine.ErrCanceled) {
		t.Fatalf("outcome %v: %v", res.Outcome, res.Err())
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestBadOutput(t *testing.T) {
	im := prepare(t, "flood", machine.Limits{})
	m, err := im.NewMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	gone := errors.New("client went away")
	res := m.Run(context.Background(), &machine.Request{}, failWriter{gone}, io.Discard)
	if res.Outcome != machine.BadOutput || !errors.Is(res.Err(), gone) || !errors.Is(res.Err(), machine.ErrBadOutput) {
		t.Fatalf("outcome %v: %v", res.Outcome, res.Err())
	}
}

type failReader struct{ err error }

func (f failReader) Read([]byte) (int, error) { return 0, f.err }

func TestBodyReadError(t *testing.T) {
	im := prepare(t, "sha256", machine.Limits{})
	broken := errors.New("connection reset")
	res, _, _ := runOnce(t, im, &machine.Request{Body: failReader{broken}, BodyLen: 100})
	if res.Outcome != machine.Canceled || !errors.Is(res.Err(), broken) {
		t.Fatalf("outcome %v: %v", res.Outcome, res.Err())
	}
}

// State from one request is not visible in the next: every request gets a
// new instance, so the global and the heap counter both read 1.
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

func TestMachineServesOnce(t *testing.T) {
	im := prepare(t, "hello", machine.Limits{})
	m, err := im.NewMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if res := m.Run(context.Background(), &machine.Request{}, io.Discard, io.Discard); res.Outcome != machine.Served {
		t.Fatal(res.Err())
	}
	if res := m.Run(context.Background(), &machine.Request{}, io.Discard, io.Discard); res.Outcome != machine.InternalError {
		t.Fatalf("second run: %v", res.Outcome)
	}
}

// Closing the image leaves machines already made able to serve.
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
