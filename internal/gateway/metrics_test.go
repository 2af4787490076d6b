package gateway

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
	"github.com/dust-run/dust/internal/wasm"
)

// scrape returns the gateway's /metrics text.
func scrape(t *testing.T, s *Server) string {
	t.Helper()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+s.Token())
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

// sample is the value of a series in a scrape (-1: absent).
func sample(scr, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(scr)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// Every wasm request reports the memory its instance touched, whatever its
// outcome, in the metrics and in a failed request's log line; removing an
// app removes its series and its history.
func TestRequestMemoryAndRemovedApps(t *testing.T) {
	kvmtest.Require(t)
	s, err := New(Config{DataDir: t.TempDir(),
		Kinds: map[string]machine.Kind{"hvt": hvt.Kind{}, "wasm": wasm.Kind{Options: wasm.Options{NoDiskCache: true}}},
		Detect: func(b []byte) (string, error) {
			if bytes.HasPrefix(b, []byte("\x00asm")) {
				return "wasm", nil
			}
			return detect(b)
		},
		Logger: testLogger(), ShutdownGrace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { hs.Close(); s.Close() })
	apps := []struct {
		name   string
		set    store.Settings
		status int
		line   string // in the failure line
	}{
		{"hello", store.Settings{}, 200, ""},
		{"exitcode", store.Settings{}, 502, "outcome exit status 3, memory "},
		{"oom", store.Settings{Memory: 8 << 20}, 502, "outcome memory limit, exit status 1, memory "},
		{"loop", store.Settings{Timeout: 200 * time.Millisecond}, 504, "outcome deadline exceeded, memory "},
		{"trap", store.Settings{}, 502, "outcome fault, memory "},
	}
	for _, a := range apps {
		a.set.Route = "/" + a.name
		if _, err := s.Deploy(a.name, bytes.NewReader(wasmExample(t, a.name)), a.set); err != nil {
			t.Fatalf("deploy %s: %v", a.name, err)
		}
		if resp, _ := get(t, "GET", hs.URL+"/"+a.name, nil); resp.StatusCode != a.status {
			t.Fatalf("%s: %s, want %d", a.name, resp.Status, a.status)
		}
	}
	scr := scrape(t, s)
	for _, a := range apps {
		n := sample(scr, `dust_machine_memory_bytes_count{app="`+a.name+`"}`)
		sum := sample(scr, `dust_machine_memory_bytes_sum{app="`+a.name+`"}`)
		if n != 1 || sum <= 0 {
			t.Errorf("%s: memory observed %v times, %v bytes in all; want once, more than 0", a.name, n, sum)
		}
		if a.line == "" {
			continue
		}
		lines, err := s.logs.recent(a.name, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		var all strings.Builder
		for _, l := range lines {
			all.WriteString(l.Line + "\n")
		}
		if !strings.Contains(all.String(), a.line) {
			t.Errorf("%s: no %q in its log:\n%s", a.name, a.line, all.String())
		}
	}

	if err := s.Remove("oom"); err != nil {
		t.Fatal(err)
	}
	// The series go once the removed version's last request is done,
	// which the gateway learns in the background.
	for deadline := time.Now().Add(10 * time.Second); ; {
		scr = scrape(t, s)
		if !strings.Contains(scr, `app="oom"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a removed app's series are still scraped:\n%s", grepLines(scr, `app="oom"`))
		}
		time.Sleep(10 * time.Millisecond) // polling
	}
	if s.met.history.get("oom") != nil {
		t.Error("a removed app's traffic history is kept")
	}
	if !strings.Contains(scr, `app="hello"`) || s.met.history.get("hello") == nil {
		t.Error("removing one app took another's series or history")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
