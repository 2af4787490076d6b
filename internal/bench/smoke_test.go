package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/kvm"
)

// TestQuickSmoke runs `dust bench --quick` in miniature: every section a
// quick run has, every contender that can run here, charts included.
func TestQuickSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	if err := kvm.Available(); err != nil {
		if os.Getenv("DUST_REQUIRE_KVM") != "" {
			t.Fatalf("KVM required: %v", err)
		}
		t.Skipf("no usable KVM: %v", err)
	}
	examples, _ := filepath.Abs("../../examples")
	if _, err := os.Stat(filepath.Join(examples, "hello", "hello.elf")); err != nil {
		t.Skipf("examples not built (make examples): %v", err)
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	rep, err := Run(context.Background(), Options{Quick: true, Duration: 2 * time.Second, Out: out,
		Examples: examples, Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	byName := map[string]Row{}
	for _, r := range rep.Machine {
		byName[r.Name] = r
		if r.Skip == "" && (r.N == 0 || r.P50 <= 0 || r.P99 < r.P50 || r.CPUPerReq <= 0) {
			t.Errorf("%s: implausible row %+v", r.Name, r)
		}
	}
	// The rows that depend on the host may be skipped only for the
	// reason they name: a missing package, or no root. Anything else (a
	// QEMU that aborts on this CPU vendor, a runc that cannot create its
	// container) fails the test.
	_, noQEMU := qemuBinary()
	_, noRunc := exec.LookPath("runc")
	root := os.Geteuid() == 0
	_, noMusl := exec.LookPath("musl-gcc")
	for _, want := range []struct {
		name     string
		required bool
	}{{"hvt-floor", true}, {"hvt-floor-direct", true}, {"hvt-restore-paced", true}, {"hvt-restore", true}, {"hvt-restore-seq", true},
		{"hvt-fresh-paced", true}, {"hvt-fresh", true}, {"hvt-cold", true}, {"posix-spawn", true}, {"http-plain", true},
		{"hvt-linux-musl", noMusl == nil}, {"posix-spawn-musl", noMusl == nil}, {"hvt-linux-glibc", true},
		{"qemu-microvm", noQEMU == nil}, {"container-ns", root}, {"container-runc", root && noRunc == nil}} {
		r, ok := byName[want.name]
		if !ok {
			t.Errorf("no row for %s", want.name)
		}
		if want.required && r.Skip != "" {
			t.Errorf("%s skipped: %s", want.name, r.Skip)
		}
	}
	// The restore rows must really have restored, the fresh ones not.
	for name, restores := range map[string]bool{"hvt-restore-paced": true, "hvt-restore": true, "hvt-fresh-paced": false, "hvt-fresh": false} {
		p := byName[name].Pool
		switch {
		case p == nil:
			t.Errorf("%s: no pool counters", name)
		case restores != (p.Restored > 0) || p.RestoreErrors != 0:
			t.Errorf("%s: %d restored, %d restore errors", name, p.Restored, p.RestoreErrors)
		}
	}
	// The floor rows ran (their size against the restore rows is a
	// figure for the report, not something a unit test on a shared
	// machine can assert).
	for _, name := range []string{"hvt-floor", "hvt-floor-direct"} {
		if byName[name].P50 <= 0 {
			t.Errorf("%s: no latency measured", name)
		}
	}
	if len(rep.Gateway) == 0 || rep.Gateway[0].Requests == 0 {
		t.Errorf("gateway section empty: %+v", rep.Gateway)
	}
	gwModes := map[string]string{"gateway hvt restore": "restore", "gateway hvt fresh": "fresh"}
	for _, g := range rep.Gateway {
		if g.Errors > 0 {
			t.Errorf("%s: %d errors (%s)", g.Name, g.Errors, g.FirstError)
		}
		mode, ok := gwModes[g.Name]
		if !ok {
			continue
		}
		delete(gwModes, g.Name)
		switch p := g.Pool; {
		case g.Requests == 0:
			t.Errorf("%s: no requests", g.Name)
		case p == nil:
			t.Errorf("%s: no pool counters", g.Name)
		case p.Mode != mode || (mode == "restore") != (p.Restored > 0):
			t.Errorf("%s: isolation %q with %d restored, want %s", g.Name, p.Mode, p.Restored, mode)
		}
	}
	for name := range gwModes {
		t.Errorf("no gateway row %q", name)
	}
	checkRestoreScaling(t, rep.RestoreScaling)
	phases := map[string]bool{}
	for _, p := range rep.Breakdown {
		phases[p.Name] = p.N > 0 && p.P50 > 0
	}
	for _, want := range []string{"run: KVM_RUN (guest running)", "run: total", "restore: memory (page map, compare, copy)", "restore: total"} {
		if !phases[want] {
			t.Errorf("breakdown lacks %q: %+v", want, rep.Breakdown)
		}
	}
	// A Linux program's rows count its exits: at least one system call
	// (exit_group) per request, and no more exits than calls plus one.
	for _, name := range []string{"hvt-linux-musl", "hvt-linux-glibc"} {
		if r := byName[name]; r.Skip == "" && (r.Syscalls < 1 || r.Exits < 1 || r.Exits > r.Syscalls+1) {
			t.Errorf("%s: %.1f exits for %.1f system calls per request", name, r.Exits, r.Syscalls)
		}
	}
	for _, tg := range rep.Targets {
		if (tg.Issue == "10" || (tg.Issue == "11" && noMusl == nil)) && !tg.Measured {
			t.Errorf("issue %s target %q not measured: %s", tg.Issue, tg.What, tg.Reason)
		}
	}
	text := stdout.String()
	for _, s := range []string{"p50 vs posix-spawn", "hvt-restore-paced", "hvt-floor", "gateway hvt fresh", "Restore cost", "Targets (issues 5, 10 and 11)"} {
		if !strings.Contains(text, s) {
			t.Errorf("report lacks %q:\n%s", s, text)
		}
	}
	if !strings.Contains(stderr.String(), "machine layer") {
		t.Errorf("no progress on stderr: %q", stderr.String())
	}
	for _, f := range []string{"latency.svg", "restore-pages.svg", "restore-memory.svg"} {
		svg, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		wellFormed(t, svg)
	}
	js, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatalf("report.json: %v", err)
	}
}

// checkRestoreScaling holds the restore sweeps to what they measure: every
// point ran, each restore copied back at least the pages the guest
// dirtied (and compared at least those it copied), and dirtying 4096
// pages costs more to restore than dirtying one.
func checkRestoreScaling(t *testing.T, pts []RestorePoint) {
	t.Helper()
	if len(pts) != len(restorePages)+len(restoreMemories) {
		t.Fatalf("restore sweep has %d points, want %d: %+v", len(pts), len(restorePages)+len(restoreMemories), pts)
	}
	reset := map[int]time.Duration{}
	for _, p := range pts {
		if p.Reset.N == 0 || p.Reset.P50 <= 0 || p.Copied < p.Pages || p.Compared < p.Copied {
			t.Errorf("implausible restore point %+v", p)
		}
		if p.Series == "pages" {
			reset[p.Pages] = p.Reset.P50
		}
	}
	if reset[4096] <= reset[1] {
		t.Errorf("restoring 4096 dirtied pages (%v) no dearer than 1 (%v)", reset[4096], reset[1])
	}
}
