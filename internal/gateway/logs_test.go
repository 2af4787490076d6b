package gateway

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/cgi"
	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
)

// A failed request's line says the status, the outcome and each detail
// once: the fault with its RIP, the limit hit, the exit status, memory.
func TestFailureLine(t *testing.T) {
	outcomeErr := func(r machine.Result) error { return r.Err() }
	for _, c := range []struct {
		name         string
		status, exit int
		outcome      string
		memory       int64
		detail       error
		want         string
		absent       string
	}{
		{name: "fault", status: 502, outcome: "fault",
			detail: outcomeErr(machine.Result{Outcome: machine.Fault, Detail: "page fault at 0x0", RIP: 0x1234, HasRIP: true}),
			want:   "request failed: status 502, outcome fault: page fault at 0x0 (rip=0x1234)", absent: "fault: fault"},
		{name: "deadline", status: 504, outcome: "deadline exceeded",
			detail: outcomeErr(machine.Result{Outcome: machine.DeadlineExceeded}),
			want:   "request failed: status 504, outcome deadline exceeded: no answer within the app's timeout of 1.5s"},
		{name: "memory limit", status: 502, outcome: "memory limit", exit: 1, memory: 16 << 20,
			detail: outcomeErr(machine.Result{Outcome: machine.MemoryLimit, ExitStatus: 1, Detail: "memory.grow beyond 16384 KiB refused"}),
			want:   "request failed: status 502, outcome memory limit, exit status 1, memory 16MiB: memory.grow beyond 16384 KiB refused"},
		{name: "exit status", status: 502, outcome: machine.Served.String(), exit: 3, memory: 1 << 20,
			want: "request failed: status 502, outcome exit status 3, memory 1MiB", absent: "served"},
		{name: "bad output", status: 502, outcome: machine.Served.String(),
			detail: fmt.Errorf("%w: line 1", cgi.ErrMalformedHeader),
			want:   "request failed: status 502, outcome bad output: cgi: malformed header: line 1"},
		{name: "at capacity", status: 503, outcome: "at capacity", detail: errQueueFull,
			want: "request failed: status 503, outcome at capacity: queue full"},
	} {
		got := failureLine(c.status, c.outcome, c.exit, c.memory, c.detail, 1500*time.Millisecond)
		if got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
		if c.absent != "" && strings.Contains(got, c.absent) {
			t.Errorf("%s: %q says %q", c.name, got, c.absent)
		}
	}
}

// syncBuffer is a bytes.Buffer a logger and a test may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A guest whose output quotes its secret (here as a broken CGI header, which
// the gateway's error then quotes) does not get the value into the app's
// log nor the server's: both say [secret NAME].
func TestSecretNotInFailureLogs(t *testing.T) {
	kvmtest.Require(t)
	const value = "s3cr3t-value-42"
	var serverLog syncBuffer
	s, err := New(Config{DataDir: t.TempDir(), Kinds: map[string]machine.Kind{"hvt": hvt.Kind{}}, Detect: detect,
		Logger: slog.New(slog.NewTextHandler(&serverLog, nil)), ShutdownGrace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { hs.Close(); s.Close() })
	img := guest(t, `#include <stdio.h>
#include <stdlib.h>
int main(void)
{
	printf("%s\r\n\r\n", getenv("API_KEY"));
	fprintf(stderr, "key is %s\n", getenv("API_KEY"));
	return 0;
}
`)
	p := store.Patch{}
	if _, err := s.DeployPatch("leaky", bytes.NewReader(img), p, store.SecretChange{Set: map[string]string{"API_KEY": value}}); err != nil {
		t.Fatal(err)
	}
	resp, _ := get(t, "GET", hs.URL+"/leaky", nil)
	if resp.StatusCode != 502 {
		t.Fatalf("status %d, want 502 for a broken header", resp.StatusCode)
	}
	lines, err := s.logs.recent("leaky", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var appLog strings.Builder
	for _, l := range lines {
		appLog.WriteString(l.Line + "\n")
	}
	for where, text := range map[string]string{"app log": appLog.String(), "server log": serverLog.String()} {
		if strings.Contains(text, value) {
			t.Errorf("the %s shows the secret:\n%s", where, text)
		}
		if !strings.Contains(text, "[secret API_KEY]") {
			t.Errorf("the %s does not say where the secret was:\n%s", where, text)
		}
	}
	if !strings.Contains(appLog.String(), "dust: request failed: status 502, outcome bad output: ") || !strings.Contains(appLog.String(), "cgi: malformed header line 1") {
		t.Errorf("no failure line in the app log:\n%s", appLog.String())
	}
}
