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
	for _, want := range []struct {
		name     string
		required bool
	}{{"hvt-pool-paced", true}, {"hvt-pool", true}, {"hvt-cold", true}, {"posix-spawn", true}, {"http-plain", true},
		{"qemu-microvm", noQEMU == nil}, {"container-ns", root}, {"container-runc", root && noRunc == nil}} {
		r, ok := byName[want.name]
		if !ok {
			t.Errorf("no row for %s", want.name)
		}
		if want.required && r.Skip != "" {
			t.Errorf("%s skipped: %s", want.name, r.Skip)
		}
	}
	if len(rep.Gateway) == 0 || rep.Gateway[0].Requests == 0 {
		t.Errorf("gateway section empty: %+v", rep.Gateway)
	}
	for _, g := range rep.Gateway {
		if g.Errors > 0 {
			t.Errorf("%s: %d errors (%s)", g.Name, g.Errors, g.FirstError)
		}
	}
	text := stdout.String()
	for _, s := range []string{"p50 vs posix-spawn", "hvt-pool-paced", "Targets (issue 5)"} {
		if !strings.Contains(text, s) {
			t.Errorf("report lacks %q:\n%s", s, text)
		}
	}
	if !strings.Contains(stderr.String(), "machine layer") {
		t.Errorf("no progress on stderr: %q", stderr.String())
	}
	svg, err := os.ReadFile(filepath.Join(out, "latency.svg"))
	if err != nil {
		t.Fatal(err)
	}
	wellFormed(t, svg)
	js, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatalf("report.json: %v", err)
	}
}
