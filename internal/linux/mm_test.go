package linux

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	protRW   = unix.PROT_READ | unix.PROT_WRITE
	anonPriv = unix.MAP_ANONYMOUS | unix.MAP_PRIVATE
)

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

func TestBrk(t *testing.T) {
	e := newEnv(t, "")
	fill(e.mem[tHeapStart:tHeapEnd], 0xee) // a previous user's bytes
	e.want(tHeapStart, unix.SYS_BRK, 0)
	e.want(tHeapStart+10000, unix.SYS_BRK, tHeapStart+10000)
	if !allZero(e.mem[tHeapStart : tHeapStart+10000]) {
		t.Fatal("brk handed out memory that was not zeroed")
	}
	if e.mem[tHeapStart+10000] != 0xee {
		t.Fatal("brk zeroed beyond the new break")
	}
	e.want(tHeapStart+10000, unix.SYS_BRK, 0)
	// Out of the heap: the break stays, as Linux answers a failed brk.
	for _, bad := range []uint64{tHeapEnd + 1, tHeapStart - 1, 1 << 63, ^uint64(0)} {
		e.want(tHeapStart+10000, unix.SYS_BRK, bad)
	}
	e.want(tHeapEnd, unix.SYS_BRK, tHeapEnd) // all of it
	e.wantErr(unix.ENOMEM, unix.SYS_MMAP, 0, pageSize, protRW, anonPriv, neg(1), 0)
	e.want(tHeapStart, unix.SYS_BRK, tHeapStart)
	// Shrunk and regrown: zero again.
	e.mem[tHeapStart+5] = 7
	e.want(tHeapStart+pageSize, unix.SYS_BRK, tHeapStart+pageSize)
	if e.mem[tHeapStart+5] != 0 {
		t.Fatal("regrown break not zeroed")
	}
}

func TestMmapAnonymous(t *testing.T) {
	e := newEnv(t, "")
	fill(e.mem[tHeapStart:tHeapEnd], 0xee)
	a := e.ret(unix.SYS_MMAP, 0, 3*pageSize+1, protRW, anonPriv, neg(1), 0)
	b := e.ret(unix.SYS_MMAP, 0, pageSize, protRW, anonPriv, neg(1), 0)
	if a < tHeapStart || a+4*pageSize > tHeapEnd || !pageAligned(a) || b+pageSize > a && a+4*pageSize > b {
		t.Fatalf("mappings %#x, %#x: want disjoint, page-aligned, in the heap", a, b)
	}
	if !allZero(e.bytes(a, 4*pageSize)) || !allZero(e.bytes(b, pageSize)) {
		t.Fatal("mmap memory not zeroed")
	}
	// Reused after munmap: zeroed again.
	fill(e.bytes(b, pageSize), 1)
	e.want(0, unix.SYS_MUNMAP, b, pageSize)
	c := e.ret(unix.SYS_MMAP, 0, pageSize, protRW, anonPriv, neg(1), 0)
	if !allZero(e.bytes(c, pageSize)) {
		t.Fatal("reused mapping not zeroed")
	}
	// brk cannot grow into mappings.
	e.want(tHeapStart, unix.SYS_BRK, tHeapEnd)

	for _, c := range []struct {
		name string
		err  unix.Errno
		args []uint64
	}{
		{"zero length", unix.EINVAL, []uint64{0, 0, protRW, anonPriv, neg(1), 0}},
		{"no type", unix.EINVAL, []uint64{0, pageSize, protRW, unix.MAP_ANONYMOUS, neg(1), 0}},
		{"unaligned offset", unix.EINVAL, []uint64{0, pageSize, protRW, anonPriv, neg(1), 5}},
		{"huge", unix.ENOMEM, []uint64{0, 1 << 62, protRW, anonPriv, neg(1), 0}},
		{"wrapping", unix.ENOMEM, []uint64{0, ^uint64(0), protRW, anonPriv, neg(1), 0}},
		{"bigger than the heap", unix.ENOMEM, []uint64{0, tHeapEnd - tHeapStart + pageSize, protRW, anonPriv, neg(1), 0}},
		{"exec", unix.EPERM, []uint64{0, pageSize, unix.PROT_EXEC, anonPriv, neg(1), 0}},
		{"fixed outside the heap", unix.ENOMEM, []uint64{scratch, pageSize, protRW, anonPriv | unix.MAP_FIXED, neg(1), 0}},
		{"fixed past the end", unix.ENOMEM, []uint64{tHeapEnd - pageSize, 2 * pageSize, protRW, anonPriv | unix.MAP_FIXED, neg(1), 0}},
		{"fixed wrapping", unix.ENOMEM, []uint64{^uint64(0) &^ (pageSize - 1), 2 * pageSize, protRW, anonPriv | unix.MAP_FIXED, neg(1), 0}},
		{"fixed unaligned", unix.EINVAL, []uint64{tHeapStart + 1, pageSize, protRW, anonPriv | unix.MAP_FIXED, neg(1), 0}},
		{"noreplace over a mapping", unix.EEXIST, []uint64{a, pageSize, protRW, anonPriv | unix.MAP_FIXED_NOREPLACE, neg(1), 0}},
		{"bad fd", unix.EBADF, []uint64{0, pageSize, unix.PROT_READ, unix.MAP_PRIVATE, 77, 0}},
		{"stdout", unix.ENODEV, []uint64{0, pageSize, unix.PROT_READ, unix.MAP_PRIVATE, 1, 0}},
	} {
		if got := e.ret(unix.SYS_MMAP, c.args...); got != errno(c.err) {
			t.Errorf("%s: mmap = %s, want %s", c.name, show(got), show(errno(c.err)))
		}
	}

	// MAP_FIXED replaces, inside the heap.
	fill(e.bytes(a, pageSize), 9)
	e.want(a, unix.SYS_MMAP, a, pageSize, protRW, anonPriv|unix.MAP_FIXED, neg(1), 0)
	if !allZero(e.bytes(a, pageSize)) {
		t.Fatal("MAP_FIXED did not zero")
	}
	// A free hint is honoured (the Go runtime's arena hints need it).
	hint := uint64(tHeapStart + 64*pageSize)
	e.want(hint, unix.SYS_MMAP, hint, pageSize, protRW, anonPriv, neg(1), 0)
}

func TestMmapBomb(t *testing.T) {
	e := newEnv(t, "")
	var got []uint64
	for {
		r := e.ret(unix.SYS_MMAP, 0, 100*pageSize, unix.PROT_NONE, anonPriv|unix.MAP_NORESERVE, neg(1), 0)
		if r == errno(unix.ENOMEM) {
			break
		}
		if r < tHeapStart || r+100*pageSize > tHeapEnd {
			t.Fatalf("mapping %#x outside the heap", r)
		}
		got = append(got, r)
		if len(got) > 1000 {
			t.Fatal("no ENOMEM")
		}
	}
	if want := (tHeapEnd - tHeapStart) / (100 * pageSize); len(got) != want {
		t.Fatalf("%d mappings of 100 pages in a %d-page heap, want %d", len(got), (tHeapEnd-tHeapStart)/pageSize, want)
	}
	// Consistent afterwards: a page still fits in the remainder, and
	// unmapping everything gives the whole heap back.
	e.ret(unix.SYS_MMAP, 0, pageSize, protRW, anonPriv, neg(1), 0)
	e.want(0, unix.SYS_MUNMAP, tHeapStart, tHeapEnd-tHeapStart)
	if len(e.p.st.spans) != 0 {
		t.Fatalf("spans left: %v", e.p.st.spans)
	}
	e.want(tHeapStart, unix.SYS_MMAP, 0, tHeapEnd-tHeapStart, protRW, anonPriv, neg(1), 0)
}

func TestMunmapSplitsAndMerges(t *testing.T) {
	e := newEnv(t, "")
	a := e.ret(unix.SYS_MMAP, 0, 10*pageSize, protRW, anonPriv, neg(1), 0)
	e.want(0, unix.SYS_MUNMAP, a+3*pageSize, 2*pageSize)
	if want := []span{{a, a + 3*pageSize}, {a + 5*pageSize, a + 10*pageSize}}; !equalSpans(e.p.st.spans, want) {
		t.Fatalf("spans %v, want %v", e.p.st.spans, want)
	}
	// The hole is found again and the runs merge back into one.
	e.want(a+3*pageSize, unix.SYS_MMAP, a+3*pageSize, 2*pageSize, protRW, anonPriv, neg(1), 0)
	if want := []span{{a, a + 10*pageSize}}; !equalSpans(e.p.st.spans, want) {
		t.Fatalf("spans %v, want %v", e.p.st.spans, want)
	}
	e.wantErr(unix.EINVAL, unix.SYS_MUNMAP, a+1, pageSize)
	e.wantErr(unix.EINVAL, unix.SYS_MUNMAP, a, 0)
	e.wantErr(unix.EINVAL, unix.SYS_MUNMAP, ^uint64(0)&^(pageSize-1), pageSize)
	e.want(0, unix.SYS_MUNMAP, scratch, pageSize) // not ours: nothing to do
}

func equalSpans(a, b []span) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMremap(t *testing.T) {
	e := newEnv(t, "")
	a := e.ret(unix.SYS_MMAP, 0, 2*pageSize, protRW, anonPriv, neg(1), 0)
	fill(e.bytes(a, 2*pageSize), 5)
	// Shrink in place.
	e.want(a, unix.SYS_MREMAP, a, 2*pageSize, pageSize, 0, 0)
	// a is the top of the heap: growing must move.
	e.wantErr(unix.ENOMEM, unix.SYS_MREMAP, a, pageSize, 4*pageSize, 0, 0)
	b := e.ret(unix.SYS_MREMAP, a, pageSize, 4*pageSize, unix.MREMAP_MAYMOVE, 0)
	if b == a || b < tHeapStart || b+4*pageSize > tHeapEnd {
		t.Fatalf("moved to %#x", b)
	}
	if !bytes.Equal(e.bytes(b, pageSize), bytes.Repeat([]byte{5}, pageSize)) || !allZero(e.bytes(b+pageSize, 3*pageSize)) {
		t.Fatal("mremap did not carry the contents and zero the growth")
	}
	if e.p.mapped(a, a+pageSize) {
		t.Fatal("old range still mapped")
	}
	// Grow in place when the pages above are free.
	e.want(0, unix.SYS_MUNMAP, b+2*pageSize, 2*pageSize)
	e.want(b, unix.SYS_MREMAP, b, 2*pageSize, 4*pageSize, 0, 0)
	// FIXED moves to the given place.
	to := uint64(tHeapStart + 16*pageSize)
	e.want(to, unix.SYS_MREMAP, b, 4*pageSize, 4*pageSize, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, to)
	for _, c := range []struct {
		err  unix.Errno
		args []uint64
	}{
		{unix.EFAULT, []uint64{b, pageSize, 2 * pageSize, unix.MREMAP_MAYMOVE}}, // no longer mapped
		{unix.EFAULT, []uint64{scratch, pageSize, 2 * pageSize, unix.MREMAP_MAYMOVE}},
		{unix.EINVAL, []uint64{to + 1, pageSize, 2 * pageSize, 0}},
		{unix.EINVAL, []uint64{to, pageSize, 0, 0}},
		{unix.EINVAL, []uint64{to, pageSize, pageSize, unix.MREMAP_FIXED, to}},
		{unix.EINVAL, []uint64{to, pageSize, pageSize, 0x80}},
		{unix.EINVAL, []uint64{to, 4 * pageSize, 4 * pageSize, unix.MREMAP_MAYMOVE | unix.MREMAP_FIXED, to + pageSize}}, // overlaps
		{unix.ENOMEM, []uint64{to, pageSize, 1 << 60, unix.MREMAP_MAYMOVE}},
		{unix.ENOMEM, []uint64{to, pageSize, tHeapEnd, unix.MREMAP_MAYMOVE}},
		{unix.ENOMEM, []uint64{to, pageSize, pageSize, unix.MREMAP_MAYMOVE | unix.MREMAP_FIXED, scratch}},
	} {
		if got := e.ret(unix.SYS_MREMAP, c.args...); got != errno(c.err) {
			t.Errorf("mremap%v = %s, want %s", c.args, show(got), show(errno(c.err)))
		}
	}
}

func TestMadviseMprotect(t *testing.T) {
	e := newEnv(t, "")
	a := e.ret(unix.SYS_MMAP, 0, 4*pageSize, protRW, anonPriv, neg(1), 0)
	fill(e.bytes(a, 4*pageSize), 3)
	e.want(0, unix.SYS_MADVISE, a+pageSize, 2*pageSize, unix.MADV_DONTNEED)
	if e.mem[a] != 3 || !allZero(e.bytes(a+pageSize, 2*pageSize)) || e.mem[a+3*pageSize] != 3 {
		t.Fatal("MADV_DONTNEED did not zero exactly its range")
	}
	fill(e.bytes(scratch, pageSize), 3)
	e.want(0, unix.SYS_MADVISE, scratch, pageSize, unix.MADV_DONTNEED)
	if e.mem[scratch] != 3 {
		t.Fatal("MADV_DONTNEED outside the heap changed memory")
	}
	e.want(0, unix.SYS_MADVISE, a, pageSize, unix.MADV_FREE)
	e.wantErr(unix.EINVAL, unix.SYS_MADVISE, a, pageSize, 77)
	e.wantErr(unix.EPERM, unix.SYS_MADVISE, a, pageSize, unix.MADV_HWPOISON)
	e.wantErr(unix.EINVAL, unix.SYS_MADVISE, a+1, pageSize, unix.MADV_DONTNEED)
	e.wantErr(unix.ENOMEM, unix.SYS_MADVISE, tMem, pageSize, unix.MADV_DONTNEED)

	e.want(0, unix.SYS_MPROTECT, a, pageSize, unix.PROT_READ)
	e.want(0, unix.SYS_MPROTECT, a, pageSize, unix.PROT_NONE)
	e.want(0, unix.SYS_MPROTECT, 0x1000, pageSize, unix.PROT_READ|unix.PROT_EXEC) // program text
	e.wantErr(unix.EPERM, unix.SYS_MPROTECT, a, pageSize, unix.PROT_READ|unix.PROT_EXEC)
	e.wantErr(unix.EINVAL, unix.SYS_MPROTECT, a+1, pageSize, unix.PROT_READ)
	e.wantErr(unix.EINVAL, unix.SYS_MPROTECT, a, pageSize, 0x100)
	e.wantErr(unix.ENOMEM, unix.SYS_MPROTECT, tMem, pageSize, unix.PROT_READ)
	e.wantErr(unix.ENOMEM, unix.SYS_MPROTECT, a, ^uint64(0), unix.PROT_READ)
}

func TestMmapFile(t *testing.T) {
	e := newEnv(t, "")
	fd := e.open("/app/big.bin", unix.O_RDONLY)
	fill(e.mem[tHeapStart:tHeapEnd], 0xee)
	a := e.ret(unix.SYS_MMAP, 0, 8*pageSize, unix.PROT_READ, unix.MAP_PRIVATE, fd, pageSize)
	want := append(bytes.Repeat([]byte{0xab}, 2*pageSize+17), make([]byte, 6*pageSize-17)...)
	if !bytes.Equal(e.bytes(a, 8*pageSize), want) {
		t.Fatal("file mapping: wrong bytes")
	}
	e.wantErr(unix.EACCES, unix.SYS_MMAP, 0, pageSize, protRW, unix.MAP_SHARED, fd, 0)
	e.want(0, unix.SYS_CLOSE, fd)
	// /tmp file, private only.
	tfd := e.open("/tmp/m", unix.O_RDWR|unix.O_CREAT)
	e.want(3, unix.SYS_WRITE, tfd, e.str("xyz"), 3)
	b := e.ret(unix.SYS_MMAP, 0, pageSize, unix.PROT_READ, unix.MAP_PRIVATE, tfd, 0)
	if string(e.bytes(b, 4)) != "xyz\x00" {
		t.Fatalf("tmp mapping %q", e.bytes(b, 4))
	}
	e.wantErr(unix.ENODEV, unix.SYS_MMAP, 0, pageSize, unix.PROT_READ, unix.MAP_SHARED, tfd, 0)
	// /dev/zero: anonymous.
	zfd := e.open("/dev/zero", unix.O_RDWR)
	c := e.ret(unix.SYS_MMAP, 0, pageSize, protRW, unix.MAP_PRIVATE, zfd, 0)
	if !allZero(e.bytes(c, pageSize)) {
		t.Fatal("/dev/zero mapping not zero")
	}
	dfd := e.open("/app", unix.O_RDONLY|unix.O_DIRECTORY)
	e.wantErr(unix.ENODEV, unix.SYS_MMAP, 0, pageSize, unix.PROT_READ, unix.MAP_PRIVATE, dfd, 0)
}
