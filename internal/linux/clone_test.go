package linux

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestClone(t *testing.T) {
	e := newEnv(t, "")
	e.ret(unix.SYS_BRK, tHeapStart+3*pageSize)
	m := e.ret(unix.SYS_MMAP, 0, 8*pageSize, protRW, anonPriv, neg(1), 0)
	fd := e.open("/tmp/state", unix.O_CREAT|unix.O_RDWR)
	e.want(5, unix.SYS_WRITE, fd, e.str("hello"), 5)
	app := e.open("/app/index.lua", unix.O_RDONLY)
	e.want(6, unix.SYS_READ, app, e.buf(6), 6)
	act := e.buf(32)
	le.PutUint64(e.mem[act:], sigIGN)
	e.want(0, unix.SYS_RT_SIGACTION, uint64(unix.SIGPIPE), act, 0, 8)
	e.want(0, unix.SYS_CHDIR, e.str("/tmp"))
	e.wantErr(unix.ENOSYS, 999)

	// A restored machine: a copy of the memory and a new request.
	c := newEnv(t, "second body")
	copy(c.mem, e.mem)
	c.next = e.next
	c.p = e.p.Clone(Config{Mem: c.mem, HeapStart: tHeapStart, HeapEnd: tHeapEnd, Stdout: &c.stdout, Files: appFiles, Stdin: c.p.cfg.Stdin, StdinLen: 11})

	c.want(tHeapStart+3*pageSize, unix.SYS_BRK, 0)
	if !c.p.mapped(m, m+8*pageSize) {
		t.Fatal("the snapshot's mapping is gone")
	}
	n := c.ret(unix.SYS_MMAP, 0, pageSize, protRW, anonPriv, neg(1), 0)
	if n >= m && n < m+8*pageSize {
		t.Fatal("clone handed out memory the program was using")
	}
	c.want(5, unix.SYS_LSEEK, fd, 0, unix.SEEK_CUR)
	b := c.buf(16)
	c.want(9, unix.SYS_READ, app, b, 16) // offset kept, file reopened
	c.want(2, unix.SYS_WRITE, fd, c.str("!!"), 2)
	c.want(7, unix.SYS_PREAD64, fd, b, 16, 0)
	e.want(5, unix.SYS_PREAD64, fd, b, 16, 0) // the original /tmp is untouched
	c.want(11, unix.SYS_READ, 0, b, 16)       // the new body
	c.want(0, unix.SYS_WRITE, 1, b, 0)
	c.want(5, unix.SYS_GETCWD, b, 16)
	if c.p.Calls() != 9 || len(c.p.Unknown()) != 0 {
		t.Fatalf("counters not reset: %d calls, %v", c.p.Calls(), c.p.Unknown())
	}
	c.want(0, unix.SYS_UNLINK, c.str("/tmp/state"))
	e.want(0, unix.SYS_ACCESS, e.str("/tmp/state"), 0)
	e.p.Close()
	c.p.Close()
}
