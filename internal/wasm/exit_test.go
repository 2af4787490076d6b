package wasm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// compileC builds a C file of testdata for wasm32-wasi with extra clang
// flags; without the toolchain the test is skipped, unless
// DUST_REQUIRE_WASM_TOOLCHAIN=1 makes that a failure.
func compileC(t testing.TB, src string, flags ...string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "prog.wasm")
	args := append([]string{"--target=wasm32-wasi", "-O2", "-o", out, src}, flags...)
	if msg, err := exec.Command("clang", args...).CombinedOutput(); err != nil {
		if os.Getenv("DUST_REQUIRE_WASM_TOOLCHAIN") != "1" && !haveWasiToolchain() {
			t.Skipf("no clang/wasm-ld/wasi-libc for wasm32-wasi: %v", err)
		}
		t.Fatalf("clang %s: %v\n%s", src, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// deepExitImages are the programs that end from 200 frames down: C with
// and without DWARF (-g, as a debug build has it), and Go, whose linker
// keeps DWARF unless told -w.
func deepExitImages(t testing.TB) map[string][]byte {
	return map[string][]byte{
		"c":   compileC(t, "testdata/deepexit/deepexit.c"),
		"c-g": compileC(t, "testdata/deepexit/deepexit.c", "-g"),
		"go":  buildGo(t, "testdata/godeepexit"),
	}
}

// Ending through proc_exit from deep in the call stack is an ordinary
// end: served with its status, the answer whole, the memory reported;
// and a trap there still names the function it happened in.
func TestExitAnyDepth(t *testing.T) {
	for name, img := range deepExitImages(t) {
		im := prepareBytes(t, img, machine.Limits{}, testOptions)
		for _, q := range []string{"return", "exit", "trap"} {
			if name == "go" && q == "trap" {
				continue
			}
			res, out, log := runOnce(t, im, &machine.Request{Env: []string{"QUERY_STRING=" + q}})
			want := machine.Served
			if q == "trap" {
				want = machine.Fault
			}
			if res.Outcome != want || res.ExitStatus != 0 {
				t.Errorf("%s %s: outcome %v status %d (%v), want %v status 0; log %q", name, q, res.Outcome, res.ExitStatus, res.Err(), want, log)
				continue
			}
			if _, body := splitCGI(t, out); body != "deep\n" {
				t.Errorf("%s %s: body %q", name, q, body)
			}
			if res.MemoryBytes < pageSize {
				t.Errorf("%s %s: MemoryBytes %d, want the instance's linear memory", name, q, res.MemoryBytes)
			}
			if q == "trap" && res.Detail != "unreachable (in descend)" {
				t.Errorf("%s trap: detail %q, want the trap and the function it happened in", name, res.Detail)
			}
		}
	}
}

// BenchmarkExit is one request per iteration ending each way: returning
// from main against exit from 200 frames down; "dwarf" is the same with
// wazero's debug info on, as it was before.
func BenchmarkExit(b *testing.B) {
	for _, dwarf := range []bool{false, true} {
		debugInfo = dwarf
		for name, img := range deepExitImages(b) {
			if dwarf {
				name = "dwarf/" + name
			}
			// A cache of its own: runtimes sharing one share an engine,
			// and with it the first compilation's debug info.
			o := Options{CacheDir: b.TempDir()}
			benchExit(b, name, prepareBytes(b, img, machine.Limits{}, o))
		}
	}
	debugInfo = false
}

func benchExit(b *testing.B, name string, im *Image) {
	for _, q := range []string{"return", "exit"} {
		b.Run(name+"/"+q, func(b *testing.B) {
			req := &machine.Request{Env: []string{"QUERY_STRING=" + q}}
			benchFresh(b, im, req, func(res machine.Result, out []byte) bool {
				return res.Outcome == machine.Served && res.ExitStatus == 0 && bytes.HasSuffix(out, []byte("deep\n"))
			})
		})
	}
}

// Every way a run ends reports the instance's linear memory, including
// the ones where the instance is closed before Run returns (proc_exit,
// the deadline, the output limits).
func TestMemoryReportedForEveryOutcome(t *testing.T) {
	cases := []struct {
		example string
		query   string
		limits  machine.Limits
		outcome machine.Outcome
	}{
		{"hello", "", machine.Limits{}, machine.Served},
		{"exitcode", "", machine.Limits{}, machine.Served}, // proc_exit(3)
		{"trap", "", machine.Limits{}, machine.Fault},
		{"loop", "", machine.Limits{Timeout: 100 * time.Millisecond}, machine.DeadlineExceeded},
		{"flood", "", machine.Limits{MaxOutput: 64 << 10}, machine.OutputLimit},
		{"logflood", "", machine.Limits{MaxLog: 64 << 10}, machine.LogLimit},
		{"oom", "", machine.Limits{Memory: 8 << 20}, machine.MemoryLimit},
		{"go-hello", "", machine.Limits{}, machine.Served}, // Go's exit is proc_exit(0)
		{"go-fast-hello", "", machine.Limits{}, machine.Served},
	}
	for _, c := range cases {
		im := prepare(t, c.example, c.limits)
		res, _, _ := runOnce(t, im, &machine.Request{Env: []string{"QUERY_STRING=" + c.query}})
		if res.Outcome != c.outcome {
			t.Errorf("%s: outcome %v (%v), want %v", c.example, res.Outcome, res.Err(), c.outcome)
			continue
		}
		limit := im.Limits().Memory
		if res.MemoryBytes < pageSize || res.MemoryBytes%pageSize != 0 || res.MemoryBytes > limit {
			t.Errorf("%s (%v): MemoryBytes %d, want whole pages up to the %d-byte limit", c.example, c.outcome, res.MemoryBytes, limit)
		}
		// It grew 1 MiB at a time until the next would not fit.
		if c.example == "oom" && res.MemoryBytes <= limit-(2<<20) {
			t.Errorf("oom: MemoryBytes %d, want close to the %d-byte limit it hit", res.MemoryBytes, limit)
		}
		t.Logf("%s: %v, %d KiB", c.example, c.outcome, res.MemoryBytes>>10)
	}
}
