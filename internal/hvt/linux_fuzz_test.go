package hvt

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/dust-run/dust/internal/machine"
)

// hostileLinuxELFs are Linux programs a loader must refuse or place
// safely: dynamically linked ones (PT_INTERP, DT_NEEDED), code that
// relocates itself (DT_TEXTREL, DF_TEXTREL), overlapping segments, huge
// sizes, program headers outside the file, static PIEs with absurd
// alignments or addresses that wrap when biased, a PT_PHDR that points
// nowhere, a dynamic section without its end. They seed FuzzParseImage
// (testdata/fuzz/FuzzParseImage, written from this list) and
// FuzzLinuxImage.
func hostileLinuxELFs() map[string][]byte {
	le := binary.LittleEndian
	linux := func(mut func(h []byte, p []testPhdr) []testPhdr) []byte {
		return synthELF(func(h []byte, p []testPhdr) []testPhdr {
			clear(h[0x200:0x220]) // no Dust note: a Linux program
			return mut(h, p[:2])
		})
	}
	dyn := func(entries ...uint64) func(h []byte, p []testPhdr) []testPhdr {
		return func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint16(h[16:], etDyn)
			for i, v := range entries {
				le.PutUint64(h[0x2800+8*i:], v)
			}
			return append(p, testPhdr{typ: ptDynamic, flags: pfR, off: 0x2800, vaddr: 0x102800, filesz: uint64(8 * len(entries)), memsz: uint64(8 * len(entries)), al: 8})
		}
	}
	return map[string][]byte{
		"interp": linux(func(h []byte, p []testPhdr) []testPhdr {
			copy(h[0x2400:], "/lib64/ld-linux-x86-64.so.2\x00")
			return append([]testPhdr{{typ: ptInterp, flags: pfR, off: 0x2400, vaddr: 0x102400, filesz: 28, memsz: 28, al: 1}}, p...)
		}),
		"interp-unterminated-past-eof": linux(func(h []byte, p []testPhdr) []testPhdr {
			return append(p, testPhdr{typ: ptInterp, off: 0x2ff0, filesz: 0x100})
		}),
		"needed":         linux(dyn(dtNeeded, 1, dtNull, 0)),
		"textrel":        linux(dyn(dtTextrel, 0, dtNull, 0)),
		"flags-textrel":  linux(dyn(dtFlags, dfTextrel, dtNull, 0)),
		"dynamic-no-end": linux(dyn(0x6ffffef5, 0x1234, 7, 8)),
		"dynamic-odd-size": linux(func(h []byte, p []testPhdr) []testPhdr {
			p = dyn(dtNull, 0)(h, p)
			p[len(p)-1].filesz = 13
			return p
		}),
		"overlap": linux(func(h []byte, p []testPhdr) []testPhdr {
			p[1].vaddr, p[1].off = 0x101000, 0x1000
			return p
		}),
		"overlap-pie": linux(func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint16(h[16:], etDyn)
			p[1].vaddr = 0x100000 + 0x1000 - 0x10
			return p
		}),
		"huge-memsz": linux(func(h []byte, p []testPhdr) []testPhdr {
			p[1].memsz = 1 << 62
			return p
		}),
		"wrapping-memsz": linux(func(h []byte, p []testPhdr) []testPhdr {
			p[1].memsz = ^uint64(0) - 0xfff
			return p
		}),
		"phdrs-outside-file": linux(func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint64(h[32:], 0x2fc8)
			return p
		}),
		"phdrs-wrapping": linux(func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint64(h[32:], ^uint64(0)-0x37)
			return p
		}),
		"pie-absurd-align": linux(func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint16(h[16:], etDyn)
			p[0].al, p[1].al = 1<<40, 1<<40
			return p
		}),
		"pie-2m-align": linux(func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint16(h[16:], etDyn)
			p[0].al, p[1].al = largePage, largePage
			return p
		}),
		"pie-high-vaddr": linux(func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint16(h[16:], etDyn)
			le.PutUint64(h[24:], 0xffffffffffe01000)
			p[0].vaddr, p[1].vaddr = 0xffffffffffe01000, 0xffffffffffe02000
			return p
		}),
		"pie-wrapping-span": linux(func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint16(h[16:], etDyn)
			le.PutUint64(h[24:], 0xfffffffffff01000)
			p[0].vaddr = 0xfffffffffff01000
			p[1].vaddr, p[1].memsz = 0x2000, 0x5000
			return p
		}),
		"pie-zero-vaddr": linux(func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint16(h[16:], etDyn)
			le.PutUint64(h[24:], 0x1000)
			p[0].vaddr, p[1].vaddr = 0x1000, 0x2000
			return p
		}),
		"phdr-points-nowhere": linux(func(h []byte, p []testPhdr) []testPhdr {
			return append([]testPhdr{{typ: ptPhdr, flags: pfR, off: 0x40, vaddr: 0x7fff0000, filesz: 0xa8, memsz: 0xa8, al: 8}}, p...)
		}),
		"tls": linux(func(h []byte, p []testPhdr) []testPhdr {
			return append(p, testPhdr{typ: ptTLS, flags: pfR, off: 0x2000, vaddr: 0x102000, filesz: 4, memsz: 1 << 40, al: 64})
		}),
		"shlib": linux(func(h []byte, p []testPhdr) []testPhdr {
			return append(p, testPhdr{typ: ptShlib})
		}),
		"entry-in-data": linux(func(h []byte, p []testPhdr) []testPhdr {
			le.PutUint64(h[24:], 0x102000)
			return p
		}),
		"many-zero-phdrs": linux(func(h []byte, p []testPhdr) []testPhdr {
			return append(p, make([]testPhdr, 40)...)
		}),
	}
}

// FuzzLinuxImage: whatever parses as a Linux program lays out in any
// memory size without panicking, keeps its segments out of the monitor's
// pages, maps nothing both writable and executable, enters in code, and
// points AT_PHDR at memory the program can read.
func FuzzLinuxImage(f *testing.F) {
	for _, b := range hostileLinuxELFs() {
		f.Add(b, uint8(8))
	}
	f.Fuzz(func(t *testing.T, b []byte, mib uint8) {
		if !isLinuxProgram(b) {
			return
		}
		img, err := parseLinuxELF(b)
		if err != nil {
			if !errors.Is(err, machine.ErrBadImage) {
				t.Fatalf("error %v does not wrap ErrBadImage", err)
			}
			return
		}
		entryOK := false
		for _, s := range img.segments {
			if s.vaddr < imageBase || s.vaddr+s.memsz > MaxMemory || s.vaddr+s.memsz < s.vaddr {
				t.Fatalf("segment [%#x,+%#x) escapes guest memory", s.vaddr, s.memsz)
			}
			if s.flags&pfW != 0 && s.flags&pfX != 0 {
				t.Fatalf("segment at %#x writable and executable", s.vaddr)
			}
			entryOK = entryOK || s.flags&pfX != 0 && img.entry >= s.vaddr && img.entry < s.vaddr+s.memsz
		}
		if !entryOK {
			t.Fatalf("entry %#x outside the code", img.entry)
		}
		mem := uint64(2+2*(mib%8)) << 20 // small: every page is checked
		l, err := buildLinuxLayout(img, mem)
		if err != nil {
			return
		}
		if l.heapStart < img.end || l.heapStart > l.heapEnd || l.guard+pageSize+l.stackSize != l.memSize {
			t.Fatalf("heap [%#x,%#x) guard %#x stack %d in %d bytes, image ends at %#x", l.heapStart, l.heapEnd, l.guard, l.stackSize, l.memSize, img.end)
		}
		for a := uint64(0); a < l.memSize; a += pageSize {
			p := l.perm(img, a)
			if p&pteRW != 0 && p&pteNX == 0 {
				t.Fatalf("%#x writable and executable", a)
			}
			if a < imageBase && a != linuxStubAddr && a != linuxPhdrAddr && a != warmAddr && a != vdsoAddr && a != vdsoDataAddr && p&pteUS != 0 {
				t.Fatalf("monitor page %#x user-accessible (%#x)", a, p)
			}
		}
		if p := l.perm(img, img.phdrAddr&^(pageSize-1)); p&pteUS == 0 || p == permNone {
			t.Fatalf("AT_PHDR %#x in a page the program cannot read (%#x)", img.phdrAddr, p)
		}
	})
}
