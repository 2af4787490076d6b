package linux

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A thread's random state as the Go runtime on linux/amd64 keeps it, laid
// out in test memory: FS base → (FS-8) a "g" → (g+48) an "M" with two
// regions at +16 (32 bytes) and +96 (8 bytes).
type fakeM struct{ fs, g, m uint64 }

func (e *env) fakeThread() fakeM {
	f := fakeM{fs: e.buf(64) + 16, g: e.buf(64), m: e.buf(256)}
	le.PutUint64(e.mem[f.fs-8:], f.g)
	le.PutUint64(e.mem[f.g+48:], f.m)
	return f
}

// desc writes a descriptor: version, hops, self, regions.
func (e *env) desc(words ...uint64) uint64 {
	a := e.buf(uint64(8 * len(words)))
	for i, w := range words {
		le.PutUint64(e.mem[a+8*uint64(i):], w)
	}
	return a
}

func goDesc(e *env, self uint64) uint64 {
	return e.desc(1, 2, neg(8), 48, self, 2, 16, 32, 96, 8)
}

func TestReadyAndRequest(t *testing.T) {
	e := newEnv(t, "")
	f := e.fakeThread()
	e.want(0, unix.SYS_ARCH_PRCTL, archSetFS, f.fs)
	copy(e.mem[f.m+16:], bytes.Repeat([]byte{0xaa}, 32))
	r := e.call(SysReady, goDesc(e, f.m))
	if r.Action != ActionReady || !e.p.Ready() {
		t.Fatalf("ready: action %v err %v", r.Action, r.Err)
	}

	req := EncodeRequest([]string{"/app/main", "", "a\x00b"}, []string{"QUERY_STRING=x=1"})
	c := newEnv(t, "")
	copy(c.mem, e.mem)
	c.next = e.next
	c.p = e.p.Clone(Config{Mem: c.mem, HeapStart: tHeapStart, HeapEnd: tHeapEnd, Request: req, Random: func(b []byte) { rand.Read(b) }})
	if bytes.Equal(c.mem[f.m+16:f.m+48], e.mem[f.m+16:f.m+48]) || bytes.Equal(c.mem[f.m+96:f.m+104], e.mem[f.m+96:f.m+104]) {
		t.Fatal("the copy's random state was not refilled")
	}
	if !bytes.Equal(c.mem[f.m:f.m+16], e.mem[f.m:f.m+16]) || !bytes.Equal(c.mem[f.m+48:f.m+96], e.mem[f.m+48:f.m+96]) {
		t.Fatal("bytes outside the regions changed")
	}
	// In a request the ready call only reports the request's size.
	c.want(uint64(len(req)), SysReady, 0)
	b := c.buf(uint64(len(req)))
	c.wantErr(unix.ERANGE, SysRequest, b, uint64(len(req)-1))
	if c.mem[b] != 0 {
		t.Fatal("ERANGE wrote to the buffer")
	}
	c.wantErr(unix.EFAULT, SysRequest, 16, uint64(len(req))) // the null page
	c.want(uint64(len(req)), SysRequest, b, uint64(len(req))+100)
	if !bytes.Equal(c.mem[b:b+uint64(len(req))], req) {
		t.Fatal("request copied wrong")
	}
}

func TestReadyDescriptorRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		words func(f fakeM) []uint64
		want  string
	}{
		{"version", func(f fakeM) []uint64 { return []uint64{2, 2, neg(8), 48, f.m, 1, 0, 8} }, "version 2"},
		{"no hops", func(f fakeM) []uint64 { return []uint64{1, 0, f.m, 1, 0, 8} }, "0 hops"},
		{"many hops", func(f fakeM) []uint64 { return []uint64{1, 5, 0, 0, 0, 0, 0, f.m, 1, 0, 8} }, "5 hops"},
		{"no regions", func(f fakeM) []uint64 { return []uint64{1, 2, neg(8), 48, f.m, 0} }, "0 regions"},
		{"many regions", func(f fakeM) []uint64 { return []uint64{1, 2, neg(8), 48, f.m, 9} }, "9 regions"},
		{"huge region", func(f fakeM) []uint64 { return []uint64{1, 2, neg(8), 48, f.m, 1, 0, 513} }, "513 bytes"},
		{"far region", func(f fakeM) []uint64 { return []uint64{1, 2, neg(8), 48, f.m, 1, 1 << 21, 8} }, "within 1 MiB"},
		{"too much", func(f fakeM) []uint64 {
			w := []uint64{1, 2, neg(8), 48, f.m, 8}
			for range 8 {
				w = append(w, 0, 512)
			}
			return w
		}, "4096 bytes in all"},
		// The M is placed at the end of memory below.
		{"region outside memory", func(f fakeM) []uint64 { return []uint64{1, 2, neg(8), 48, tMem - 16, 1, 0, 32} }, "not reachable"},
		{"wrong self", func(f fakeM) []uint64 { return []uint64{1, 2, neg(8), 48, f.m + 8, 1, 0, 8} }, "the program says"},
		{"bad hop", func(f fakeM) []uint64 { return []uint64{1, 1, 1 << 40, f.m, 1, 0, 8} }, "not reachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "")
			f := e.fakeThread()
			e.want(0, unix.SYS_ARCH_PRCTL, archSetFS, f.fs)
			if tc.name == "region outside memory" {
				le.PutUint64(e.mem[f.g+48:], tMem-16)
			}
			r := e.call(SysReady, e.desc(tc.words(f)...))
			if r.Action != ActionStop || r.Err == nil || !strings.Contains(r.Err.Error(), tc.want) {
				t.Fatalf("action %v err %v, want a stop saying %q", r.Action, r.Err, tc.want)
			}
			if e.p.Ready() {
				t.Fatal("a refused descriptor made a ready point")
			}
		})
	}
	// Unreadable descriptor.
	e := newEnv(t, "")
	if r := e.call(SysReady, tMem-8); r.Action != ActionStop {
		t.Fatalf("descriptor at the end of memory: %v", r.Action)
	}
}

// Every thread must resolve; one that does not fails the ready point, and
// in the copy every thread's state is refilled, a thread made later at
// its first call after it set its FS base.
func TestReadyEveryThread(t *testing.T) {
	e := newEnv(t, "")
	main, other := e.fakeThread(), e.fakeThread()
	e.want(0, unix.SYS_ARCH_PRCTL, archSetFS, main.fs)
	child := e.call(unix.SYS_CLONE, cloneThread, 0)
	if child.Child == nil {
		t.Fatalf("clone: %v", child.Err)
	}
	// The child inherited main's FS base: both resolve to main's M.
	r := e.call(SysReady, goDesc(e, main.m))
	if r.Action != ActionReady {
		t.Fatalf("ready with two threads: %v %v", r.Action, r.Err)
	}

	// A thread whose FS base leads nowhere refuses the ready point.
	e2 := newEnv(t, "")
	f2 := e2.fakeThread()
	e2.want(0, unix.SYS_ARCH_PRCTL, archSetFS, f2.fs)
	if c := e2.call(unix.SYS_CLONE, cloneThread, 0); c.Child == nil {
		t.Fatal(c.Err)
	}
	e2.p.st.threads[1].fsBase = tMem - 4
	if r := e2.call(SysReady, goDesc(e2, f2.m)); r.Action != ActionStop || !strings.Contains(r.Err.Error(), "thread 3") {
		t.Fatalf("unresolvable thread: %v %v", r.Action, r.Err)
	}

	// The copy: the child switches to its own M (as a Go thread does
	// with arch_prctl), and its next call refills it.
	c := newEnv(t, "")
	copy(c.mem, e.mem)
	c.next = e.next
	c.p = e.p.Clone(Config{Mem: c.mem, HeapStart: tHeapStart, HeapEnd: tHeapEnd, Request: []byte{}, Random: func(b []byte) { rand.Read(b) }})
	before := append([]byte(nil), c.mem[other.m+16:other.m+48]...)
	c.p.st.cur = c.p.st.threads[1]
	c.want(0, unix.SYS_ARCH_PRCTL, archSetFS, other.fs)
	if !bytes.Equal(before, c.mem[other.m+16:other.m+48]) {
		t.Fatal("refilled before the thread used its FS base")
	}
	c.ret(unix.SYS_GETTID)
	if bytes.Equal(before, c.mem[other.m+16:other.m+48]) {
		t.Fatal("a thread's new M was not refilled at its next call")
	}
}

// A copy's monotonic clock continues from the ready point.
func TestCloneClockContinues(t *testing.T) {
	e := newEnv(t, "") // Monotonic reads 5_000_000_123
	if r := e.call(SysReady, 0); r.Action != ActionReady {
		t.Fatal(r.Err)
	}
	c := newEnv(t, "")
	c.p = e.p.Clone(Config{Mem: c.mem, HeapStart: tHeapStart, HeapEnd: tHeapEnd, Request: []byte{}, Monotonic: func() int64 { return 7 }})
	ts := c.buf(16)
	c.want(0, unix.SYS_CLOCK_GETTIME, unix.CLOCK_MONOTONIC, ts)
	if sec, nsec := le.Uint64(c.mem[ts:]), le.Uint64(c.mem[ts+8:]); sec != 5 || nsec != 130 {
		t.Fatalf("monotonic %d.%09d after the ready point at 5.000000123", sec, nsec)
	}
}

func FuzzReadyDescriptor(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 2})
	f.Add(bytes.Repeat([]byte{0xff}, 96))
	f.Fuzz(func(t *testing.T, b []byte) {
		e := newEnv(t, "")
		fm := e.fakeThread()
		e.want(0, unix.SYS_ARCH_PRCTL, archSetFS, fm.fs)
		if len(b) > 1024 {
			b = b[:1024]
		}
		a := e.buf(uint64(len(b)) + 8)
		copy(e.mem[a:], b)
		r := e.call(SysReady, a)
		if r.Action != ActionReady && r.Action != ActionStop {
			t.Fatalf("action %v", r.Action)
		}
		if r.Action == ActionReady {
			d := e.p.st.rand
			total := uint64(0)
			for _, g := range d.regions {
				total += g.size
			}
			if len(d.hops) > maxRandHops || len(d.regions) > maxRandRegions || total > maxRandBytes {
				t.Fatalf("accepted an unbounded descriptor %+v", d)
			}
		}
	})
}

// Every request's process is a Clone of the one snapshot process, made
// concurrently by machines serving at the same time: Clone must only read
// it. Run with -race (make test does).
func TestCloneConcurrent(t *testing.T) {
	e := newEnv(t, "")
	f := e.fakeThread()
	e.want(0, unix.SYS_ARCH_PRCTL, archSetFS, f.fs)
	fd := e.open("/tmp/state", unix.O_CREAT|unix.O_RDWR)
	e.want(5, unix.SYS_WRITE, fd, e.str("hello"), 5)
	e.open("/app/index.lua", unix.O_RDONLY)
	fds := e.buf(8)
	e.want(0, unix.SYS_PIPE2, fds, 0)
	e.want(3, unix.SYS_WRITE, uint64(le.Uint32(e.mem[fds+4:])), e.str("abc"), 3)
	if r := e.call(SysReady, goDesc(e, f.m)); r.Action != ActionReady {
		t.Fatal(r.Err)
	}
	done := make(chan error)
	for i := range 8 {
		go func() {
			c := newEnv(t, "")
			copy(c.mem, e.mem)
			c.next = e.next
			c.p = e.p.Clone(Config{Mem: c.mem, HeapStart: tHeapStart, HeapEnd: tHeapEnd, Request: []byte{byte(i)}, Files: appFiles, Random: func(b []byte) { rand.Read(b) }})
			b := c.buf(16)
			var err error
			for _, call := range [][]uint64{{unix.SYS_PREAD64, fd, b, 16, 0}, {unix.SYS_WRITE, fd, b, 3}, {unix.SYS_READ, uint64(le.Uint32(c.mem[fds:])), b, 16}, {unix.SYS_UNLINK, c.str("/tmp/state")}} {
				var a [6]uint64
				copy(a[:], call[1:])
				if r := c.p.Call(call[0], a); r.Action != ActionContinue || int64(r.Ret) < 0 {
					err = fmt.Errorf("clone %d: %s = %s", i, sysName(call[0]), show(r.Ret))
					break
				}
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	e.want(5, unix.SYS_PREAD64, fd, e.buf(16), 16, 0) // the snapshot's own file is untouched
}
