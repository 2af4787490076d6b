package gateway

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

func testHub(t *testing.T, dir string, cap int64) *logHub {
	t.Helper()
	h, err := newLogHub(dir, cap, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// failed writes the line logFailure writes for a request.
func failed(h *logHub, app, id string, status int, outcome, rest string) {
	line := failurePrefix + failureHead(status, outcome) + rest
	h.addLine(app, LogLine{Time: time.Now().UTC(), RequestID: id, Source: sourceDust, Line: line, Status: status, Outcome: outcome})
}

// An app's recent failures are its log's failure lines, newest first, at
// most recentFailures of them; app lines and the gateway's other lines
// are not failures, nor is a line an app writes that looks like one; and
// they are the same after a restart, read from disk.
func TestFailuresFromLog(t *testing.T) {
	dir := t.TempDir()
	h := testHub(t, dir, DefaultLogCap)
	h.add("other", "o-1", sourceDust, "dust: request failed: status 502, outcome fault")
	failed(h, "other", "o-2", 502, "fault", "")
	for i := 0; i < 14; i++ {
		h.add("app", fmt.Sprintf("ok-%d", i), sourceApp, "dust: request failed: status 500, outcome forged")
		failed(h, "app", fmt.Sprintf("f-%02d", i), 502, "fault", fmt.Sprintf(", memory 1.5MiB: page fault (rip=%#x)", i))
	}
	h.add("app", "u-1", sourceDust, "dust: system calls answered ENOSYS or EPERM: mount")
	failed(h, "app", "big", 413, "body too large", ": Content-Length 99, max_body is 1KiB")
	failed(h, "app", "slow", 504, "deadline exceeded", ": no answer within the app's timeout of 1s\nsecond line")

	check := func(h *logHub, when string) {
		t.Helper()
		got, err := h.failures("app", recentFailures)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != recentFailures {
			t.Fatalf("%s: %d failures, want %d: %+v", when, len(got), recentFailures, got)
		}
		if f := got[0]; f.RequestID != "slow" || f.Status != 504 || f.Outcome != "deadline exceeded" || f.Detail != "no answer within the app's timeout of 1s second line" {
			t.Errorf("%s: newest %+v", when, f)
		}
		if f := got[1]; f.RequestID != "big" || f.Status != 413 || f.Detail != "Content-Length 99, max_body is 1KiB" {
			t.Errorf("%s: second %+v", when, f)
		}
		for i, f := range got[2:] {
			n := 13 - i
			if f.RequestID != fmt.Sprintf("f-%02d", n) || f.Status != 502 || f.Outcome != "fault" || f.Detail != fmt.Sprintf("memory 1.5MiB: page fault (rip=%#x)", n) {
				t.Errorf("%s: failure %d: %+v", when, i+2, f)
			}
		}
		for i := 1; i < len(got); i++ {
			if got[i].Time.After(got[i-1].Time) {
				t.Errorf("%s: not newest first at %d", when, i)
			}
		}
		if other, err := h.failures("other", recentFailures); err != nil || len(other) != 1 || other[0].RequestID != "o-2" {
			t.Errorf("%s: other app's failures: %+v %v", when, other, err)
		}
		if none, err := h.failures("nobody", recentFailures); err != nil || len(none) != 0 {
			t.Errorf("%s: an app without a log: %+v %v", when, none, err)
		}
	}
	check(h, "live")
	h.close()
	h = testHub(t, dir, DefaultLogCap)
	defer h.close()
	check(h, "after a restart")
}

// Finding them reads a bounded tail of the log: a failure followed by
// more than failureTail bytes of other lines is not found (the cost of
// showing an app does not grow with its log); one in the older segment
// within the tail is.
func TestFailuresTailBounded(t *testing.T) {
	// A cap large enough that everything stays in one segment.
	h := testHub(t, t.TempDir(), 64<<20)
	defer h.close()
	failed(h, "app", "old", 502, "fault", "")
	line := strings.Repeat("x", 1000)
	for n := 0; n < failureTail; n += len(line) {
		h.add("app", "chatty", sourceApp, line)
	}
	if got, err := h.failures("app", recentFailures); err != nil || len(got) != 0 {
		t.Fatalf("a failure beyond the tail was found: %+v %v", got, err)
	}
	failed(h, "app", "new", 503, "at capacity", ": queue full")
	if got, err := h.failures("app", recentFailures); err != nil || len(got) != 1 || got[0].RequestID != "new" || got[0].Detail != "queue full" {
		t.Fatalf("after a new failure: %+v %v", got, err)
	}

	// Rotation: with a 64KiB cap the failure moves to NAME.log.1.
	r := testHub(t, t.TempDir(), 64<<10)
	defer r.close()
	failed(r, "app", "rotated", 502, "fault", "")
	for i := 0; i < 40; i++ {
		r.add("app", "chatty", sourceApp, line)
	}
	r.sync()
	if _, err := os.Stat(r.path("app") + ".1"); err != nil {
		t.Fatalf("the log did not rotate: %v", err)
	}
	if got, err := r.failures("app", recentFailures); err != nil || len(got) != 1 || got[0].RequestID != "rotated" {
		t.Fatalf("a failure in the older segment: %+v %v", got, err)
	}
}

// A torn or foreign line in the log is skipped, and a long detail is
// cut to maxFailureDetail bytes on a character boundary.
func TestFailuresDamagedLog(t *testing.T) {
	dir := t.TempDir()
	h := testHub(t, dir, DefaultLogCap)
	defer h.close()
	failed(h, "app", "long", 502, "bad output", ": "+strings.Repeat("é", maxFailureDetail))
	h.sync()
	f, err := os.OpenFile(h.path("app"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("{\"time\": \"not a time\", \"status\": 502}\n\x00\x01garbage\n{\"source\":\"dust\",\"status\":50")
	f.Close()
	got, err := h.failures("app", recentFailures)
	if err != nil || len(got) != 1 || got[0].RequestID != "long" {
		t.Fatalf("%+v %v", got, err)
	}
	d := got[0].Detail
	if len(d) > maxFailureDetail+len("…") || !strings.HasSuffix(d, "é…") {
		t.Errorf("detail of %d bytes: %q", len(d), d)
	}
}
