package hvt

import (
	"encoding/binary"
	"testing"
)

// walk translates a guest virtual address through the template's page
// tables the way the CPU does and returns the effective leaf permissions.
func walk(t []byte, va uint64) (pa uint64, user, write, present bool) {
	le := binary.LittleEndian
	entry := func(table, idx uint64) uint64 { return le.Uint64(t[table+8*idx:]) }
	const addrMask = 0x000FFFFFFFFFF000
	e := entry(pml4Addr, va>>39&511)
	user, write = true, true
	for level, shift := 0, uint(30); ; level, shift = level+1, shift-9 {
		if e&pteP == 0 {
			return 0, false, false, false
		}
		user = user && e&pteUS != 0
		write = write && e&pteRW != 0
		next := e & addrMask
		e = entry(next, va>>shift&511)
		if e&pteP == 0 {
			return 0, false, false, false
		}
		if shift == 21 && e&ptePS != 0 {
			return e&addrMask | va&(largePage-1), user && e&pteUS != 0, write && e&pteRW != 0, true
		}
		if shift == 12 {
			return e&addrMask | va&(pageSize-1), user && e&pteUS != 0, write && e&pteRW != 0, true
		}
	}
}

func TestLayoutPermissions(t *testing.T) {
	img, err := parseELF(synthELF(nil))
	if err != nil {
		t.Fatal(err)
	}
	const mem = 8 << 20
	l, err := buildLayout(img, mem, 1234)
	if err != nil {
		t.Fatal(err)
	}
	tm := l.tmpl
	type want struct {
		present, user, write bool
	}
	cases := map[uint64]want{
		0:                  {false, false, false},
		gdtAddr:            {true, false, true},
		pml4Addr:           {false, false, false},
		pdAddr:             {false, false, false},
		tssAddr:            {true, false, true},
		bootInfoAddr:       {true, true, false},
		requestBase:        {true, true, false},
		0x101000:           {true, true, false}, // text
		0x102000:           {true, true, true},  // data
		0x106000:           {true, true, true},  // bss
		l.heapStart:        {true, true, true},
		l.guard:            {false, false, false},
		l.guard + pageSize: {true, true, true}, // stack
		mem - 8:            {true, true, true},
		mem:                {false, false, false},
		3 << 20:            {true, true, true}, // 2 MiB page
	}
	for va, w := range cases {
		pa, u, wr, p := walk(tm, va)
		if p != w.present || (p && (u != w.user || wr != w.write)) {
			t.Errorf("%#x: present=%v user=%v write=%v, want %+v", va, p, u, wr, w)
		}
		if p && pa != va {
			t.Errorf("%#x maps to %#x, want identity", va, pa)
		}
	}
	le := binary.LittleEndian
	if le.Uint64(tm[bootInfoAddr+biMagic:]) != bootMagic || le.Uint64(tm[bootInfoAddr+biTSCHz:]) != 1234 ||
		le.Uint64(tm[bootInfoAddr+biStackTop:]) != mem || le.Uint64(tm[bootInfoAddr+biHeapEnd:]) != l.guard {
		t.Error("boot info fields wrong")
	}
	if string(tm[0x102000:0x102004]) != "data" {
		t.Error("segment not loaded")
	}
}

func TestLayoutRejectsBadMemory(t *testing.T) {
	img, _ := parseELF(synthELF(nil))
	for _, m := range []uint64{0, 1 << 20, 3 << 20, MaxMemory + largePage} {
		if _, err := buildLayout(img, m, 0); err == nil {
			t.Errorf("memory %d accepted", m)
		}
	}
	big, err := parseELF(synthELF(func(h []byte, p []testPhdr) []testPhdr { p[1].memsz = 3 << 20; return p }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := buildLayout(big, 2<<20, 0); err == nil {
		t.Error("image larger than memory accepted")
	}
}
