//go:build wasip1

package dustgo

import (
	"encoding/binary"
	"errors"
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
// drawing numbers and watching which bytes change. Only the shape of
// internal/chacha8rand.State is assumed, and every assumption is checked
// against further draws; a runtime that does not behave as expected is
// reported, and Dust refuses the app rather than replay its randomness.

//go:linkname runtimeRand runtime.rand
func runtimeRand() uint64

//go:linkname runtimeCheaprand runtime.cheaprand
func runtimeCheaprand() uint32

// runtime.getm returns the M's address as a uintptr; it is declared here
// with the same word as an unsafe.Pointer, which is what it is used as.
//
//go:linkname runtimeGetm runtime.getm
func runtimeGetm() unsafe.Pointer

// mWindow is how much of the M is searched. runtime.m is about 1.7 KiB
// on wasm in Go 1.26, its chacha8 state at offset 1248; the margin lets it
// grow, and reading past its end is harmless: m0 is a static variable well
// inside linear memory.
const mWindow = 4096

// The layout of internal/chacha8rand.State: buf [32]uint64, seed
// [4]uint64, then the uint32s i (next index into buf), n (end of the
// usable part of buf) and c (block counter).
const (
	chachaBuf    = 32
	chachaSeedAt = chachaBuf * 8
	chachaIAt    = chachaSeedAt + 4*8
	chachaNAt    = chachaIAt + 4
	chachaCAt    = chachaNAt + 4
	chachaSize   = chachaCAt + 4
	// chachaFresh is the part that decides every future output: the
	// buffered outputs and the seed of the following blocks.
	chachaFresh = chachaIAt
)

// randStateVersion is the layout of randState the host reads: version,
// count, then count (address, size) pairs, all little-endian uint32s.
const randStateVersion = 1

var randState [2 + 2*2]uint32

// scratch holds the M's bytes before a draw. It is static so that the
// search does not allocate: an allocation can draw from cheaprand
// (memory-profile sampling) between the copy and the draw watched.
var scratch [mWindow]byte

// dustRandState reports the regions Dust overwrites with fresh random
// bytes in every request: the address of randState, or 0 if they could
// not be found, with the reason on stderr.
//
//go:wasmexport dust_rand_state
func dustRandState() uint32 {
	chacha, cheap, err := locateRandState()
	if err != nil {
		fmt.Fprintf(os.Stderr, "dustgo: cannot locate the Go runtime's random state (%s): %v\n", runtime.Version(), err)
		return 0
	}
	randState = [...]uint32{
		randStateVersion, 2,
		uint32(chacha), chachaFresh,
		uint32(cheap), 8,
	}
	return uint32(uintptr(unsafe.Pointer(&randState)))
}

func locateRandState() (chacha, cheap uintptr, err error) {
	mp := runtimeGetm()
	if mp == nil {
		return 0, 0, errors.New("no M")
	}
	m := (*[mWindow]byte)(mp)
	c, err := findChacha8(m)
	if err != nil {
		return 0, 0, fmt.Errorf("runtime.rand: %w", err)
	}
	p, err := findCheaprand(m)
	if err != nil {
		return 0, 0, fmt.Errorf("runtime.cheaprand: %w", err)
	}
	if p < c+chachaSize && c < p+8 {
		return 0, 0, errors.New("runtime.rand and runtime.cheaprand were found in the same bytes")
	}
	return uintptr(mp) + uintptr(c), uintptr(mp) + uintptr(p), nil
}

func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

// findChacha8 returns the offset in m of the chacha8rand.State that
// runtime.rand draws from. Next returns buf[i] and leaves it in place, so
// a drawn value sits in buf, with i one past it.
func findChacha8(m *[mWindow]byte) (int, error) {
	x := runtimeRand()
	at := -1
	for o := 0; o+8 <= mWindow; o += 8 {
		if le64(m[o:]) != x {
			continue
		}
		for j := 0; j < chachaBuf; j++ {
			b := o - 8*j
			if b < 0 || b+chachaSize > mWindow || !plausibleChacha(m, b) || le32(m[b+chachaIAt:]) != uint32(j+1) {
				continue
			}
			if at >= 0 && at != b {
				return 0, errors.New("more than one candidate state")
			}
			at = b
		}
	}
	if at < 0 {
		return 0, errors.New("no chacha8 state holds the value drawn")
	}
	// Predict more draws than a buffer holds, so that a refill is seen
	// too: within the buffer the next value is buf[i]; after a refill it
	// is the new buf[0].
	for k := 0; k < 2*chachaBuf; k++ {
		i, n := le32(m[at+chachaIAt:]), le32(m[at+chachaNAt:])
		want, known := uint64(0), i < n
		if known {
			want = le64(m[at+8*int(i):])
		}
		got := runtimeRand()
		switch {
		case !plausibleChacha(m, at):
			return 0, errors.New("the candidate state stopped looking like one")
		case known && (got != want || le32(m[at+chachaIAt:]) != i+1):
			return 0, errors.New("a draw did not come from the candidate state")
		case !known && (got != le64(m[at:]) || le32(m[at+chachaIAt:]) != 1):
			return 0, errors.New("a refill did not restart the candidate state")
		}
	}
	return at, nil
}

// plausibleChacha checks the counters of a State at b: n is 32, or 28
// before the blocks that reseed it; c counts blocks by 4 up to 12.
func plausibleChacha(m *[mWindow]byte, b int) bool {
	i, n, c := le32(m[b+chachaIAt:]), le32(m[b+chachaNAt:]), le32(m[b+chachaCAt:])
	return (n == chachaBuf || n == chachaBuf-4) && i <= n && c%4 == 0 && c < 16
}

// findCheaprand returns the offset in m of the uint64 runtime.cheaprand
// steps. On wasm it is xorshift64+ over two uint32 halves: a step moves
// the second half into the first and returns the sum of the new halves.
func findCheaprand(m *[mWindow]byte) (int, error) {
	scratch = *m
	r := runtimeCheaprand()
	at := -1
	for o := 0; o+8 <= mWindow; o += 8 {
		if stepped(scratch[o:o+8], m[o:o+8], r) {
			if at >= 0 {
				return 0, errors.New("more than one candidate state")
			}
			at = o
		}
	}
	if at < 0 {
		return 0, errors.New("no word changed as a step of it would")
	}
	for k := 0; k < 16; k++ {
		copy(scratch[:8], m[at:at+8])
		if r := runtimeCheaprand(); !stepped(scratch[:8], m[at:at+8], r) {
			return 0, errors.New("a draw did not step the candidate state")
		}
	}
	return at, nil
}

func stepped(before, after []byte, r uint32) bool {
	return le64(before) != le64(after) && le32(after) == le32(before[4:]) && le32(after)+le32(after[4:]) == r
}
