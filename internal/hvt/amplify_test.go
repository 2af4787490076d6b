package hvt

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/machine"
)

// hostileELF builds an image of n PT_LOAD segments filled with int3: one
// page of code, then n-1 writable segments (writable so that they map with
// 2 MiB pages and fit the page-table budget). With shared, every writable
// segment loads the same 8 MiB of a 16 MiB file at its own address, the
// amplification issue 9 describes; otherwise each loads its own slice of a
// file of about the same size.
func hostileELF(n int, shared bool) []byte {
	const payload = 0x1000
	chunk := uint64(8 << 20)
	size := uint64(payload + 16<<20)
	if !shared {
		chunk = (16 << 20) / uint64(n) &^ (pageSize - 1)
		size = payload + uint64(n)*chunk
	}
	b := make([]byte, size)
	le := binary.LittleEndian
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = elfClass64, elfData2LSB, evCurrent
	le.PutUint16(b[16:], etExec)
	le.PutUint16(b[18:], emX86_64)
	le.PutUint32(b[20:], evCurrent)
	le.PutUint64(b[24:], imageBase+payload) // entry: the first segment
	le.PutUint64(b[32:], ehdrSize)
	le.PutUint16(b[52:], ehdrSize)
	le.PutUint16(b[54:], phdrSize)
	le.PutUint16(b[56:], uint16(n+1))
	const noteOff = 0xF00
	le.PutUint32(b[noteOff:], 5)
	le.PutUint32(b[noteOff+4:], 8)
	le.PutUint32(b[noteOff+8:], noteType)
	copy(b[noteOff+12:], "Dust\x00")
	le.PutUint32(b[noteOff+20:], abiVersion)
	for i := payload; i < len(b); i++ {
		b[i] = 0xCC
	}
	phdr := func(i int, typ, flags uint32, off, vaddr, filesz, memsz uint64) {
		o := b[ehdrSize+i*phdrSize:]
		le.PutUint32(o, typ)
		le.PutUint32(o[4:], flags)
		le.PutUint64(o[8:], off)
		le.PutUint64(o[16:], vaddr)
		le.PutUint64(o[24:], vaddr)
		le.PutUint64(o[32:], filesz)
		le.PutUint64(o[40:], memsz)
		le.PutUint64(o[48:], pageSize)
	}
	phdr(0, ptNote, pfR, noteOff, 0, 28, 28)
	phdr(1, ptLoad, pfR|pfX, payload, imageBase+payload, pageSize, pageSize)
	for k := 1; k < n; k++ {
		off := uint64(payload)
		if !shared {
			off += uint64(k) * chunk
		}
		phdr(k+1, ptLoad, pfR|pfW, off, largePage+uint64(k-1)*chunk, chunk, chunk)
	}
	return b
}

// vmRSSKiB is this process's resident set from /proc/self/status.
func vmRSSKiB(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// Issue 9, item 10: 58 segments loading the same 8 MiB of a 16 MiB file
// used to cost 486 MB of memfd for as long as the image was deployed (and
// as much again in a transient Go buffer). Now the image is refused before
// anything is allocated.
func TestSegmentsSharingFileBytesAreRefused(t *testing.T) {
	elf := hostileELF(59, true)
	runtime.GC()
	rss0 := vmRSSKiB(t)
	_, err := Prepare(elf, machine.Limits{Memory: 512 << 20})
	rss1 := vmRSSKiB(t)
	if !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), "may be loaded once") {
		t.Fatalf("Prepare: %v, want an ErrBadImage about file bytes loaded twice", err)
	}
	t.Logf("%d-byte image refused: %v; RSS %d -> %d KiB", len(elf), err, rss0, rss1)
	if rss1-rss0 > 8<<10 {
		t.Errorf("refusing the image cost %d KiB of RSS", rss1-rss0)
	}
}

// What an accepted image costs: its template's allocated pages stay within
// the file's size plus the monitor's low pages, however far apart its
// segments lie and however much BSS they ask for.
func TestTemplateCostsNoMoreThanTheFile(t *testing.T) {
	cases := []struct {
		name string
		elf  []byte
		mem  uint64
	}{
		{"59 segments, own bytes", hostileELF(59, false), 32 << 20},
		{"one byte near the top of memory", synthELF(func(h []byte, p []testPhdr) []testPhdr {
			p[1].vaddr, p[1].memsz = 0x1F002000, 4
			return p
		}), 512 << 20},
		{"huge BSS", synthELF(func(h []byte, p []testPhdr) []testPhdr { p[1].memsz = 400 << 20; return p }), 512 << 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, err := parseELF(c.elf)
			if err != nil {
				t.Fatal(err)
			}
			l, err := buildLayout(img, c.mem, 0)
			if err != nil {
				t.Fatal(err)
			}
			fd, err := writeTemplate(l, img)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				t.Fatal(err)
			}
			allocated := st.Blocks * 512
			t.Logf("file %d bytes, template spans %d bytes, allocates %d", len(c.elf), st.Size, allocated)
			if allocated > int64(len(c.elf))+monitorEnd+pageSize {
				t.Errorf("template allocates %d bytes for a %d-byte file", allocated, len(c.elf))
			}
		})
	}
}
