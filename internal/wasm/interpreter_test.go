package wasm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// tengoModule is a language interpreter nobody here wrote: the Tengo
// scripting language's command-line interpreter, fetched from the Go module
// proxy at a pinned version and built for WASI preview 1 by the test itself.
const tengoModule = "github.com/d5/tengo/v2/cmd/tengo@v2.17.0"

// buildInterpreter installs the interpreter for GOOS=wasip1 into a
// temporary GOPATH, outside this module so it adds nothing to go.mod.
func buildInterpreter(t *testing.T, pkg string) []byte {
	t.Helper()
	gopath := t.TempDir()
	cmd := exec.Command("go", "install", pkg)
	cmd.Dir = gopath
	modcache, _ := exec.Command("go", "env", "GOMODCACHE").Output()
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOPATH="+gopath, "GOFLAGS=",
		"GOMODCACHE="+strings.TrimSpace(string(modcache)))
	if out, err := cmd.CombinedOutput(); err != nil {
		if os.Getenv("DUST_REQUIRE_WASM_TOOLCHAIN") == "1" {
			t.Fatalf("building %s for wasip1: %v\n%s", pkg, err, out)
		}
		t.Skipf("cannot build %s for wasip1 (no module proxy?): %v\n%s", pkg, err, out)
	}
	name := filepath.Base(strings.Split(pkg, "@")[0])
	b, err := os.ReadFile(filepath.Join(gopath, "bin", "wasip1_wasm", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A real interpreter answers CGI requests, one fresh instance each, with
// its script handed in through a read-only directory.
func TestInterpreterServesScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an interpreter: skipped with -short")
	}
	scripts := t.TempDir()
	script := `os := import("os")
fmt := import("fmt")
text := import("text")
fmt.print("Content-Type: text/plain\n\n")
fmt.println("tengo says: " + text.to_upper(os.getenv("QUERY_STRING")) + " via " + os.getenv("REQUEST_METHOD"))
`
	if err := os.WriteFile(filepath.Join(scripts, "app.tengo"), []byte(script), 0o444); err != nil {
		t.Fatal(err)
	}
	img := buildInterpreter(t, tengoModule)
	opts := Options{CacheDir: t.TempDir(), Dirs: []Mount{{HostDir: scripts, GuestPath: "/app"}}}
	t0 := time.Now()
	im, err := Prepare(img, machine.Limits{Memory: 128 << 20, Timeout: 10 * time.Second}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	t.Logf("interpreter module: %d KiB, prepared in %v", len(img)>>10, time.Since(t0))
	for i, q := range []string{"first", "second", "third"} {
		t1 := time.Now()
		res, out, log := machinetest.RunOnce(t, context.Background(), im, &machine.Request{
			Args: []string{"tengo", "/app/app.tengo"},
			Env:  []string{"REQUEST_METHOD=GET", "QUERY_STRING=" + q},
		})
		if err := res.Err(); err != nil || res.ExitStatus != 0 {
			t.Fatalf("request %d: %v, status %d, log %q", i, err, res.ExitStatus, log)
		}
		if _, body := machinetest.SplitCGI(t, out); body != "tengo says: "+strings.ToUpper(q)+" via GET\n" {
			t.Fatalf("request %d: %q", i, out)
		}
		t.Logf("request %d: %v", i, time.Since(t1))
	}
}
