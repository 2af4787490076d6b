//go:build wasip1

package dustgo

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"
)

// A snapshot holds the Go runtime's random state as start-up left it, so
// without help every request would draw the same math/rand values and give
// its maps the same hash seeds. Dust reseeds that state itself, from the
// host, in every request's instance before dust_serve runs: it writes fresh
// random bytes over the memory regions dust_rand_state reports at deploy.
// Writing from outside costs no guest code per request, and the host can
// refuse a Go reactor that does not report the regions instead of
// replaying.
//
// On wasip1 the runtime has exactly one M (newosproc throws), and every
// runtime random number after start-up comes from that M's two
// generators: runtime.rand (m.chacha8: math/rand and math/rand/v2
// top-level functions, map seeds and iteration offsets, hash/maphash
// seeds) and runtime.cheaprand (m.cheaprand: select, scheduling). The
// global chacha8 state only seeds new Ms, and there are none.
//
// Neither field is reachable by name: the linker refuses linknames to
// runtime.m0, so dust_rand_state finds them in the M by their behaviour,
// drawing numbers and watching which bytes change (randsearch.go). A
// runtime that does not behave as expected is reported, and Dust refuses
// the app rather than replay its randomness.

// randStateVersion is the layout of randState the host reads: version,
// count, then count (address, size) pairs, all little-endian uint32s.
const randStateVersion = 1

var randState [2 + 2*2]uint32

// dustRandState reports the regions Dust overwrites with fresh random
// bytes in every request: the address of randState, or 0 if they could
// not be found, with the reason on stderr.
//
//go:wasmexport dust_rand_state
func dustRandState() uint32 {
	mp, chacha, cheap, err := locateRandState()
	if err != nil {
		fmt.Fprintf(os.Stderr, "dustgo: cannot locate the Go runtime's random state (%s): %v\n", runtime.Version(), err)
		return 0
	}
	m := uintptr(mp)
	randState = [...]uint32{
		randStateVersion, 2,
		uint32(m + uintptr(chacha)), chachaFresh,
		uint32(m + uintptr(cheap)), cheapSize,
	}
	return uint32(uintptr(unsafe.Pointer(&randState)))
}

// cheapStepped reports whether r and the change from before to after are
// one step of runtime.cheaprand. On wasm it is xorshift64+ over two
// uint32 halves: a step moves the second half into the first and returns
// the sum of the new halves.
func cheapStepped(before, after []byte, r uint32) bool {
	return le64(before) != le64(after) && le32(after) == le32(before[4:]) && le32(after)+le32(after[4:]) == r
}
