package linux

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"golang.org/x/sys/unix"
)

// Test memory: 4 MiB; [0, 1 MiB) is the program's (scratch buffers the
// tests use live at scratch), [1 MiB, 3 MiB) the heap, the rest above it.
const (
	tMem       = 4 << 20
	tHeapStart = 1 << 20
	tHeapEnd   = 3 << 20
	scratch    = 64 << 10
)

type env struct {
	t       *testing.T
	p       *Process
	mem     []byte
	stdout  bytes.Buffer
	stderr  bytes.Buffer
	slept   []time.Duration
	sleepOK bool
	next    uint64 // next free scratch address
}

var appFiles = fstest.MapFS{
	"index.lua":     {Data: []byte("print('hello')\n"), Mode: 0o644, ModTime: time.Unix(1700000000, 0)},
	"static/a.txt":  {Data: []byte("AAAA"), Mode: 0o444},
	"static/b.txt":  {Data: []byte("BB"), Mode: 0o755},
	"static/deep/c": {Data: []byte("c")},
	"big.bin":       {Data: bytes.Repeat([]byte{0xab}, 3*pageSize+17)},
}

func newEnv(t *testing.T, stdin string) *env {
	e := &env{t: t, mem: make([]byte, tMem), sleepOK: true, next: scratch}
	var n byte
	e.p = New(Config{
		Mem:       e.mem,
		HeapStart: tHeapStart,
		HeapEnd:   tHeapEnd,
		Stdin:     strings.NewReader(stdin),
		StdinLen:  int64(len(stdin)),
		Stdout:    &e.stdout,
		Stderr:    &e.stderr,
		Now:       func() time.Time { return time.Unix(1700000000, 123456789) },
		Monotonic: func() int64 { return 5_000_000_123 },
		Random: func(b []byte) {
			for i := range b {
				n++
				b[i] = n
			}
		},
		Files: appFiles,
		Sleep: func(d time.Duration) bool { e.slept = append(e.slept, d); return e.sleepOK },
	})
	return e
}

// call makes a system call with up to six arguments.
func (e *env) call(nr uint64, args ...uint64) Result {
	e.t.Helper()
	var a [6]uint64
	copy(a[:], args)
	return e.p.Call(nr, a)
}

// ret calls and returns RAX, failing the test on anything but Continue.
func (e *env) ret(nr uint64, args ...uint64) uint64 {
	e.t.Helper()
	r := e.call(nr, args...)
	if r.Action != ActionContinue {
		e.t.Fatalf("%s: action %v err %v", sysName(nr), r.Action, r.Err)
	}
	return r.Ret
}

// want checks that a call answers v (a value, or -errno via errno()).
func (e *env) want(v uint64, nr uint64, args ...uint64) {
	e.t.Helper()
	if got := e.ret(nr, args...); got != v {
		e.t.Fatalf("%s%v = %s, want %s", sysName(nr), args, show(got), show(v))
	}
}

func (e *env) wantErr(err unix.Errno, nr uint64, args ...uint64) {
	e.t.Helper()
	e.want(errno(err), nr, args...)
}

func show(v uint64) string {
	if v > 1<<64-4096 {
		return "-" + unix.ErrnoName(unix.Errno(-v))
	}
	return fmt.Sprintf("%#x", v)
}

// buf reserves n bytes of scratch memory.
func (e *env) buf(n uint64) uint64 {
	a := e.next
	e.next += (n + 15) &^ 15
	if e.next > tHeapStart {
		e.t.Fatal("scratch exhausted")
	}
	return a
}

// str puts a NUL-terminated string in scratch memory.
func (e *env) str(s string) uint64 {
	a := e.buf(uint64(len(s) + 1))
	copy(e.mem[a:], s+"\x00")
	return a
}

func (e *env) bytes(addr, n uint64) []byte { return e.mem[addr : addr+n] }

func (e *env) open(path string, flags uint64, mode ...uint64) uint64 {
	e.t.Helper()
	m := uint64(0o644)
	if len(mode) > 0 {
		m = mode[0]
	}
	return e.ret(unix.SYS_OPENAT, uint64(atFDCWD), e.str(path), flags, m)
}

const atFDCWD = uint64(1<<64 - 100)

// neg is -n as a register holds it.
func neg(n int64) uint64 { return uint64(-n) }
