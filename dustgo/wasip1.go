//go:build wasip1

package dustgo

import (
	"fmt"
	"unsafe"
)

// A reactor is served when the host calls dust_serve.
func afterHandle() {}

var autoServe = false

// dustServe is the entry point Dust calls in every request's instance.
//
//go:wasmexport dust_serve
func dustServe() int32 { return serve() }

// os.Getenv and os.Args hold what the runtime read at start-up, which
// for a snapshot is the deploy's (empty) environment: the request's is
// only reachable through WASI itself.

//go:wasmimport wasi_snapshot_preview1 environ_sizes_get
func environSizesGet(count, size unsafe.Pointer) uint32

//go:wasmimport wasi_snapshot_preview1 environ_get
func environGet(ptrs, buf unsafe.Pointer) uint32

//go:wasmimport wasi_snapshot_preview1 args_sizes_get
func argsSizesGet(count, size unsafe.Pointer) uint32

//go:wasmimport wasi_snapshot_preview1 args_get
func argsGet(ptrs, buf unsafe.Pointer) uint32

func environ() ([]string, error) { return readStrings(environSizesGet, environGet) }

func args() ([]string, error) { return readStrings(argsSizesGet, argsGet) }

// readStrings reads a WASI string list: NUL-terminated strings packed in
// one buffer, plus a pointer to each that the packing makes redundant.
func readStrings(sizes, get func(a, b unsafe.Pointer) uint32) ([]string, error) {
	var count, size uint32
	if errno := sizes(unsafe.Pointer(&count), unsafe.Pointer(&size)); errno != 0 {
		return nil, fmt.Errorf("WASI errno %d", errno)
	}
	if count == 0 || size == 0 {
		return nil, nil
	}
	ptrs := make([]uint32, count)
	buf := make([]byte, size)
	if errno := get(unsafe.Pointer(&ptrs[0]), unsafe.Pointer(&buf[0])); errno != 0 {
		return nil, fmt.Errorf("WASI errno %d", errno)
	}
	out := make([]string, 0, count)
	for start, i := 0, 0; i < len(buf) && len(out) < int(count); i++ {
		if buf[i] == 0 {
			out = append(out, string(buf[start:i]))
			start = i + 1
		}
	}
	return out, nil
}
