package hvt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

func TestContract(t *testing.T) {
	machinetest.Contract(t, func(t testing.TB, name string, l machine.Limits) machine.Image {
		return testImage(prepare(t, name, l))
	}, machinetest.Options{Hello: []string{"hello"}, Echo: []string{"echo"}})
}

// The ABI's promise: a small request and its response cost one VM exit.
func TestSmallRequestIsOneExit(t *testing.T) {
	req, _ := machinetest.EchoRequest()
	for name, req := range map[string]*machine.Request{"hello": nil, "echo": req} {
		res, _, _ := runOnce(t, prepare(t, name, machine.Limits{}), req)
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		if res.Exits != 1 {
			t.Errorf("%s took %d VM exits, want 1", name, res.Exits)
		}
	}
}

func TestFaultZoo(t *testing.T) {
	hello := prepare(t, "hello", machine.Limits{})
	// Warm up: the first VM of a process creates helper threads.
	runOnce(t, hello, nil)
	fds0, threads0 := machinetest.HostUsage(t)

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
	fds1, threads1 := machinetest.HostUsage(t)
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
		res, err := pool.Do(context.Background(), &machine.Request{Env: []string{fmt.Sprintf("QUERY_STRING=request-%d", i)}}, &out, io.Discard)
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

func TestRequestTooLarge(t *testing.T) {
	im := prepare(t, "hello", machine.Limits{})
	res, _, _ := runOnce(t, im, &machine.Request{Env: []string{"HTTP_X=" + strings.Repeat("x", 1<<20)}})
	if res.Outcome != machine.Refused || !errors.Is(res.Err(), ErrRequestTooLarge) {
		t.Fatalf("outcome %v: %v", res.Outcome, res.Err())
	}
}
