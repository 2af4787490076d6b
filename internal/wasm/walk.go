package wasm

import "errors"

// walkBody steps through a function body's instructions (after the local
// declarations) and returns the deepest nesting of blocks in it. It knows
// the instructions of the WebAssembly 2.0 core (what wazero enables by
// default: MVP, sign extension, saturating truncation, multi-value, bulk
// memory, reference types, SIMD) and, so that its count does not stop
// short of wazero's decoder, the experimental ones wazero can be told to
// accept (tail calls, exception handling, typed function references). At
// an opcode it does not know it stops and reports complete false: wazero
// refuses such a body at that very instruction, so what follows it never
// reaches wazero's validator or compiler. The walk reads each byte once
// and allocates nothing.
func walkBody(b []byte) (depth int, complete bool, err error) {
	w := walker{b: b}
	level := 0 // blocks open inside the body
	for w.i < len(b) {
		op := b[w.i]
		w.i++
		switch {
		case op == 0x02 || op == 0x03 || op == 0x04: // block, loop, if
			w.blockType()
			level++
			depth = max(depth, level)
		case op == 0x1f: // try_table
			w.blockType()
			n := w.u32()
			for j := uint32(0); j < n && w.ok(); j++ {
				if w.byte() < 2 { // catch, catch_ref: a tag first
					w.u32()
				}
				w.u32()
			}
			level++
			depth = max(depth, level)
		case op == 0x0b: // end
			if level == 0 { // of the body
				if w.i != len(b) {
					return depth, true, errors.New("bytes after the end of the body")
				}
				return depth, true, nil
			}
			level--
		case op <= 0x01 || op == 0x05 || op == 0x0a || op == 0x0f || op == 0x1a || op == 0x1b ||
			(op >= 0x45 && op <= 0xc4) || op == 0xd1 || op == 0xd4:
			// No immediates: unreachable, nop, else, throw_ref, return,
			// drop, select, the numeric instructions, ref.is_null,
			// ref.as_non_null.
		case op == 0x0c || op == 0x0d || op == 0x08 || op == 0x10 || op == 0x12 || op == 0x14 || op == 0x15 ||
			(op >= 0x20 && op <= 0x26) || op == 0xd2 || op == 0xd5 || op == 0xd6:
			// One index: br, br_if, throw, call, return_call, call_ref,
			// return_call_ref, local.*, global.*, table.get/set, ref.func,
			// br_on_null, br_on_non_null.
			w.u32()
		case op == 0x11 || op == 0x13: // call_indirect, return_call_indirect
			w.u32()
			w.u32()
		case op == 0x0e: // br_table
			n := w.u32()
			for j := uint32(0); j < n && w.ok(); j++ {
				w.u32()
			}
			w.u32()
		case op == 0x1c: // select with types
			n := w.u32()
			for j := uint32(0); j < n && w.ok(); j++ {
				w.valType()
			}
		case op >= 0x28 && op <= 0x3e: // loads and stores
			w.memArg()
		case op == 0x3f || op == 0x40: // memory.size, memory.grow
			w.u32()
		case op == 0x41:
			w.leb(32)
		case op == 0x42:
			w.leb(64)
		case op == 0x43:
			w.skip(4)
		case op == 0x44:
			w.skip(8)
		case op == 0xd0: // ref.null
			w.leb(33)
		case op == 0xfc:
			switch sub := w.u32(); {
			case sub <= 7: // saturating truncations
			case sub == 8: // memory.init
				w.u32()
				w.u32()
			case sub == 9 || sub == 13 || (sub >= 15 && sub <= 17): // data.drop, elem.drop, table.grow/size/fill
				w.u32()
			case sub == 10 || sub == 12 || sub == 14: // memory.copy, table.init, table.copy
				w.u32()
				w.u32()
			case sub == 11: // memory.fill
				w.u32()
			default:
				return depth, false, w.err
			}
		case op == 0xfd:
			switch sub := w.u32(); {
			case sub <= 0x0b || sub == 0x5c || sub == 0x5d: // v128 loads and stores
				w.memArg()
			case sub == 0x0c || sub == 0x0d: // v128.const, i8x16.shuffle
				w.skip(16)
			case sub >= 0x15 && sub <= 0x22: // lane extraction and replacement
				w.skip(1)
			case sub >= 0x54 && sub <= 0x5b: // lane loads and stores
				w.memArg()
				w.skip(1)
			case sub <= 0xff:
				// The other vector instructions have no immediates.
			default:
				return depth, false, w.err
			}
		default:
			// Threads (0xfe), legacy exception handling, garbage
			// collection: wazero refuses them with the features Dust runs.
			return depth, false, w.err
		}
		if w.err != nil {
			return depth, true, w.err
		}
	}
	return depth, true, errors.New("function body without its end")
}

// walker reads immediates; like reader, its first error sticks, but its
// fast path is a byte compare, as it sees every byte of every body.
type walker struct {
	b   []byte
	i   int
	err error
}

var errTruncated = errors.New("instruction runs past the end of the body")

func (w *walker) ok() bool { return w.err == nil }

func (w *walker) byte() byte {
	if w.i >= len(w.b) {
		w.err = errTruncated
		return 0
	}
	c := w.b[w.i]
	w.i++
	return c
}

func (w *walker) skip(n int) {
	if len(w.b)-w.i < n {
		w.err = errTruncated
		w.i = len(w.b)
		return
	}
	w.i += n
}

// leb skips a LEB128 number of at most bits bits, signed or not: the
// walker needs only its length.
func (w *walker) leb(bits int) {
	for n := 0; ; n += 7 {
		if w.i >= len(w.b) {
			w.err = errTruncated
			return
		}
		c := w.b[w.i]
		w.i++
		if c&0x80 == 0 {
			return
		}
		if n+7 >= bits {
			w.err = errors.New("integer too large")
			return
		}
	}
}

func (w *walker) u32() uint32 {
	var v uint32
	for shift := 0; ; shift += 7 {
		if w.i >= len(w.b) {
			w.err = errTruncated
			return 0
		}
		c := w.b[w.i]
		w.i++
		v |= uint32(c&0x7f) << shift
		if c&0x80 == 0 {
			return v
		}
		if shift >= 28 {
			w.err = errors.New("integer too large")
			return 0
		}
	}
}

func (w *walker) memArg() {
	w.u32()   // alignment
	w.leb(64) // offset
}

func (w *walker) valType() {
	if c := w.byte(); c == 0x63 || c == 0x64 {
		w.leb(33)
	}
}

// blockType skips a block type: 0x40, a value type, or a type index (a
// positive s33).
func (w *walker) blockType() {
	if w.i >= len(w.b) {
		w.err = errTruncated
		return
	}
	switch c := w.b[w.i]; {
	case c == 0x63 || c == 0x64:
		w.i++
		w.leb(33)
	case c == 0x40 || c >= 0x69 && c <= 0x7f: // empty, or a value type
		w.i++
	default:
		w.leb(33)
	}
}
