package linux

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// lateSnapshot drives the snapshot run of a server app as internal/hvt
// does with a post-accept snapshot: the first accept is the ready point,
// the template connection is delivered and accepted, then prepare (the
// program's own set-up of the connection) runs, and the next read of the
// connection is expected to be the ready point.
func lateSnapshot(t *testing.T, prepare func(e *env, fd uint64)) (*env, uint64, uint64, Result) {
	t.Helper()
	e := newEnv(t, "")
	e.p.cfg.ReadyOnAccept = true
	l := e.listener(unix.AF_INET, 8080, 0)
	if r := e.call(unix.SYS_ACCEPT, l, 0, 0); r.Action != ActionReady {
		t.Fatalf("first accept: %+v", r)
	}
	if err := e.p.Connect(Conn{Template: true}); err != nil {
		t.Fatal(err)
	}
	fd := e.ret(unix.SYS_ACCEPT, l, 0, 0)
	prepare(e, fd)
	buf := e.buf(4096)
	return e, fd, buf, e.call(unix.SYS_READ, fd, buf, 4096)
}

// A program that shuts its connection for writing before it first reads it
// (or otherwise finishes the template's write side) gets no post-accept
// ready point: no copy could ever take a client there, so the monitor
// takes the snapshot at the accept instead.
func TestTemplateTemplateShutWrBeforeRead(t *testing.T) {
	e, _, _, r := lateSnapshot(t, func(e *env, fd uint64) {
		e.want(0, unix.SYS_SHUTDOWN, fd, unix.SHUT_WR)
	})
	t.Logf("read after shutdown(SHUT_WR): %+v", r)
	if r.Action != ActionReady {
		return // refused at the snapshot: the fallback takes over, fine
	}
	cp := e.p.Clone(e.p.cfg)
	c := newClient("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	err := cp.Attach(c.conn(""))
	t.Logf("Attach in the copy: %v", err)
	if err != nil {
		t.Errorf("the snapshot was accepted as a ready point, yet no copy of it can take a request: %v", err)
	}
}

// The ordinary case, for contrast: the copy reads the client's bytes and
// its writes reach the client.
func TestTemplateTemplateAttach(t *testing.T) {
	e, fd, buf, r := lateSnapshot(t, func(*env, uint64) {})
	if r.Action != ActionReady || !r.Restart || r.Ret != unix.SYS_READ {
		t.Fatalf("first read of the template: %+v", r)
	}
	snap := e.p
	for i := range 2 {
		cp := snap.Clone(snap.cfg)
		c := newClient("GET /" + string(rune('a'+i)) + " HTTP/1.1\r\n\r\n")
		if err := cp.Attach(c.conn("")); err != nil {
			t.Fatal(err)
		}
		e.p = cp
		n := e.ret(unix.SYS_READ, fd, buf, 4096)
		if got := string(e.bytes(buf, n)); !strings.HasPrefix(got, "GET /"+string(rune('a'+i))) {
			t.Fatalf("copy %d read %q", i, got)
		}
		copy(e.mem[buf:], "HTTP/1.1 204 No Content\r\n\r\n")
		e.ret(unix.SYS_WRITE, fd, buf, 27)
		e.want(0, unix.SYS_CLOSE, fd)
		if c.closes != 1 || !strings.HasPrefix(c.out.String(), "HTTP/1.1 204") {
			t.Fatalf("copy %d: closes %d, out %q", i, c.closes, c.out.String())
		}
		// A second Attach to the same copy: the connection is finished.
		if err := cp.Attach(newClient("x").conn("")); err == nil {
			t.Errorf("copy %d: a second client attached to a finished connection", i)
		}
	}
	// The snapshot itself was not touched by its copies.
	if h := snap.st.net.host(snap.st.fds[fd].f.sock); h == nil || !h.template {
		t.Fatal("the snapshot's template connection changed")
	}
}
