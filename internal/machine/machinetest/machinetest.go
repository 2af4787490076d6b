// Package machinetest holds what the tests and benchmarks of every machine
// kind share: the contract table (the same example programs must give the
// same answers on hvt and wasm), host resource probes and latency
// reporting. It is imported only by tests.
package machinetest

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
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// Prepare returns a prepared image of the example called name.
type Prepare func(t testing.TB, name string, l machine.Limits) machine.Image

// Options names the examples a kind provides for each contract entry.
type Options struct {
	Hello []string // programs that answer "Hello, world!\n"
	Echo  []string // programs that reflect the request like examples/echo
}

// RunOnce serves req on a brand-new machine of img.
func RunOnce(t testing.TB, ctx context.Context, img machine.Image, req *machine.Request) (machine.Result, string, string) {
	t.Helper()
	m, err := img.NewMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var out, log bytes.Buffer
	if req == nil {
		req = &machine.Request{}
	}
	res := m.Run(ctx, req, &out, &log)
	return res, out.String(), log.String()
}

// SplitCGI separates a CGI header block from the body.
func SplitCGI(t testing.TB, out string) (string, string) {
	t.Helper()
	for _, sep := range []string{"\r\n\r\n", "\n\n"} {
		if h, b, ok := strings.Cut(out, sep); ok {
			return h, b
		}
	}
	t.Fatalf("no CGI header block in %q", out[:min(len(out), 200)])
	return "", ""
}

// EchoRequest is the request of the echo contract entry, with bytes past
// CONTENT_LENGTH that a machine must not deliver.
func EchoRequest() (*machine.Request, string) {
	body := "name=dust&kind=any"
	return &machine.Request{
		Args:    []string{"/echo/x", "a=1"},
		Env:     []string{"REQUEST_METHOD=POST", "PATH_INFO=/x", "QUERY_STRING=a=1", fmt.Sprintf("CONTENT_LENGTH=%d", len(body)), "HTTP_X_FOO=bar", "HTTP_ACCEPT=*/*"},
		Body:    strings.NewReader(body + "and what lies beyond CONTENT_LENGTH"),
		BodyLen: int64(len(body)),
	}, "method=POST\npath=/x\nquery=a=1\ncontent_length=18\nheader HTTP_X_FOO=bar\nheader HTTP_ACCEPT=*/*\nbody:\n" + body
}

type chunkRecorder struct {
	bytes.Buffer
	writes int
}

func (c *chunkRecorder) Write(p []byte) (int, error) { c.writes++; return c.Buffer.Write(p) }

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

type failReader struct{ err error }

func (f failReader) Read([]byte) (int, error) { return 0, f.err }

// Contract runs the table every machine kind must pass.
func Contract(t *testing.T, prep Prepare, o Options) {
	bg := context.Background()
	for _, name := range o.Hello {
		t.Run("hello/"+name, func(t *testing.T) {
			res, out, _ := RunOnce(t, bg, prep(t, name, machine.Limits{}), nil)
			if res.Outcome != machine.Served || res.ExitStatus != 0 {
				t.Fatalf("outcome %v status %d: %v", res.Outcome, res.ExitStatus, res.Err())
			}
			h, body := SplitCGI(t, out)
			if !strings.Contains(h, "Content-Type: text/plain") || body != "Hello, world!\n" {
				t.Fatalf("got %q", out)
			}
		})
	}
	for _, name := range o.Echo {
		t.Run("echo/"+name, func(t *testing.T) {
			req, want := EchoRequest()
			res, out, _ := RunOnce(t, bg, prep(t, name, machine.Limits{}), req)
			if err := res.Err(); err != nil {
				t.Fatal(err)
			}
			if _, got := SplitCGI(t, out); got != want {
				t.Fatalf("echo body:\n%q\nwant\n%q", got, want)
			}
		})
	}
	t.Run("sha256-of-3MiB", func(t *testing.T) {
		body := make([]byte, 3<<20+12345)
		rand.Read(body)
		sum := sha256.Sum256(body)
		res, out, _ := RunOnce(t, bg, prep(t, "sha256", machine.Limits{}), &machine.Request{
			Env:  []string{fmt.Sprintf("CONTENT_LENGTH=%d", len(body))},
			Body: bytes.NewReader(body), BodyLen: int64(len(body)),
		})
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		if _, got := SplitCGI(t, out); got != hex.EncodeToString(sum[:])+"\n" {
			t.Fatalf("sha256 = %q, want %x", got, sum)
		}
	})
	// 8 MiB through echo in a machine with 8 MiB of memory in all: it can
	// only work if the body streams both ways.
	t.Run("echo-streams-8MiB", func(t *testing.T) {
		img := prep(t, "echo", machine.Limits{Memory: 8 << 20})
		body := make([]byte, 8<<20)
		rand.Read(body)
		var out chunkRecorder
		m, err := img.NewMachine()
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		res := m.Run(bg, &machine.Request{
			Env:  []string{"REQUEST_METHOD=PUT", fmt.Sprintf("CONTENT_LENGTH=%d", len(body))},
			Body: bytes.NewReader(body), BodyLen: int64(len(body)),
		}, &out, io.Discard)
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
		want := "method=PUT\npath=\nquery=\ncontent_length=8388608\nbody:\n" + string(body)
		if _, got := SplitCGI(t, out.String()); got != want {
			t.Fatalf("streamed body differs: got %d bytes, want %d", len(got), len(want))
		}
		if out.writes < 8 {
			t.Errorf("the response arrived in %d writes: not streamed", out.writes)
		}
		t.Logf("8 MiB echo: %d writes, %d exits, %v", out.writes, res.Exits, res.RunTime)
	})
	t.Run("one-request-per-machine", func(t *testing.T) {
		m, err := prep(t, "hello", machine.Limits{}).NewMachine()
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if res := m.Run(bg, &machine.Request{}, io.Discard, io.Discard); res.Outcome != machine.Served {
			t.Fatal(res.Err())
		}
		if res := m.Run(bg, &machine.Request{}, io.Discard, io.Discard); res.Outcome != machine.InternalError {
			t.Fatalf("second Run on the same machine: %v", res.Outcome)
		}
	})
	t.Run("cancel-stops-machine", func(t *testing.T) {
		m, err := prep(t, "loop", machine.Limits{Timeout: time.Minute}).NewMachine()
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ctx, cancel := context.WithCancel(bg)
		done := make(chan machine.Result)
		go func() { done <- m.Run(ctx, &machine.Request{}, io.Discard, io.Discard) }()
		cancel()
		if res := <-done; res.Outcome != machine.Canceled {
			t.Fatalf("outcome %v", res.Outcome)
		}
	})
	t.Run("bad-writer-stops-machine", func(t *testing.T) {
		boom := errors.New("client went away")
		m, err := prep(t, "flood", machine.Limits{}).NewMachine()
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		res := m.Run(bg, &machine.Request{}, failWriter{boom}, io.Discard)
		if res.Outcome != machine.BadOutput || !errors.Is(res.Err(), boom) {
			t.Fatalf("outcome %v: %v", res.Outcome, res.Err())
		}
	})
	t.Run("body-read-error", func(t *testing.T) {
		boom := errors.New("connection reset")
		req, _ := EchoRequest()
		req.Body = failReader{boom}
		res, _, _ := RunOnce(t, bg, prep(t, "echo", machine.Limits{}), req)
		if res.Outcome != machine.Canceled || !errors.Is(res.Err(), boom) {
			t.Fatalf("outcome %v: %v", res.Outcome, res.Err())
		}
	})
}

// HostUsage counts this process's file descriptors and threads.
func HostUsage(t testing.TB) (fds, threads int) {
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

// Latencies collects per-request durations for a benchmark.
type Latencies []time.Duration

// Report sorts l and reports its median and 99th percentile as p50-µs and
// p99-µs: medians, not means, because these machines are noisy.
func (l Latencies) Report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	b.ReportMetric(l.Quantile(0.50), "p50-µs")
	b.ReportMetric(l.Quantile(0.99), "p99-µs")
}

// Quantile of sorted l, in microseconds.
func (l Latencies) Quantile(q float64) float64 {
	return float64(l[int(q*float64(len(l)-1))].Nanoseconds()) / 1e3
}

// HelloEnv is a typical CGI environment for benchmark requests.
var HelloEnv = []string{"GATEWAY_INTERFACE=CGI/1.1", "REQUEST_METHOD=GET", "SCRIPT_NAME=/hello", "PATH_INFO=", "QUERY_STRING=", "SERVER_PROTOCOL=HTTP/1.1", "SERVER_NAME=localhost", "SERVER_PORT=8080", "REMOTE_ADDR=127.0.0.1", "HTTP_HOST=localhost:8080", "HTTP_USER_AGENT=bench"}

// Sustained measures fresh machines per second of img, creation and
// destruction included, from as many goroutines as GOMAXPROCS, and reports
// it as machines/s.
func Sustained(b *testing.B, img machine.Image) {
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var out bytes.Buffer
		for pb.Next() {
			out.Reset()
			m, err := img.NewMachine()
			if err != nil {
				b.Error(err)
				return
			}
			res := m.Run(context.Background(), &machine.Request{Env: HelloEnv}, &out, io.Discard)
			m.Close()
			if res.Outcome != machine.Served {
				b.Error(res.Err())
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "machines/s")
}
