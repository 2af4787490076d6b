package hvt

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
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

func TestHello(t *testing.T) {
	im := prepare(t, "hello", machine.Limits{})
	res, out, _ := runOnce(t, im, nil)
	if res.Outcome != machine.Served || res.ExitStatus != 0 {
		t.Fatalf("outcome %v status %d: %v", res.Outcome, res.ExitStatus, res.Err())
	}
	h, body := splitCGI(t, out)
	if !strings.Contains(h, "Content-Type: text/plain") || body != "Hello, world!\n" {
		t.Fatalf("got %q", out)
	}
	// The ABI promise: a small request and its response cost one VM exit.
	if res.Exits != 1 {
		t.Errorf("hello took %d VM exits, want 1", res.Exits)
	}
}

func TestEcho(t *testing.T) {
	im := prepare(t, "echo", machine.Limits{})
	body := "name=dust&kind=hvt"
	req := &machine.Request{
		Args:    []string{"/echo/x", "a=1"},
		Env:     envList("REQUEST_METHOD=POST", "PATH_INFO=/x", "QUERY_STRING=a=1", "CONTENT_LENGTH=18", "HTTP_X_FOO=bar", "HTTP_ACCEPT=*/*"),
		Body:    strings.NewReader(body),
		BodyLen: int64(len(body)),
	}
	res, out, _ := runOnce(t, im, req)
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	_, got := splitCGI(t, out)
	want := "method=POST\npath=/x\nquery=a=1\ncontent_length=18\nheader HTTP_X_FOO=bar\nheader HTTP_ACCEPT=*/*\nbody:\n" + body
	if got != want {
		t.Fatalf("echo body:\n%q\nwant\n%q", got, want)
	}
	if res.Exits != 1 {
		t.Errorf("small echo took %d VM exits, want 1", res.Exits)
	}
}

func TestSHA256OfLargeBody(t *testing.T) {
	im := prepare(t, "sha256", machine.Limits{})
	body := make([]byte, 3<<20+12345)
	rand.Read(body)
	sum := sha256.Sum256(body)
	res, out, _ := runOnce(t, im, &machine.Request{
		Env:  envList(fmt.Sprintf("CONTENT_LENGTH=%d", len(body))),
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

// An 8 MiB body streams through echo both ways; the guest has 8 MiB of
// memory in all, so it cannot have buffered it.
func TestEchoStreams8MiB(t *testing.T) {
	im := prepare(t, "echo", machine.Limits{Memory: 8 << 20})
	body := make([]byte, 8<<20)
	rand.Read(body)
	var out bytes.Buffer
	m, err := im.NewMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	res := m.Run(context.Background(), &machine.Request{
		Env:  envList("REQUEST_METHOD=PUT", fmt.Sprintf("CONTENT_LENGTH=%d", len(body))),
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
	t.Logf("8 MiB echo: %d VM exits, %v", res.Exits, res.RunTime)
}

// hostUsage counts this process's file descriptors and threads.
func hostUsage(t testing.TB) (fds, threads int) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			fmt.Sscan(v, &threads)
		}
	}
	return len(ents), threads
}

func TestFaultZoo(t *testing.T) {
	hello := prepare(t, "hello", machine.Limits{})
	// Warm up: the first VM of a process creates helper threads.
	runOnce(t, hello, nil)
	fds0, threads0 := hostUsage(t)

	cases := []struct {
		name     string
		limits   machine.Limits
		outcome  machine.Outcome
		sentinel error
		check    func(t *testing.T, res machine.Result, out, log string)
	}{
		{"crash", machine.Limits{}, machine.Fault, machine.ErrFault, func(t *testing.T, res machine.Result, _, _ string) {
			if !res.HasRIP || res.RIP < imageBase {
				t.Errorf("fault without a plausible RIP: %+v", res)
			}
		}},
		{"illegal", machine.Limits{}, machine.Fault, machine.ErrFault, nil},
		{"loop", machine.Limits{Timeout: 200 * time.Millisecond}, machine.DeadlineExceeded, machine.ErrDeadline, nil},
		{"oom", machine.Limits{Memory: 8 << 20}, machine.MemoryLimit, machine.ErrMemoryLimit, nil},
		{"flood", machine.Limits{MaxOutput: 1 << 20}, machine.OutputLimit, machine.ErrOutputLimit, func(t *testing.T, res machine.Result, out, _ string) {
			if int64(len(out)) > 1<<20 {
				t.Errorf("%d bytes delivered beyond the 1 MiB limit", len(out))
			}
		}},
		{"logflood", machine.Limits{MaxLog: 64 << 10}, machine.LogLimit, machine.ErrLogLimit, nil},
		{"badptr", machine.Limits{}, machine.BadHypercall, machine.ErrBadHypercall, func(t *testing.T, res machine.Result, _, _ string) {
			if !strings.Contains(res.Detail, "beyond guest memory") {
				t.Errorf("detail %q does not say what was wrong", res.Detail)
			}
		}},
		{"exitcode", machine.Limits{}, machine.Served, nil, func(t *testing.T, res machine.Result, out, _ string) {
			if res.ExitStatus != 3 || !strings.Contains(out, "Content-Type") {
				t.Errorf("status %d, out %q", res.ExitStatus, out)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			im := prepare(t, c.name, c.limits)
			start := time.Now()
			res, out, log := runOnce(t, im, nil)
			if res.Outcome != c.outcome {
				t.Fatalf("outcome %v (%v), want %v", res.Outcome, res.Err(), c.outcome)
			}
			if c.sentinel != nil && !errors.Is(res.Err(), c.sentinel) {
				t.Errorf("error %v does not wrap %v", res.Err(), c.sentinel)
			}
			if c.check != nil {
				c.check(t, res, out, log)
			}
			t.Logf("%s: %v in %v, %d exits", c.name, res.Err(), time.Since(start), res.Exits)
			// The host is fine: the next request is served.
			if res, out, _ := runOnce(t, hello, nil); res.Outcome != machine.Served || !strings.HasSuffix(out, "Hello, world!\n") {
				t.Fatalf("hello after %s: %v %q", c.name, res.Err(), out)
			}
		})
	}
	fds1, threads1 := hostUsage(t)
	if fds1 > fds0 {
		t.Errorf("file descriptors grew from %d to %d", fds0, fds1)
	}
	// The Go runtime may start a thread or two of its own; KVM's per-VM
	// kernel threads must not accumulate.
	if threads1 > threads0+2 {
		t.Errorf("threads grew from %d to %d", threads0, threads1)
	}
}

// A secret left in memory and registers by one request is invisible to
// the next, which runs on a brand-new machine from the same template.
func TestNoLeakBetweenRequests(t *testing.T) {
	im := prepare(t, "secret", machine.Limits{})
	pool := machine.NewPool(im, machine.PoolOptions{Size: 2})
	defer pool.Close()
	for i := 0; i < 3; i++ {
		var out bytes.Buffer
		res, err := pool.Do(context.Background(), &machine.Request{Env: envList(fmt.Sprintf("QUERY_STRING=request-%d", i))}, &out, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		_, body := splitCGI(t, out.String())
		if !strings.Contains(body, "memory=clean") || !strings.Contains(body, "regs=clean") {
			t.Fatalf("request %d saw the previous one: %q", i, body)
		}
	}
}

func TestMachineServesOneRequest(t *testing.T) {
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
		t.Fatalf("second Run on the same machine: %v", res.Outcome)
	}
}

func TestCancelStopsMachine(t *testing.T) {
	im := prepare(t, "loop", machine.Limits{Timeout: time.Minute})
	m, err := im.NewMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan machine.Result)
	go func() { done <- m.Run(ctx, &machine.Request{}, io.Discard, io.Discard) }()
	cancel()
	if res := <-done; res.Outcome != machine.Canceled {
		t.Fatalf("outcome %v", res.Outcome)
	}
}

func TestRequestTooLarge(t *testing.T) {
	im := prepare(t, "hello", machine.Limits{})
	res, _, _ := runOnce(t, im, &machine.Request{Env: []string{"HTTP_X=" + strings.Repeat("x", 1<<20)}})
	if res.Outcome != machine.Refused || !errors.Is(res.Err(), ErrRequestTooLarge) {
		t.Fatalf("outcome %v: %v", res.Outcome, res.Err())
	}
}

func TestBadWriterStopsMachine(t *testing.T) {
	im := prepare(t, "flood", machine.Limits{})
	m, _ := im.NewMachine()
	defer m.Close()
	boom := errors.New("client went away")
	res := m.Run(context.Background(), &machine.Request{}, failingWriter{boom}, io.Discard)
	if res.Outcome != machine.BadOutput || !errors.Is(res.Err(), boom) {
		t.Fatalf("outcome %v: %v", res.Outcome, res.Err())
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }
