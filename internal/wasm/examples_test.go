package wasm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// The examples are built once per test binary by the project's own rule
// (examples/wasm.mk) into a temporary directory.
var (
	buildOnce sync.Once
	buildDir  string
	buildLog  string
)

// exampleWasm returns examples/NAME built as a module. Without the C
// toolchain (clang, wasm-ld, wasi-libc) C examples are skipped, unless
// DUST_REQUIRE_WASM_TOOLCHAIN=1 makes that a failure.
func exampleWasm(t testing.TB, name string) []byte {
	t.Helper()
	b, err := builtExample(name)
	if err == nil {
		return b
	}
	if !strings.HasPrefix(name, "go-") && os.Getenv("DUST_REQUIRE_WASM_TOOLCHAIN") != "1" && !haveWasiToolchain() {
		t.Skipf("example %s: no clang/wasm-ld/wasi-libc for wasm32-wasi (apt install clang lld wasi-libc libclang-rt-14-dev-wasm32)", name)
	}
	t.Fatalf("example %s was not built: %v\n%s", name, err, buildLog)
	return nil
}

// builtExample returns OUT/NAME/NAME.wasm as examples/wasm.mk left it.
func builtExample(name string) ([]byte, error) {
	buildOnce.Do(func() {
		d, err := os.MkdirTemp("", "dust-wasm-examples-")
		if err != nil {
			buildLog = err.Error()
			return
		}
		buildDir = d
		root, _ := filepath.Abs("../..")
		// -k: a missing C toolchain must not stop the Go examples.
		out, _ := exec.Command("make", "-s", "-k", "-f", filepath.Join(root, "examples/wasm.mk"), "OUT="+d).CombinedOutput()
		buildLog = string(out)
	})
	return os.ReadFile(filepath.Join(buildDir, name, name+".wasm"))
}

// haveWasiToolchain reports whether clang can link a WASI program.
func haveWasiToolchain() bool {
	cmd := exec.Command("clang", "--target=wasm32-wasi", "-x", "c", "-o", os.DevNull, "-")
	cmd.Stdin = strings.NewReader("int main(void) { return 0; }\n")
	return cmd.Run() == nil
}

// buildGo builds a wasip1 program from a directory of this package, with
// extra go build flags (e.g. -buildmode=c-shared for a reactor).
func buildGo(t testing.TB, dir string, flags ...string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "prog.wasm")
	args := append(append([]string{"build"}, flags...), "-o", out, "./"+dir)
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", dir, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// testOptions keep the tests' compiled code out of the user's cache.
var testOptions = Options{NoDiskCache: true}

func prepare(t testing.TB, name string, l machine.Limits) *Image {
	t.Helper()
	return prepareBytes(t, exampleWasm(t, name), l, testOptions)
}

func prepareBytes(t testing.TB, b []byte, l machine.Limits, o Options) *Image {
	t.Helper()
	im, err := Prepare(b, l, o)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// runOnce serves one request on a brand-new machine.
func runOnce(t testing.TB, im *Image, req *machine.Request) (machine.Result, string, string) {
	t.Helper()
	return runCtx(t, context.Background(), im, req)
}

func runCtx(t testing.TB, ctx context.Context, im *Image, req *machine.Request) (machine.Result, string, string) {
	t.Helper()
	return machinetest.RunOnce(t, ctx, im, req)
}

func splitCGI(t testing.TB, out string) (string, string) { return machinetest.SplitCGI(t, out) }
