package hvt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/dust-run/dust/internal/machine"
)

// ELF constants used by the validator (from the System V gABI).
const (
	elfClass64   = 2
	elfData2LSB  = 1
	evCurrent    = 1
	etExec       = 2
	etDyn        = 3
	emX86_64     = 62
	ehdrSize     = 64
	phdrSize     = 56
	ptLoad       = 1
	ptDynamic    = 2
	ptInterp     = 3
	ptNote       = 4
	ptShlib      = 5
	ptPhdr       = 6
	ptTLS        = 7
	pfX          = 1
	pfW          = 2
	pfR          = 4
	maxPhdrs     = 64
	solo5Note    = "Solo5"
	maxImageSize = 256 << 20
)

// ErrSolo5 reports an image built for Solo5 hvt, which this monitor does
// not run yet (the ABI keeps room for it; see docs/abi.md).
var ErrSolo5 = errors.New("Solo5 hvt unikernels are not supported yet")

// ImageError says what is wrong with an image and where.
type ImageError struct {
	Where  string // e.g. "ELF header", "program header 3"
	Reason string
	Err    error // optional more specific sentinel (ErrSolo5)
}

func (e *ImageError) Error() string { return "hvt image: " + e.Where + ": " + e.Reason }

// Unwrap makes every ImageError an machine.ErrBadImage.
func (e *ImageError) Unwrap() []error {
	if e.Err != nil {
		return []error{machine.ErrBadImage, e.Err}
	}
	return []error{machine.ErrBadImage}
}

func badImage(where, format string, args ...any) error {
	return &ImageError{Where: where, Reason: fmt.Sprintf(format, args...)}
}

// segment is one PT_LOAD to place in guest memory.
type segment struct {
	vaddr, memsz uint64
	off          uint64 // p_offset
	data         []byte // p_filesz bytes of file content; nil once the template holds them
	flags        uint32
}

// elfImage is a validated Dust guest image.
type elfImage struct {
	entry    uint64
	segments []segment // sorted by vaddr, non-overlapping at page granularity
	end      uint64    // page-aligned end of the highest segment
	ready    bool      // a ready note: snapshot at the READY hypercall

	// A Linux program (linuxabi.go): its load bias (non-zero for a
	// static PIE, already added to entry and segments), and where its
	// program headers are in guest memory; phdrCopy holds them when the
	// monitor must place them itself.
	linux    bool
	bias     uint64
	phnum    uint64
	phdrAddr uint64
	phdrCopy []byte
	// goRuntime: the program carries a Go build-ID note, so it is a Go
	// program and needs linuxGoMinMemory.
	goRuntime bool
}

// parseELF validates a static x86-64 Dust guest strictly. It does not know
// the memory size yet; layout() checks that the image fits.
func parseELF(b []byte) (*elfImage, error) {
	entry, phoff, phnum, _, err := parseHeader(b, false)
	if err != nil {
		return nil, err
	}

	img := &elfImage{entry: entry}
	var dustNote, solo5 bool
	for i := 0; i < int(phnum); i++ {
		ph := readPhdr(b, phoff, i)
		where := fmt.Sprintf("program header %d", i)
		if ph.fileEnd > uint64(len(b)) {
			return nil, badImage(where, "file range [%#x, +%#x) lies outside the %d-byte file", ph.off, ph.filesz, len(b))
		}
		switch ph.typ {
		case ptInterp, ptDynamic, ptShlib:
			return nil, badImage(where, "type %d: dynamically linked images are not supported (link with -static)", ph.typ)
		case ptTLS:
			if ph.memsz != 0 {
				return nil, badImage(where, "thread-local storage (%d bytes) is not supported", ph.memsz)
			}
		case ptNote:
			d, s, r, err := scanNotes(b[ph.off:ph.fileEnd], where)
			if err != nil {
				return nil, err
			}
			dustNote = dustNote || d
			img.ready = img.ready || r
			solo5 = solo5 || s
		case ptLoad:
			if err := img.addLoad(b, where, ph); err != nil {
				return nil, err
			}
		}
	}
	if solo5 && !dustNote {
		return nil, &ImageError{Where: "notes", Reason: "this is a Solo5 unikernel (Solo5 ABI note found), not a Dust guest", Err: ErrSolo5}
	}
	if !dustNote {
		return nil, badImage("notes", "no Dust ABI note (.note.dust.abi, name %q, type %#x): was the image linked against libdust?", noteName, noteType)
	}
	if err := img.finish(); err != nil {
		return nil, err
	}
	return img, nil
}

// parseHeader checks the ELF header and the program header table's bounds.
// A Linux program may also be a static PIE (ET_DYN).
func parseHeader(b []byte, linux bool) (entry, phoff uint64, phnum uint16, typ uint16, err error) {
	le := binary.LittleEndian
	if len(b) < ehdrSize {
		return 0, 0, 0, 0, badImage("ELF header", "file is %d bytes, shorter than an ELF header (64)", len(b))
	}
	if len(b) > maxImageSize {
		return 0, 0, 0, 0, badImage("file", "%d bytes is larger than the %d MiB limit", len(b), maxImageSize>>20)
	}
	if string(b[:4]) != "\x7fELF" {
		return 0, 0, 0, 0, badImage("ELF header", "not an ELF file (magic %q)", b[:4])
	}
	if b[4] != elfClass64 {
		return 0, 0, 0, 0, badImage("ELF header", "class %d, want 64-bit (2)", b[4])
	}
	if b[5] != elfData2LSB {
		return 0, 0, 0, 0, badImage("ELF header", "data encoding %d, want little-endian (1)", b[5])
	}
	if b[6] != evCurrent || le.Uint32(b[20:]) != evCurrent {
		return 0, 0, 0, 0, badImage("ELF header", "version %d/%d, want 1", b[6], le.Uint32(b[20:]))
	}
	typ = le.Uint16(b[16:])
	switch {
	case linux && typ != etExec && typ != etDyn:
		return 0, 0, 0, 0, badImage("ELF header", "type %d, want a static executable (ET_EXEC, 2) or a static PIE (ET_DYN, 3)", typ)
	case !linux && typ != etExec:
		return 0, 0, 0, 0, badImage("ELF header", "type %d, want a static executable (ET_EXEC, 2); PIE and shared objects are not supported", typ)
	}
	if m := le.Uint16(b[18:]); m != emX86_64 {
		return 0, 0, 0, 0, badImage("ELF header", "machine %d, want x86-64 (62)", m)
	}
	if s := le.Uint16(b[52:]); s != ehdrSize {
		return 0, 0, 0, 0, badImage("ELF header", "e_ehsize %d, want 64", s)
	}
	entry = le.Uint64(b[24:])
	phoff = le.Uint64(b[32:])
	phentsize := le.Uint16(b[54:])
	phnum = le.Uint16(b[56:])
	if phentsize != phdrSize {
		return 0, 0, 0, 0, badImage("ELF header", "e_phentsize %d, want 56", phentsize)
	}
	if phnum == 0 || phnum > maxPhdrs {
		return 0, 0, 0, 0, badImage("ELF header", "%d program headers, want 1..%d", phnum, maxPhdrs)
	}
	phEnd, carry := bits.Add64(phoff, uint64(phnum)*phdrSize, 0)
	if carry != 0 || phEnd > uint64(len(b)) {
		return 0, 0, 0, 0, badImage("ELF header", "program headers [%#x, +%d*56) lie outside the %d-byte file", phoff, phnum, len(b))
	}
	return entry, phoff, phnum, typ, nil
}

// phdr is one decoded program header. fileEnd is past the file if the
// range wraps.
type phdr struct {
	typ, flags                       uint32
	off, vaddr, filesz, memsz, align uint64
	fileEnd                          uint64
}

// readPhdr decodes program header i; parseHeader has bounded the table.
func readPhdr(b []byte, phoff uint64, i int) phdr {
	le := binary.LittleEndian
	ph := b[phoff+uint64(i)*phdrSize:]
	p := phdr{
		typ: le.Uint32(ph[0:]), flags: le.Uint32(ph[4:]), off: le.Uint64(ph[8:]), vaddr: le.Uint64(ph[16:]),
		filesz: le.Uint64(ph[32:]), memsz: le.Uint64(ph[40:]), align: le.Uint64(ph[48:]),
	}
	end, c := bits.Add64(p.off, p.filesz, 0)
	if c != 0 {
		end = ^uint64(0)
	}
	p.fileEnd = end
	return p
}

// addLoad validates one PT_LOAD (at its final address) and records it.
func (img *elfImage) addLoad(b []byte, where string, ph phdr) error {
	if ph.memsz == 0 {
		return nil
	}
	if ph.filesz > ph.memsz {
		return badImage(where, "p_filesz %#x exceeds p_memsz %#x", ph.filesz, ph.memsz)
	}
	if ph.align > 1 && (ph.align&(ph.align-1) != 0) {
		return badImage(where, "p_align %#x is not a power of two", ph.align)
	}
	if ph.vaddr%pageSize != ph.off%pageSize {
		return badImage(where, "p_vaddr %#x and p_offset %#x differ modulo the page size", ph.vaddr, ph.off)
	}
	if ph.vaddr < imageBase {
		return badImage(where, "p_vaddr %#x is below %#x: it would overlap monitor-owned memory", ph.vaddr, imageBase)
	}
	end, c := bits.Add64(ph.vaddr, ph.memsz, 0)
	if c != 0 || end > MaxMemory {
		return badImage(where, "segment [%#x, +%#x) extends beyond the largest guest memory (%d GiB)", ph.vaddr, ph.memsz, MaxMemory>>30)
	}
	if ph.flags&pfW != 0 && ph.flags&pfX != 0 {
		return badImage(where, "segment at %#x is both writable and executable", ph.vaddr)
	}
	// Each file byte may be loaded once: segments sharing bytes
	// would multiply the template's host memory beyond the file's
	// size (59 copies of 8 MiB: 480 MB for a 16 MiB file), and
	// linkers place each section in the file once. Sharing a file
	// page is fine and common.
	for _, o := range img.segments {
		if ph.filesz > 0 && len(o.data) > 0 && ph.off < o.off+uint64(len(o.data)) && o.off < ph.fileEnd {
			return badImage(where, "file bytes [%#x, +%#x) are also loaded by the segment at %#x: each byte of the file may be loaded once", ph.off, ph.filesz, o.vaddr)
		}
	}
	img.segments = append(img.segments, segment{vaddr: ph.vaddr, memsz: ph.memsz, off: ph.off, data: b[ph.off:ph.fileEnd], flags: ph.flags})
	return nil
}

// finish sorts the segments, refuses page-granular overlaps and an entry
// point outside code, and sets the image end.
func (img *elfImage) finish() error {
	if len(img.segments) == 0 {
		return badImage("program headers", "no loadable segment")
	}
	// Sort by address (insertion sort: at most maxPhdrs entries), then
	// reject overlaps at page granularity: two segments sharing a page
	// could not get their own permissions.
	s := img.segments
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].vaddr < s[j-1].vaddr; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	for i := 1; i < len(s); i++ {
		prevEnd := alignUp(s[i-1].vaddr+s[i-1].memsz, pageSize)
		if s[i].vaddr&^(pageSize-1) < prevEnd {
			return badImage("program headers", "segments at %#x and %#x overlap (page granularity)", s[i-1].vaddr, s[i].vaddr)
		}
	}
	img.end = alignUp(s[len(s)-1].vaddr+s[len(s)-1].memsz, pageSize)
	inExec := false
	for _, sg := range s {
		if sg.flags&pfX != 0 && img.entry >= sg.vaddr && img.entry < sg.vaddr+sg.memsz {
			inExec = true
		}
	}
	if !inExec {
		return badImage("ELF header", "entry point %#x is not inside an executable segment", img.entry)
	}
	return nil
}

// scanNotes walks every note in a PT_NOTE segment and reports whether a
// valid Dust ABI note, a Solo5 note or a Dust ready note is present.
func scanNotes(b []byte, where string) (dust, solo5, ready bool, err error) {
	le := binary.LittleEndian
	for len(b) > 0 {
		if len(b) < 12 {
			return false, false, false, badImage(where, "truncated note header (%d bytes)", len(b))
		}
		namesz, descsz, typ := uint64(le.Uint32(b)), uint64(le.Uint32(b[4:])), le.Uint32(b[8:])
		nameEnd := 12 + alignUp(namesz, 4)
		descEnd := nameEnd + alignUp(descsz, 4)
		if namesz > 1<<16 || descsz > 1<<20 || descEnd > uint64(len(b)) {
			return false, false, false, badImage(where, "note (namesz %d, descsz %d) overruns its %d-byte segment", namesz, descsz, len(b))
		}
		name := b[12 : 12+namesz]
		desc := b[nameEnd : nameEnd+descsz]
		switch {
		case string(name) == noteName+"\x00" && typ == noteType:
			if descsz < 8 {
				return false, false, false, badImage(where, "Dust ABI note descriptor is %d bytes, want 8", descsz)
			}
			if v := le.Uint32(desc); v != abiVersion {
				return false, false, false, badImage(where, "image wants Dust ABI version %d; this monitor speaks version %d", v, abiVersion)
			}
			dust = true
		case string(name) == noteName+"\x00" && typ == noteReady:
			ready = true
		case string(name) == solo5Note+"\x00":
			solo5 = true
		}
		b = b[descEnd:]
	}
	return dust, solo5, ready, nil
}

func alignUp(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }
