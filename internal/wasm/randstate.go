package wasm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/tetratelabs/wazero/api"

	"github.com/dust-run/dust/internal/machine"
)

// A snapshot carries the random state its runtime seeded during start-up;
// replayed, it would make every request draw the same "random" numbers.
// A reactor that exports RandStateExport, a function () -> i32, reports
// where that state is: after _initialize the function returns the address
// of a descriptor in linear memory, and every request's instance gets
// fresh random bytes written over the regions it lists before ServeExport
// runs. Writing from the host runs no guest code per request, and the
// descriptor keeps the host free of any knowledge of one runtime's
// layout. Package dustgo exports it for Go (see dustgo/randstate.go).
//
// The descriptor is little-endian uint32s: version (randStateVersion),
// count, then count pairs of address and size. The function returns 0 if
// it could not locate the state, after saying why on stderr.
//
// A Go reactor without the export is refused: the Go runtime always
// seeds such state, so its snapshot would replay it. Other reactors
// without it are snapshotted as they are: a C library's rand or random
// state is the program's own business, seeded only if the program seeds
// it.
const RandStateExport = "dust_rand_state"

const (
	randStateVersion = 1
	// Bounds on what a descriptor may ask for: the Go runtime needs two
	// regions, 296 bytes in all; anything far beyond is a broken
	// descriptor, and each byte costs every request.
	maxRandRegions    = 16
	maxRandStateBytes = 4 << 10
)

// randRegion is part of linear memory that every request gets fresh
// random bytes in.
type randRegion struct{ addr, size uint32 }

// reseed fills the regions of mod's memory with fresh random bytes, in
// place. A region never comes out all zero: a zero state is the one fixed
// point of xorshift generators such as Go's cheaprand on wasm.
func reseed(mod api.Module, regions []randRegion) error {
	if len(regions) == 0 {
		return nil
	}
	mem := mod.Memory()
	if mem == nil {
		return errors.New("the instance has no memory")
	}
	for _, r := range regions {
		// A view of the instance's memory: no copy.
		b, ok := mem.Read(r.addr, r.size)
		if !ok {
			return fmt.Errorf("random state at %#x+%d is outside the memory", r.addr, r.size)
		}
		for {
			if _, err := rand.Read(b); err != nil {
				return err
			}
			if !allZero(b) {
				break
			}
		}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// randState calls the pre-initialised instance's RandStateExport and
// returns the regions its descriptor lists. why explains a failed call.
func (s *snapshotSource) randState(ctx context.Context, mod api.Module, why func(error) string) ([]randRegion, error) {
	f := mod.ExportedFunction(RandStateExport)
	if f == nil {
		if s.goRuntime {
			return nil, fmt.Errorf("%w: this Go reactor does not say where the Go runtime keeps its random state (it exports no %s function), and every request started from its snapshot would replay the same math/rand values and map hash seeds; build it with package github.com/dust-run/dust/dustgo at this version", machine.ErrBadImage, RandStateExport)
		}
		return nil, nil
	}
	d := f.Definition()
	if len(d.ParamTypes()) != 0 || len(d.ResultTypes()) != 1 || d.ResultTypes()[0] != api.ValueTypeI32 {
		return nil, fmt.Errorf("%w: %s has signature %s, want () -> i32", machine.ErrBadImage, RandStateExport, d.DebugName())
	}
	res, err := f.Call(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: locating the random state (%s): %s", machine.ErrBadImage, RandStateExport, why(err))
	}
	addr := uint32(res[0])
	if addr == 0 {
		return nil, fmt.Errorf("%w: the reactor could not locate its runtime's random state, so every request would replay it: %s", machine.ErrBadImage, why(nil))
	}
	regions, err := readRandState(mod.Memory(), addr)
	if err != nil {
		return nil, fmt.Errorf("%w: the random state descriptor at %#x: %v", machine.ErrBadImage, addr, err)
	}
	return regions, nil
}

func readRandState(mem api.Memory, addr uint32) ([]randRegion, error) {
	word := func(i uint32) (uint32, error) {
		// In 64 bits: addr+4*i must not wrap round to the start of memory.
		at := uint64(addr) + 4*uint64(i)
		if at+4 > uint64(mem.Size()) {
			return 0, errors.New("it runs past the end of memory")
		}
		v, _ := mem.ReadUint32Le(uint32(at))
		return v, nil
	}
	version, err := word(0)
	if err != nil {
		return nil, err
	}
	if version != randStateVersion {
		return nil, fmt.Errorf("version %d, want %d", version, randStateVersion)
	}
	n, err := word(1)
	if err != nil {
		return nil, err
	}
	if n == 0 || n > maxRandRegions {
		return nil, fmt.Errorf("%d regions, want 1 to %d", n, maxRandRegions)
	}
	regions := make([]randRegion, 0, n)
	total := uint64(0)
	for i := range n {
		a, err := word(2 + 2*i)
		if err != nil {
			return nil, err
		}
		size, err := word(3 + 2*i)
		if err != nil {
			return nil, err
		}
		if total += uint64(size); size == 0 || total > maxRandStateBytes {
			return nil, fmt.Errorf("region %d: %d bytes, and at most %d in all", i, size, maxRandStateBytes)
		}
		if uint64(a)+uint64(size) > uint64(mem.Size()) {
			return nil, fmt.Errorf("region %d at %#x+%d is outside the %d-byte memory", i, a, size, mem.Size())
		}
		regions = append(regions, randRegion{a, size})
	}
	return regions, nil
}

// goProducer reports whether m was made by the Go toolchain: its linker
// writes a producers section naming the language, a go:buildid section,
// and a fixed set of globals (its registers: SP, CTXT, g, RET0-3, PAUSE).
// The globals stay when custom sections are stripped.
func goProducer(m *binModule) bool {
	for _, s := range m.sections {
		if s.id != secCustom {
			continue
		}
		r := &reader{b: s.body}
		switch r.name() {
		case "go:buildid":
			return true
		case "producers":
			if producersLanguage(r, "Go") {
				return true
			}
		}
	}
	gs, err := m.globals()
	if err != nil {
		return false
	}
	regs := []byte{valI32, valI64, valI64, valI64, valI64, valI64, valI64, valI32}
	if len(gs) != len(regs) {
		return false
	}
	for i, g := range gs {
		if g.typ != regs[i] || !g.mutable {
			return false
		}
	}
	return true
}

// producersLanguage reports whether a producers section (after its name)
// lists lang among its languages.
func producersLanguage(r *reader, lang string) bool {
	fields := r.u32()
	for i := uint32(0); i < fields && r.err == nil; i++ {
		field := r.name()
		values := r.u32()
		for j := uint32(0); j < values && r.err == nil; j++ {
			name, _ := r.name(), r.name()
			if field == "language" && name == lang && r.err == nil {
				return true
			}
		}
	}
	return false
}
