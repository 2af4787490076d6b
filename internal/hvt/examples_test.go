package hvt

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

var (
	buildMu  sync.Mutex
	builtELF = map[string][]byte{}
	buildDir string
)

// exampleELF compiles examples/NAME/NAME.c against libdust (once per test
// binary) and returns the image.
func exampleELF(t testing.TB, name string) []byte {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if b, ok := builtELF[name]; ok {
		return b
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "dust-examples-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	root, _ := filepath.Abs("../..")
	out := filepath.Join(buildDir, name+".elf")
	cmd := exec.Command(filepath.Join(root, "guest/dustcc"), "-o", out, filepath.Join(root, "examples", name, name+".c"))
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building example %s: %v\n%s", name, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	builtELF[name] = b
	return b
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// prepare builds an example and prepares it with limits.
func prepare(t testing.TB, name string, l machine.Limits) *Image {
	t.Helper()
	kvmtest.Require(t)
	im, err := Prepare(exampleELF(t, name), l)
	if err != nil {
		t.Fatalf("prepare %s: %v", name, err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// runOnce serves one request on a brand-new machine.
func runOnce(t testing.TB, im *Image, req *machine.Request) (machine.Result, string, string) {
	t.Helper()
	return machinetest.RunOnce(t, context.Background(), im, req)
}

func splitCGI(t testing.TB, out string) (string, string) { return machinetest.SplitCGI(t, out) }
