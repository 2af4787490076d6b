package wasm

import (
	"errors"
	"flag"
	"runtime"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// fuzzAllocBound is what Prepare may allocate for an input of n bytes
// under FuzzPrepare's 16 MiB memory limit. The constant covers what the
// bounds let a small module cost in full: the 16 MiB memory and the
// 16 MiB of table entries the trial instance allocates, 50,000 locals in
// each of 20 functions (≈ 28 MB in wazero's compiler), and the runtime
// itself; the per-byte part what compiling real code costs (≈ 500 bytes
// of allocation per byte of a Go module) with headroom. TotalAlloc
// counts every allocation, freed or not, so the bound does not depend on
// when the collector runs.
func fuzzAllocBound(n int) uint64 { return 192<<20 + 4096*uint64(n) }

// FuzzPrepare hands arbitrary bytes to the deploy-time acceptance check:
// it never panics, everything it refuses is a machine.ErrBadImage, and
// the host memory it allocates is bounded by the input's size.
func FuzzPrepare(f *testing.F) {
	f.Add([]byte("\x00asm\x01\x00\x00\x00"))
	f.Add([]byte("\x00asm\x0d\x00\x01\x00")) // a component (WASI preview 2)
	f.Add(wasmModule(nil, "_start"))
	f.Add(wasmModule([][2]string{{"env", "magic"}}, "_start"))
	f.Add(wasmModule(nil, "_initialize"))
	f.Add([]byte("not wasm at all"))
	// The hostile modules too large for a corpus file (the small ones are
	// in testdata/fuzz/FuzzPrepare) are seeds of plain test runs only:
	// while fuzzing, the engine would spend its minimisation time on
	// their megabytes rather than mutate.
	if fl := flag.Lookup("test.fuzz"); fl == nil || fl.Value.String() == "" {
		f.Add(deepBlocks(100_000))
		f.Add(manyFuncs(500_000))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		im, err := Prepare(b, machine.Limits{Memory: 16 << 20, Timeout: time.Second}, testOptions)
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > fuzzAllocBound(len(b)) {
			t.Errorf("preparing %d bytes allocated %d MiB, over the %d MiB bound", len(b), alloc>>20, fuzzAllocBound(len(b))>>20)
		}
		if err != nil {
			if !errors.Is(err, machine.ErrBadImage) && !errors.Is(err, machine.ErrBadLimits) {
				t.Fatalf("refusal %v is not ErrBadImage", err)
			}
			return
		}
		im.Close()
	})
}
