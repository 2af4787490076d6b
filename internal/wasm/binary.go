package wasm

import (
	"bytes"
	"errors"
	"fmt"
)

// This file reads and rewrites WebAssembly binaries (the core module
// format, version 1) as far as building a snapshot needs: the section
// framing, and the import, memory, global, export, start, data and data
// count sections. Every other section, custom ones included, is carried
// over byte for byte. The input is untrusted (an app's upload), so every
// read is bounds-checked and a malformed binary is an error, never a
// panic.

// Section ids, in the binary format's numbering.
const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secTable     = 4
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secElement   = 9
	secCode      = 10
	secData      = 11
	secDataCount = 12
	secTag       = 13
)

// sectionRank is the position a non-custom section must take in a module:
// the order is fixed by the spec and is not the order of the ids (data
// count comes before code, tags before globals).
var sectionRank = map[byte]int{
	secType: 1, secImport: 2, secFunction: 3, secTable: 4, secMemory: 5,
	secTag: 6, secGlobal: 7, secExport: 8, secStart: 9, secElement: 10,
	secDataCount: 11, secCode: 12, secData: 13,
}

// External kinds of imports and exports.
const (
	kindFunc   = 0
	kindTable  = 1
	kindMemory = 2
	kindGlobal = 3
	kindTag    = 4
)

// Value types a global can have.
const (
	valI32  = 0x7f
	valI64  = 0x7e
	valF32  = 0x7d
	valF64  = 0x7c
	valV128 = 0x7b
)

var wasmHeader = []byte("\x00asm\x01\x00\x00\x00")

var errMalformed = errors.New("malformed wasm binary")

// maxCustomSections bounds the sections a binary may have: the others
// come at most once each, while empty custom sections take two bytes, and
// each costs a decoder (ours and wazero's) a few dozen bytes. Toolchains
// write a handful (name, producers, target_features, DWARF's).
const maxCustomSections = 1000

// binModule is a module split into sections. Section bodies alias the
// parsed input until replaced.
type binModule struct {
	sections []binSection
}

type binSection struct {
	id   byte
	body []byte
	// size is the body's length as the input encoded it: linkers pad
	// it to a fixed width, and keeping it makes an untouched section
	// come out byte for byte as it went in.
	size []byte
}

// parseBinary splits b into sections, checking only the framing.
func parseBinary(b []byte) (*binModule, error) {
	if !bytes.HasPrefix(b, wasmHeader) {
		return nil, fmt.Errorf("%w: not a version 1 core module", errMalformed)
	}
	r := &reader{b: b, off: len(wasmHeader)}
	m := &binModule{}
	last, customs := 0, 0
	for r.off < len(b) {
		id := r.byte()
		at := r.off
		size := r.u32()
		sizeLEB := r.b[at:r.off:r.off]
		body := r.bytes(size)
		if r.err != nil {
			return nil, r.err
		}
		if id == secCustom {
			if customs++; customs > maxCustomSections {
				return nil, fmt.Errorf("%w: more than %d custom sections", errMalformed, maxCustomSections)
			}
		} else {
			rank, ok := sectionRank[id]
			if !ok {
				return nil, fmt.Errorf("%w: unknown section id %d", errMalformed, id)
			}
			if rank <= last {
				return nil, fmt.Errorf("%w: section %d out of order or repeated", errMalformed, id)
			}
			last = rank
		}
		m.sections = append(m.sections, binSection{id: id, body: body, size: sizeLEB})
	}
	return m, nil
}

// encode is the inverse of parseBinary.
func (m *binModule) encode() []byte {
	n := len(wasmHeader)
	for _, s := range m.sections {
		n += 1 + 5 + len(s.body)
	}
	out := make([]byte, 0, n)
	out = append(out, wasmHeader...)
	for _, s := range m.sections {
		out = append(out, s.id)
		if s.size != nil {
			out = append(out, s.size...)
		} else {
			out = appendU32(out, uint32(len(s.body)))
		}
		out = append(out, s.body...)
	}
	return out
}

// section returns the body of the (only) section with id, if present.
func (m *binModule) section(id byte) ([]byte, bool) {
	for _, s := range m.sections {
		if s.id == id {
			return s.body, true
		}
	}
	return nil, false
}

// setSection replaces the section with id, or inserts it where the
// section order puts it. id must not be secCustom.
func (m *binModule) setSection(id byte, body []byte) {
	for i := range m.sections {
		if m.sections[i].id == id {
			m.sections[i] = binSection{id: id, body: body}
			return
		}
	}
	rank := sectionRank[id]
	at := len(m.sections)
	for i, s := range m.sections {
		if s.id != secCustom && sectionRank[s.id] > rank {
			at = i
			break
		}
	}
	m.sections = append(m.sections[:at], append([]binSection{{id: id, body: body}}, m.sections[at:]...)...)
}

// clone copies the section list so that setSection on the copy leaves m
// alone; bodies are shared because they are never written in place.
func (m *binModule) clone() *binModule {
	return &binModule{sections: append([]binSection(nil), m.sections...)}
}

// importCounts are how many of each kind a module imports: imported
// globals and memories come first in their index spaces.
type importCounts struct{ funcs, tables, memories, globals, tags int }

func (m *binModule) imports() (importCounts, error) {
	var c importCounts
	body, ok := m.section(secImport)
	if !ok {
		return c, nil
	}
	r := &reader{b: body}
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.name()
		r.name()
		switch r.byte() {
		case kindFunc:
			r.u32()
			c.funcs++
		case kindTable:
			r.byte()
			r.limits()
			c.tables++
		case kindMemory:
			r.limits()
			c.memories++
		case kindGlobal:
			r.byte()
			r.byte()
			c.globals++
		case kindTag:
			r.byte()
			r.u32()
			c.tags++
		default:
			r.fail("unknown import kind")
		}
	}
	return c, r.end()
}

type binExport struct {
	name string
	kind byte
	idx  uint32
}

func (m *binModule) exports() ([]binExport, error) {
	body, ok := m.section(secExport)
	if !ok {
		return nil, nil
	}
	r := &reader{b: body}
	n := r.u32()
	var out []binExport
	for i := uint32(0); i < n && r.err == nil; i++ {
		e := binExport{name: r.name(), kind: r.byte(), idx: r.u32()}
		out = append(out, e)
	}
	return out, r.end()
}

func encodeExports(es []binExport) []byte {
	out := appendU32(nil, uint32(len(es)))
	for _, e := range es {
		out = appendU32(out, uint32(len(e.name)))
		out = append(out, e.name...)
		out = append(out, e.kind)
		out = appendU32(out, e.idx)
	}
	return out
}

// binGlobal is a global defined by the module (not imported).
type binGlobal struct {
	typ     byte
	mutable bool
	init    []byte // constant expression, with its end opcode
}

func (m *binModule) globals() ([]binGlobal, error) {
	body, ok := m.section(secGlobal)
	if !ok {
		return nil, nil
	}
	r := &reader{b: body}
	n := r.u32()
	var out []binGlobal
	for i := uint32(0); i < n && r.err == nil; i++ {
		g := binGlobal{typ: r.byte()}
		switch r.byte() {
		case 0:
		case 1:
			g.mutable = true
		default:
			r.fail("bad global mutability")
		}
		g.init = r.constExpr()
		out = append(out, g)
	}
	return out, r.end()
}

func encodeGlobals(gs []binGlobal) []byte {
	out := appendU32(nil, uint32(len(gs)))
	for _, g := range gs {
		out = append(out, g.typ)
		if g.mutable {
			out = append(out, 1)
		} else {
			out = append(out, 0)
		}
		out = append(out, g.init...)
	}
	return out
}

// constInit is the constant expression that sets a global of typ to the
// raw bits v, as wazero's api.Global reports them.
func constInit(typ byte, v uint64) ([]byte, error) {
	var out []byte
	switch typ {
	case valI32:
		out = appendS64(append(out, 0x41), int64(int32(uint32(v))))
	case valI64:
		out = appendS64(append(out, 0x42), int64(v))
	case valF32:
		out = append(out, 0x43, byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
	case valF64:
		out = append(out, 0x44)
		for i := 0; i < 8; i++ {
			out = append(out, byte(v>>(8*i)))
		}
	default:
		// v128 and reference globals cannot be read back as one uint64.
		return nil, fmt.Errorf("global of type 0x%x cannot be captured", typ)
	}
	return append(out, 0x0b), nil
}

// binLimits are a memory's limits in pages.
type binLimits struct {
	min, max uint32
	hasMax   bool
}

func (m *binModule) memories() ([]binLimits, error) {
	body, ok := m.section(secMemory)
	if !ok {
		return nil, nil
	}
	r := &reader{b: body}
	n := r.u32()
	var out []binLimits
	for i := uint32(0); i < n && r.err == nil; i++ {
		out = append(out, r.limits())
	}
	return out, r.end()
}

func encodeMemories(ls []binLimits) []byte {
	out := appendU32(nil, uint32(len(ls)))
	for _, l := range ls {
		if l.hasMax {
			out = appendU32(appendU32(append(out, 1), l.min), l.max)
		} else {
			out = appendU32(append(out, 0), l.min)
		}
	}
	return out
}

// dataSegments counts the data section's segments and how many of them
// are passive (used by memory.init, so not replaceable by a memory image).
func (m *binModule) dataSegments() (total, passive int, err error) {
	body, ok := m.section(secData)
	if !ok {
		return 0, 0, nil
	}
	r := &reader{b: body}
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		switch r.u32() {
		case 0:
			r.constExpr()
		case 1:
			passive++
		case 2:
			r.u32()
			r.constExpr()
		default:
			r.fail("bad data segment kind")
		}
		r.bytes(r.u32())
		total++
	}
	return total, passive, r.end()
}

// reader decodes the binary format. The first error sticks: later reads
// return zero values, so decoders check r.err once, at the end.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(why string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s at byte %d", errMalformed, why, r.off)
	}
}

func (r *reader) byte() byte {
	if r.err != nil || r.off >= len(r.b) {
		r.fail("unexpected end")
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

// uleb reads an unsigned LEB128 number of at most bits bits.
func (r *reader) uleb(bits uint) uint64 {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		if shift >= bits || (bits-shift < 7 && uint64(c&0x7f)>>(bits-shift) != 0) {
			r.fail("integer too large")
			return 0
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v
		}
	}
}

func (r *reader) u32() uint32 { return uint32(r.uleb(32)) }

// sleb skips a signed LEB128 number of at most bits bits; constant
// expressions are copied verbatim, so their values are never needed.
func (r *reader) sleb(bits uint) {
	for n := uint(0); ; n += 7 {
		c := r.byte()
		if r.err != nil {
			return
		}
		if n >= bits {
			r.fail("integer too large")
			return
		}
		if c&0x80 == 0 {
			return
		}
	}
}

func (r *reader) bytes(n uint32) []byte {
	if r.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(r.b)-r.off) {
		r.fail("length past the end")
		return nil
	}
	b := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return b
}

func (r *reader) name() string { return string(r.bytes(r.u32())) }

func (r *reader) limits() binLimits {
	var l binLimits
	switch r.byte() {
	case 0:
		l.min = r.u32()
	case 1:
		l.min, l.max, l.hasMax = r.u32(), r.u32(), true
	default:
		// Shared (threads) and 64-bit memories: not what Dust runs.
		r.fail("unsupported limits (shared or 64-bit memory)")
	}
	return l
}

// constExpr returns a constant expression including its end opcode.
func (r *reader) constExpr() []byte {
	start := r.off
	for r.err == nil {
		switch op := r.byte(); op {
		case 0x0b:
			return r.b[start:r.off:r.off]
		case 0x41:
			r.sleb(32)
		case 0x42:
			r.sleb(64)
		case 0x43:
			r.bytes(4)
		case 0x44:
			r.bytes(8)
		case 0x23, 0xd2: // global.get, ref.func
			r.u32()
		case 0xd0: // ref.null
			r.byte()
		case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: // extended constants
		case 0xfd:
			if r.u32() != 12 {
				r.fail("unsupported vector instruction in a constant expression")
			}
			r.bytes(16)
		default:
			r.fail(fmt.Sprintf("opcode 0x%x in a constant expression", op))
		}
	}
	return nil
}

// end checks that a section body was consumed exactly.
func (r *reader) end() error {
	if r.err == nil && r.off != len(r.b) {
		r.fail("trailing bytes in section")
	}
	return r.err
}

func appendU32(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendS64(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// checkCounts refuses a module whose vector counts claim more entries than
// the bytes that follow could hold (every entry takes at least one byte).
// A compiler may size its tables from such a count before noticing the
// lie: a 15-byte module claiming 800 million imports must not cost the
// host gigabytes at deploy. A wrong magic or version is left to the
// compiler, whose message (and the component hint) users know; a section
// running past the end is refused here for the same reason as a lying count.
func checkCounts(b []byte) error {
	if !bytes.HasPrefix(b, wasmHeader) {
		return nil
	}
	m, err := parseBinary(b)
	if err != nil {
		return err
	}
	for _, s := range m.sections {
		switch s.id {
		case secCustom:
			continue
		case secDataCount:
			r := &reader{b: s.body}
			if n := r.u32(); r.err == nil && int64(n) > int64(len(b)) {
				return fmt.Errorf("%w: data count %d exceeds the module's %d bytes", errMalformed, n, len(b))
			}
			continue
		}
		if s.id == secStart {
			continue
		}
		r := &reader{b: s.body}
		n := r.u32()
		if r.err == nil && int64(n) > int64(len(s.body)-r.off) {
			return fmt.Errorf("%w: section %d claims %d entries in %d bytes", errMalformed, s.id, n, len(s.body)-r.off)
		}
	}
	return nil
}
