package wasm

import (
	"errors"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// FuzzPrepare hands arbitrary bytes to the deploy-time acceptance check:
// it never panics, and everything it refuses is a machine.ErrBadImage.
func FuzzPrepare(f *testing.F) {
	f.Add([]byte("\x00asm\x01\x00\x00\x00"))
	f.Add([]byte("\x00asm\x0d\x00\x01\x00")) // a component (WASI preview 2)
	f.Add(wasmModule(nil, "_start"))
	f.Add(wasmModule([][2]string{{"env", "magic"}}, "_start"))
	f.Add(wasmModule(nil, "_initialize"))
	f.Add([]byte("not wasm at all"))
	f.Fuzz(func(t *testing.T, b []byte) {
		im, err := Prepare(b, machine.Limits{Memory: 16 << 20, Timeout: time.Second}, testOptions)
		if err != nil {
			if !errors.Is(err, machine.ErrBadImage) && !errors.Is(err, machine.ErrBadLimits) {
				t.Fatalf("refusal %v is not ErrBadImage", err)
			}
			return
		}
		im.Close()
	})
}
