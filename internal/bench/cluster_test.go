package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/kvm"
)

// TestClusterSection runs the cluster section in miniature and checks
// that what it reports was measured: every forwarded request was served
// by another node, every deploy reached every node after it was
// acknowledged.
func TestClusterSection(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	examples, _ := filepath.Abs("../../examples")
	a := &artifacts{missing: map[string]string{}}
	for _, f := range []struct {
		dst  *[]byte
		path string
	}{{&a.helloELF, "hello/hello.elf"}, {&a.helloWasm, "hello/hello.wasm"}} {
		b, err := os.ReadFile(filepath.Join(examples, f.path))
		if err != nil {
			t.Skipf("examples not built (make examples wasm-examples): %v", err)
		}
		*f.dst = b
	}
	var log []string
	res := runCluster(context.Background(), a, 20, 300e6, 2, func(f string, args ...any) { log = append(log, f) })
	var text strings.Builder
	writeCluster(&text, res)
	t.Log(text.String())
	if res.Skip != "" {
		t.Fatalf("skipped: %s", res.Skip)
	}
	if res.Local.N != 20 || res.Forwarded.N != 20 {
		t.Errorf("%d local and %d forwarded samples, want 20 each", res.Local.N, res.Forwarded.N)
	}
	if res.ForwardedBy["b"]+res.ForwardedBy["c"] != 20 {
		t.Errorf("forwarded requests served by %v: all should be b's or c's (a cannot serve the app)", res.ForwardedBy)
	}
	if res.DeployAck.N != 2 || res.DeployEverywhere.Min < res.DeployAck.Min {
		t.Errorf("deploys: acknowledged %+v, everywhere %+v", res.DeployAck, res.DeployEverywhere)
	}
	if kvm.Available() == nil && (res.OneNodeRPS <= 0 || res.AllNodesRPS <= 0 || res.LoadErrors != 0) {
		t.Errorf("throughput: one node %.0f req/s, three %.0f req/s, %d errors", res.OneNodeRPS, res.AllNodesRPS, res.LoadErrors)
	}
}
