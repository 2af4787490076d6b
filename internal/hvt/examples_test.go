package hvt

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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
	root, _ := filepath.Abs("../..")
	return dustccELF(t, name, filepath.Join(root, "examples", name, name+".c"), nil)
}

// dustccELF builds a libdust guest with guest/dustcc once per test binary
// under key: from the file src, or, when src is "", from the source text
// text written into the build directory.
func dustccELF(t testing.TB, key, src string, text []byte) []byte {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if b, ok := builtELF[key]; ok {
		return b
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "dust-examples-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	name := strings.ReplaceAll(key, ":", "-")
	if src == "" {
		src = filepath.Join(buildDir, name+".c")
		if err := os.WriteFile(src, text, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root, _ := filepath.Abs("../..")
	out := filepath.Join(buildDir, name+".elf")
	if msg, err := exec.Command(filepath.Join(root, "guest/dustcc"), "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("building guest %s: %v\n%s", key, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	builtELF[key] = b
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

// runOnce serves one request on a machine of im in the isolation mode the
// suite runs in (testImage).
func runOnce(t testing.TB, im *Image, req *machine.Request) (machine.Result, string, string) {
	t.Helper()
	return machinetest.RunOnce(t, context.Background(), testImage(im), req)
}

// IsolationEnv makes the suite's shared helpers (runOnce, the contract)
// hand out restored machines: with DUST_HVT_ISOLATION=restore every machine
// has already served a request — the image's own program, with an empty
// request, under a short deadline, whatever its outcome — and been reset,
// so every test built on them checks a restored machine instead of a new
// one. `make test` runs the package both ways.
const IsolationEnv = "DUST_HVT_ISOLATION"

func testImage(im *Image) machine.Image {
	if os.Getenv(IsolationEnv) == machine.IsolationRestore {
		return restoredImage{im}
	}
	return im
}

// restoredImage's machines come out of a restore, not out of creation.
type restoredImage struct{ *Image }

func (r restoredImage) NewMachine() (machine.Machine, error) {
	m, err := r.Image.newMachine()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	m.Run(ctx, &machine.Request{Args: []string{"/"}, Env: machinetest.HelloEnv}, io.Discard, io.Discard)
	if err := m.Reset(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func splitCGI(t testing.TB, out string) (string, string) { return machinetest.SplitCGI(t, out) }
