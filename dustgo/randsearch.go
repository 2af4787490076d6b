//go:build wasip1 || (linux && amd64)

package dustgo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"
)

// The search for the Go runtime's random state in the M, shared by every
// platform whose snapshot Dust reseeds (wasip1: randstate_wasip1.go;
// linux/amd64: linux.go). Only the shape of internal/chacha8rand.State and
// the step of runtime.cheaprand (cheapStep, per architecture) are assumed,
// and each is checked against further draws.

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
// grow, and reading past its end is harmless: the M searched is m0 (the
// search runs in init, where the main goroutine is locked to it), a
// static variable well inside the program's data.
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
	// cheapSize is runtime.cheaprand's state, a uint64 in the M.
	cheapSize = 8
)

// scratch holds the M's bytes before a draw. It is static so that the
// search does not allocate: an allocation can draw from cheaprand
// (memory-profile sampling) between the copy and the draw watched.
var scratch [mWindow]byte

// locateRandState returns the M and the offsets in it of the states of
// runtime.rand and runtime.cheaprand.
func locateRandState() (mp unsafe.Pointer, chacha, cheap int, err error) {
	mp = runtimeGetm()
	if mp == nil {
		return nil, 0, 0, errors.New("no M")
	}
	m := (*[mWindow]byte)(mp)
	c, err := findChacha8(m)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("runtime.rand: %w", err)
	}
	p, err := findCheaprand(m)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("runtime.cheaprand: %w", err)
	}
	if p < c+chachaSize && c < p+8 {
		return nil, 0, 0, errors.New("runtime.rand and runtime.cheaprand were found in the same bytes")
	}
	return mp, c, p, nil
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
// steps (cheapStepped says what a step is on this architecture).
func findCheaprand(m *[mWindow]byte) (int, error) {
	scratch = *m
	r := runtimeCheaprand()
	at := -1
	for o := 0; o+8 <= mWindow; o += 8 {
		if cheapStepped(scratch[o:o+8], m[o:o+8], r) {
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
		if r := runtimeCheaprand(); !cheapStepped(scratch[:8], m[at:at+8], r) {
			return 0, errors.New("a draw did not step the candidate state")
		}
	}
	return at, nil
}
