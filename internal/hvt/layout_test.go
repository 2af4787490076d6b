package hvt

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// walk translates a guest virtual address through the template's page
// tables the way the CPU does (with EFER.NXE) and returns the effective
// leaf permissions.
func walk(t []byte, va uint64) (pa uint64, user, write, exec, present bool) {
	le := binary.LittleEndian
	entry := func(table, idx uint64) uint64 { return le.Uint64(t[table+8*idx:]) }
	const addrMask = 0x000FFFFFFFFFF000
	e := entry(pml4Addr, va>>39&511)
	user, write, exec = true, true, true
	for shift := uint(30); ; shift -= 9 {
		if e&pteP == 0 {
			return 0, false, false, false, false
		}
		user = user && e&pteUS != 0
		write = write && e&pteRW != 0
		exec = exec && e&pteNX == 0
		next := e & addrMask
		e = entry(next, va>>shift&511)
		if e&pteP == 0 {
			return 0, false, false, false, false
		}
		leaf := func(off uint64) (uint64, bool, bool, bool, bool) {
			return e&addrMask | va&off, user && e&pteUS != 0, write && e&pteRW != 0, exec && e&pteNX == 0, true
		}
		if shift == 21 && e&ptePS != 0 {
			return leaf(largePage - 1)
		}
		if shift == 12 {
			return leaf(pageSize - 1)
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
	tm := l.low
	type want struct {
		present, user, write, exec bool
	}
	cases := map[uint64]want{
		0:                  {false, false, false, false},
		gdtAddr:            {true, false, true, false},
		pml4Addr:           {false, false, false, false},
		pdAddr:             {false, false, false, false},
		tssAddr:            {true, false, true, false},
		warmAddr:           {true, true, false, true},
		bootInfoAddr:       {true, true, false, false},
		requestBase:        {true, true, false, false},
		0x101000:           {true, true, false, true}, // text
		0x102000:           {true, true, true, false}, // data
		0x106000:           {true, true, true, false}, // bss
		l.heapStart:        {true, true, true, false}, // heap, 4 KiB pages
		l.guard:            {false, false, false, false},
		l.guard + pageSize: {true, true, true, false}, // stack
		mem - 8:            {true, true, true, false},
		mem:                {false, false, false, false},
		3 << 20:            {true, true, true, false}, // 2 MiB page
	}
	for va, w := range cases {
		pa, u, wr, x, p := walk(tm, va)
		if p != w.present || (p && (u != w.user || wr != w.write || x != w.exec)) {
			t.Errorf("%#x: present=%v user=%v write=%v exec=%v, want %+v", va, p, u, wr, x, w)
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
	fd, err := writeTemplate(l, img)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	got := make([]byte, 4)
	if _, err := unix.Pread(fd, got, 0x102000); err != nil || string(got) != "data" {
		t.Errorf("segment not loaded: %q %v", got, err)
	}
}

// W^X and NX over the whole of guest memory, for every page of a real
// image: whatever the guest can write, it cannot execute, and it can
// execute only its code segments and the warm-up stub.
func TestLayoutNoWritableOrDataPageIsExecutable(t *testing.T) {
	img, err := parseELF(exampleELF(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	const mem = 8 << 20
	l, err := buildLayout(img, mem, 0)
	if err != nil {
		t.Fatal(err)
	}
	execPages := 0
	for va := uint64(0); va < mem; va += pageSize {
		_, user, write, exec, present := walk(l.low, va)
		if !present || !exec {
			continue
		}
		execPages++
		if write {
			t.Fatalf("%#x is writable and executable", va)
		}
		inCode := va == warmAddr
		for _, s := range img.segments {
			if s.flags&pfX != 0 && va >= s.vaddr&^(pageSize-1) && va < s.vaddr+s.memsz {
				inCode = true
			}
		}
		if !inCode || !user {
			t.Errorf("%#x is executable but holds no code (user=%v)", va, user)
		}
	}
	if execPages < 2 {
		t.Fatalf("only %d executable pages: the text segment is not mapped executable", execPages)
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
