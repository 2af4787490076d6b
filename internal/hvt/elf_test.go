package hvt

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/machine"
)

// testPhdr describes one program header for synthELF.
type testPhdr struct {
	typ, flags                    uint32
	off, vaddr, filesz, memsz, al uint64
}

// synthELF builds a minimal Dust guest image by hand: an ELF header, the
// given program headers, a Dust note and some file content, so validator
// tests do not depend on a C toolchain.
func synthELF(mut func(h []byte, ph []testPhdr) []testPhdr) []byte {
	const noteOff, textOff, dataOff = 0x200, 0x1000, 0x2000
	b := make([]byte, 0x3000)
	le := binary.LittleEndian
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = elfClass64, elfData2LSB, evCurrent
	le.PutUint16(b[16:], etExec)
	le.PutUint16(b[18:], emX86_64)
	le.PutUint32(b[20:], evCurrent)
	le.PutUint64(b[24:], 0x101000) // entry
	le.PutUint64(b[32:], ehdrSize) // phoff
	le.PutUint16(b[52:], ehdrSize)
	le.PutUint16(b[54:], phdrSize)
	// The note: namesz 5 "Dust", descsz 8, version 1.
	n := b[noteOff:]
	le.PutUint32(n, 5)
	le.PutUint32(n[4:], 8)
	le.PutUint32(n[8:], noteType)
	copy(n[12:], "Dust\x00")
	le.PutUint32(n[20:], abiVersion)
	copy(b[textOff:], []byte{0xeb, 0xfe}) // jmp .
	copy(b[dataOff:], "data")
	ph := []testPhdr{
		{typ: ptLoad, flags: pfR | pfX, off: textOff, vaddr: 0x101000, filesz: 2, memsz: 2, al: 0x1000},
		{typ: ptLoad, flags: pfR | pfW, off: dataOff, vaddr: 0x102000, filesz: 4, memsz: 0x5000, al: 0x1000},
		{typ: ptNote, flags: pfR, off: noteOff, vaddr: 0x100200, filesz: 28, memsz: 28, al: 4},
	}
	if mut != nil {
		ph = mut(b, ph)
	}
	le.PutUint16(b[56:], uint16(len(ph)))
	for i, p := range ph {
		o := b[ehdrSize+i*phdrSize:]
		le.PutUint32(o, p.typ)
		le.PutUint32(o[4:], p.flags)
		le.PutUint64(o[8:], p.off)
		le.PutUint64(o[16:], p.vaddr)
		le.PutUint64(o[24:], p.vaddr)
		le.PutUint64(o[32:], p.filesz)
		le.PutUint64(o[40:], p.memsz)
		le.PutUint64(o[48:], p.al)
	}
	return b
}

func TestParseELFAcceptsValidImage(t *testing.T) {
	img, err := parseELF(synthELF(nil))
	if err != nil {
		t.Fatal(err)
	}
	if img.entry != 0x101000 || len(img.segments) != 2 || img.end != 0x107000 {
		t.Fatalf("entry %#x, %d segments, end %#x", img.entry, len(img.segments), img.end)
	}
}

func TestParseELFRejects(t *testing.T) {
	le := binary.LittleEndian
	cases := []struct {
		name string
		elf  []byte
		want string
	}{
		{"empty", nil, "shorter than an ELF header"},
		{"not ELF", append([]byte("MZ"), make([]byte, 100)...), "not an ELF file"},
		{"32-bit", synthELF(func(h []byte, p []testPhdr) []testPhdr { h[4] = 1; return p }), "class 1"},
		{"big-endian", synthELF(func(h []byte, p []testPhdr) []testPhdr { h[5] = 2; return p }), "data encoding"},
		{"shared object", synthELF(func(h []byte, p []testPhdr) []testPhdr { le.PutUint16(h[16:], 3); return p }), "want a static executable"},
		{"aarch64", synthELF(func(h []byte, p []testPhdr) []testPhdr { le.PutUint16(h[18:], 183); return p }), "machine 183"},
		{"phentsize", synthELF(func(h []byte, p []testPhdr) []testPhdr { le.PutUint16(h[54:], 32); return p }), "e_phentsize"},
		{"phdrs outside file", synthELF(func(h []byte, p []testPhdr) []testPhdr { le.PutUint64(h[32:], 0x2ff0); return p }), "outside the"},
		{"huge phoff", synthELF(func(h []byte, p []testPhdr) []testPhdr { le.PutUint64(h[32:], ^uint64(0)-8); return p }), "outside the"},
		{"no program headers", synthELF(func(h []byte, p []testPhdr) []testPhdr { return nil }), "0 program headers"},
		{"segment beyond file", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[0].filesz = 0x10000; return p }), "outside the"},
		{"wrapping file range", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[0].off = ^uint64(0); return p }), "outside the"},
		{"filesz > memsz", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[0].memsz = 1; return p }), "exceeds p_memsz"},
		{"below image base", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[0].vaddr = 0x2000; return p }), "monitor-owned"},
		{"over monitor pages", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[1].vaddr = 0x10000; return p }), "monitor-owned"},
		{"absurd size", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[1].memsz = 1 << 40; return p }), "beyond the largest guest memory"},
		{"wrapping segment", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[1].memsz = ^uint64(0) - 0x1000; return p }), "beyond the largest guest memory"},
		{"W+X", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[0].flags = pfR | pfW | pfX; return p }), "both writable and executable"},
		{"bad align", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[0].al = 3; return p }), "power of two"},
		{"vaddr/offset mismatch", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[0].vaddr = 0x101800; return p }), "differ modulo"},
		{"overlap", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[1].vaddr = 0x101000; return p }), "overlap"},
		{"shared file bytes", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[1].off = 0x1000; return p }), "may be loaded once"},
		{"entry outside code", synthELF(func(h []byte, p []testPhdr) []testPhdr { le.PutUint64(h[24:], 0x102000); return p }), "not inside an executable segment"},
		{"dynamic", synthELF(func(h []byte, p []testPhdr) []testPhdr {
			return append(p, testPhdr{typ: ptInterp, off: 0x200, filesz: 4})
		}), "dynamically linked"},
		{"TLS", synthELF(func(h []byte, p []testPhdr) []testPhdr { return append(p, testPhdr{typ: ptTLS, memsz: 64}) }), "thread-local"},
		{"no note", synthELF(func(h []byte, p []testPhdr) []testPhdr { return p[:2] }), "no Dust ABI note"},
		{"note overrun", synthELF(func(h []byte, p []testPhdr) []testPhdr { le.PutUint32(h[0x204:], 4096); return p }), "overruns"},
		{"wrong ABI version", synthELF(func(h []byte, p []testPhdr) []testPhdr { le.PutUint32(h[0x214:], 7); return p }), "ABI version 7"},
		{"solo5", synthELF(func(h []byte, p []testPhdr) []testPhdr {
			copy(h[0x20c:], "Solo5\x00")
			le.PutUint32(h[0x200:], 6)
			return p
		}), "Solo5"},
		{"no load", synthELF(func(h []byte, p []testPhdr) []testPhdr { return p[2:] }), "no loadable segment"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseELF(c.elf)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, machine.ErrBadImage) {
				t.Errorf("error %v does not wrap ErrBadImage", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestSolo5ImageIsRecognised(t *testing.T) {
	le := binary.LittleEndian
	b := synthELF(func(h []byte, p []testPhdr) []testPhdr {
		copy(h[0x20c:], "Solo5\x00")
		le.PutUint32(h[0x200:], 6)
		return p
	})
	if _, err := parseELF(b); !errors.Is(err, ErrSolo5) {
		t.Fatalf("got %v, want ErrSolo5", err)
	}
}

// FuzzParseELF: the validator never panics, and whatever it accepts obeys
// the invariants the loader relies on.
func FuzzParseELF(f *testing.F) {
	f.Add(synthELF(nil))
	f.Add(synthELF(func(h []byte, p []testPhdr) []testPhdr { p[1].memsz = 1 << 30; return p }))
	f.Add(synthELF(func(h []byte, p []testPhdr) []testPhdr {
		return append(p, testPhdr{typ: ptNote, off: 0x200, filesz: 12})
	}))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := parseELF(b)
		if err != nil {
			if !errors.Is(err, machine.ErrBadImage) {
				t.Fatalf("error %v does not wrap ErrBadImage", err)
			}
			return
		}
		exec := false
		var prevEnd uint64
		for _, s := range img.segments {
			if s.vaddr < imageBase || s.vaddr+s.memsz > MaxMemory || s.vaddr+s.memsz < s.vaddr {
				t.Fatalf("segment [%#x,+%#x) escapes guest memory", s.vaddr, s.memsz)
			}
			if uint64(len(s.data)) > s.memsz {
				t.Fatalf("segment data longer than memsz")
			}
			if s.flags&pfW != 0 && s.flags&pfX != 0 {
				t.Fatal("W+X accepted")
			}
			if s.vaddr < prevEnd {
				t.Fatal("overlapping segments accepted")
			}
			for _, o := range img.segments {
				if o.vaddr != s.vaddr && len(s.data) > 0 && len(o.data) > 0 && s.off < o.off+uint64(len(o.data)) && o.off < s.off+uint64(len(s.data)) {
					t.Fatalf("segments at %#x and %#x load the same file bytes", s.vaddr, o.vaddr)
				}
			}
			prevEnd = s.vaddr + s.memsz
			if s.flags&pfX != 0 && img.entry >= s.vaddr && img.entry < s.vaddr+s.memsz {
				exec = true
			}
		}
		if !exec {
			t.Fatal("entry outside executable segments accepted")
		}
		// Layout must either refuse it or keep it clear of monitor pages.
		if l, err := buildLayout(img, 16<<20, 0); err == nil && l.heapStart < imageBase {
			t.Fatal("heap below image base")
		}
	})
}
