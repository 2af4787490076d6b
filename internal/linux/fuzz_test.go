package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Fuzz memory, 1 MiB:
//
//	[0, 4K)        null page (denied by default)
//	[4K, 64K)      denied (the monitor's pages)
//	[64K, 256K)    program memory: the buffers and paths calls are given
//	[256K, 768K)   heap
//	[768K, 832K)   read-only (program text)
//	[832K, 1M)     denied (a guard page and the stack's neighbours)
//
// No call may change a byte outside program memory and the heap, whatever
// its arguments: the guarded ranges hold a pattern checked after every
// call. brk and mmap must stay inside the heap.
const (
	fMem      = 1 << 20
	fScratch  = 64 << 10
	fHeap     = 256 << 10
	fHeapEnd  = 768 << 10
	fROEnd    = 832 << 10
	fStepSize = 1 + 6*5
	fMaxSteps = 64
)

var fuzzPaths = []string{
	"/tmp/a", "/tmp/d", "/tmp/d/x", "/tmp/a/", "/app/index.lua", "/app/static", "/app/big.bin", "/", "/dev/null",
	"/dev/zero", "/dev/urandom", "/tmp/../../etc/passwd", "..", "", "rel", "/proc/self/maps", "/tmp", "/app",
}

var fuzzNrs = func() []uint64 {
	var nrs []uint64
	for nr, h := range table {
		if h != nil {
			nrs = append(nrs, uint64(nr))
		}
	}
	return nrs
}()

type limitWriter struct{ n int }

func (w *limitWriter) Write(b []byte) (int, error) {
	if w.n+len(b) > 64<<10 {
		return 0, errors.New("output limit")
	}
	w.n += len(b)
	return len(b), nil
}

// fuzzArg turns a kind byte and a 32-bit value into an argument that is
// often meaningful: small numbers, pointers into each region, page runs,
// huge and negative values, path strings.
func fuzzArg(kind byte, v uint32, pathAt []uint64) uint64 {
	x := uint64(v)
	switch kind % 10 {
	case 0:
		return x % 16
	case 1:
		return fScratch + x%(fHeap-fScratch)
	case 2:
		return fHeap + x%(fHeapEnd-fHeap)
	case 3:
		return fHeap + x%128*pageSize
	case 4:
		return x
	case 5:
		return ^uint64(0) - x%4096
	case 6:
		return x<<32 | x
	case 7:
		return pathAt[x%uint64(len(pathAt))]
	case 8:
		return x % fMem
	}
	return x % 256 * pageSize
}

// fuzzMem is the memory every run starts from: a pattern, and the paths
// at pathAt.
var fuzzMem, pathAt = func() ([]byte, []uint64) {
	mem := make([]byte, fMem)
	for i := range mem {
		mem[i] = byte(i*7 + i>>8)
	}
	at := make([]uint64, len(fuzzPaths))
	a := uint64(fScratch)
	for i, s := range fuzzPaths {
		at[i] = a
		copy(mem[a:], s+"\x00")
		a += uint64(len(s)) + 1
	}
	return mem, at
}()

func FuzzCall(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := bytes.Clone(fuzzMem)
		guardLo, guardHi := fuzzMem[:fScratch], fuzzMem[fHeapEnd:]
		sleeps := 0
		cfg := Config{
			Mem: mem, HeapStart: fHeap, HeapEnd: fHeapEnd,
			Stdin: strings.NewReader("body=1"), StdinLen: 6,
			Stdout: &limitWriter{}, Stderr: &limitWriter{},
			Now:       func() time.Time { return time.Unix(1700000000, 0) },
			Monotonic: func() int64 { return 1e9 },
			Random: func(b []byte) {
				for i := range b {
					b[i] = byte(i)
				}
			},
			Files: appFiles,
			Sleep: func(time.Duration) bool { sleeps++; return sleeps%3 != 0 },
		}
		p := New(cfg)
		var retired [][2][]byte // memory of processes replaced by clones, and its last contents
		p.Deny(nullPage, fScratch)
		p.ReadOnly(fHeapEnd, fROEnd)
		p.Deny(fROEnd, fMem)

		for step := 0; len(data) > 0 && step < fMaxSteps; step++ {
			var s [fStepSize]byte
			n := copy(s[:], data)
			data = data[n:]
			var a [6]uint64
			for i := range a {
				a[i] = fuzzArg(s[1+5*i], binary.LittleEndian.Uint32(s[2+5*i:]), pathAt)
			}
			if s[0] == 239 {
				// A restore: the machine's memory copied, the process
				// cloned onto it; the old one must not be disturbed.
				cfg.Mem = bytes.Clone(mem)
				old := p
				retired = append(retired, [2][]byte{mem, bytes.Clone(mem)})
				p, mem = p.Clone(cfg), cfg.Mem
				old.Close()
				checkInvariants(t, p, step, 0)
				continue
			}
			nr := fuzzNrs[int(s[0])%len(fuzzNrs)]
			if s[0] >= 240 {
				nr = uint64(binary.LittleEndian.Uint32(s[2:])) % 2048
			}
			r := p.Call(nr, a)

			if !bytes.Equal(mem[:fScratch], guardLo) || !bytes.Equal(mem[fHeapEnd:], guardHi) {
				t.Fatalf("step %d: %s%#x changed guarded memory", step, sysName(nr), a)
			}
			if r.Action == ActionContinue && r.Ret < 1<<64-4096 && (nr == unix.SYS_MMAP || nr == unix.SYS_MREMAP) {
				if r.Ret < fHeap || r.Ret >= fHeapEnd || !pageAligned(r.Ret) {
					t.Fatalf("step %d: %s%#x = %#x, outside the heap", step, sysName(nr), a, r.Ret)
				}
			}
			if r.Action == ActionStop && r.Err == nil {
				t.Fatalf("step %d: %s stopped with no reason", step, sysName(nr))
			}
			if r.SetFS && r.FSBase >= 1<<47 {
				t.Fatalf("step %d: non-canonical FS base %#x", step, r.FSBase)
			}
			checkInvariants(t, p, step, nr)
		}
		p.Close()
		for _, r := range retired {
			if !bytes.Equal(r[0], r[1]) {
				t.Fatal("a clone wrote into the memory of the process it was cloned from")
			}
		}
	})
}

func checkInvariants(t *testing.T, p *Process, step int, nr uint64) {
	t.Helper()
	st := &p.st
	if st.brk < fHeap || st.brk > fHeapEnd {
		t.Fatalf("step %d (%s): break %#x outside the heap", step, sysName(nr), st.brk)
	}
	prev := alignUp(st.brk)
	for i, s := range st.spans {
		if !pageAligned(s.start) || !pageAligned(s.end) || s.start >= s.end || s.end > fHeapEnd ||
			s.start < prev || i > 0 && s.start == prev {
			t.Fatalf("step %d (%s): bad span %d %#x in %v (break %#x)", step, sysName(nr), i, s, st.spans, st.brk)
		}
		prev = s.end
	}
	if st.tmp.bytes < 0 || st.tmp.bytes > tmpMaxBytes || st.tmp.files < 0 || st.tmp.files > tmpMaxFiles {
		t.Fatalf("step %d (%s): /tmp holds %d bytes in %d files", step, sysName(nr), st.tmp.bytes, st.tmp.files)
	}
	if len(st.fds) > maxFDs {
		t.Fatalf("step %d (%s): %d descriptors", step, sysName(nr), len(st.fds))
	}
	for fd, d := range st.fds {
		if d != nil && d.f.refs <= 0 {
			t.Fatalf("step %d (%s): fd %d refers to a released file", step, sysName(nr), fd)
		}
	}
	n := 0
	for _, v := range p.Unknown() {
		n += v
	}
	if n > p.Calls() {
		t.Fatalf("%d unknown of %d calls", n, p.Calls())
	}
}

// fuzzStep encodes one call for the seed corpus: kinds and values per
// argument as fuzzArg decodes them.
type fuzzStep struct {
	op    byte
	kinds [6]byte
	vals  [6]uint32
}

func nrIndex(nr uint64) byte {
	for i, n := range fuzzNrs {
		if n == nr {
			return byte(i)
		}
	}
	panic(sysName(nr))
}

func encodeSteps(steps ...fuzzStep) []byte {
	var b []byte
	for _, s := range steps {
		b = append(b, s.op)
		for i := range 6 {
			b = append(b, s.kinds[i])
			b = binary.LittleEndian.AppendUint32(b, s.vals[i])
		}
	}
	return b
}

func pathIndex(s string) uint32 {
	for i, p := range fuzzPaths {
		if p == s {
			return uint32(i)
		}
	}
	panic(s)
}

func fuzzSeeds() [][]byte {
	call := func(nr uint64, kinds [6]byte, vals [6]uint32) fuzzStep {
		return fuzzStep{nrIndex(nr), kinds, vals}
	}
	return [][]byte{
		encodeSteps(
			call(unix.SYS_OPENAT, [6]byte{5, 7, 4, 4}, [6]uint32{99, pathIndex("/tmp/a"), unix.O_CREAT | unix.O_RDWR, 0o644}),
			call(unix.SYS_WRITE, [6]byte{0, 1, 4}, [6]uint32{3, 0, 1000}),
			call(unix.SYS_MMAP, [6]byte{0, 9, 0, 0, 0, 0}, [6]uint32{0, 4, 3, unix.MAP_PRIVATE, 3, 0}),
			call(unix.SYS_READ, [6]byte{0, 2, 4}, [6]uint32{0, 100, 4096}),
		),
		encodeSteps(
			call(unix.SYS_BRK, [6]byte{2}, [6]uint32{300 << 10}),
			call(unix.SYS_MMAP, [6]byte{0, 9, 0, 4, 5}, [6]uint32{0, 200, 3, anonPriv, 0}),
			call(unix.SYS_MREMAP, [6]byte{3, 9, 9, 0}, [6]uint32{127, 1, 10, 1}),
			call(unix.SYS_MADVISE, [6]byte{3, 9, 0}, [6]uint32{0, 100, 4}),
			call(unix.SYS_MUNMAP, [6]byte{3, 9}, [6]uint32{0, 255}),
		),
		encodeSteps(
			call(unix.SYS_READ, [6]byte{0, 8, 6}, [6]uint32{0, 8000, 0xffffffff}),
			call(unix.SYS_WRITEV, [6]byte{0, 1, 4}, [6]uint32{1, 0, 1025}),
			call(unix.SYS_GETDENTS64, [6]byte{0, 5, 4}, [6]uint32{3, 0, 4096}),
			call(unix.SYS_NEWFSTATAT, [6]byte{5, 7, 8, 4}, [6]uint32{99, pathIndex("/tmp/../../etc/passwd"), 700 << 10, 0}),
		),
		encodeSteps(
			call(unix.SYS_PIPE2, [6]byte{1}, [6]uint32{0}),
			call(unix.SYS_WRITE, [6]byte{0, 1, 4}, [6]uint32{4, 0, 100}),
			call(unix.SYS_READ, [6]byte{0, 1, 4}, [6]uint32{3, 0, 100}),
			call(unix.SYS_NANOSLEEP, [6]byte{1}, [6]uint32{0}),
			call(unix.SYS_TGKILL, [6]byte{0, 0, 0}, [6]uint32{2, 2, 6}),
		),
		encodeSteps(
			call(unix.SYS_OPENAT, [6]byte{5, 7, 4, 4}, [6]uint32{99, pathIndex("/tmp/a"), unix.O_CREAT | unix.O_RDWR, 0o644}),
			call(unix.SYS_MMAP, [6]byte{0, 9, 0, 4, 5}, [6]uint32{0, 20, 3, anonPriv, 0}),
			fuzzStep{op: 239}, // restore
			call(unix.SYS_WRITE, [6]byte{0, 1, 4}, [6]uint32{3, 0, 100}),
			call(unix.SYS_MMAP, [6]byte{0, 9, 0, 4, 5}, [6]uint32{0, 20, 3, anonPriv, 0}),
			call(unix.SYS_READ, [6]byte{0, 2, 4}, [6]uint32{3, 0, 4096}),
		),
	}
}
