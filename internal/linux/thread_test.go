package linux

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

const goCloneFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_SYSVSEM | unix.CLONE_THREAD

// clone, a futex wait that switches to the child, the child's wake and
// exit (clearing its tid word and waking the joiner), per-thread tids.
func TestThreadsFutex(t *testing.T) {
	e := newEnv(t, "")
	word, ctid := e.buf(4), e.buf(4)
	r := e.call(unix.SYS_CLONE, goCloneFlags|unix.CLONE_SETTLS|unix.CLONE_CHILD_CLEARTID, 0x200000, 0, ctid, 0x12340)
	if r.Child == nil || r.Ret != 3 || r.Child.Tid != 3 || !r.Child.SetTLS || r.Child.TLS != 0x12340 || r.Next != 0 {
		t.Fatalf("clone: %+v", r)
	}
	e.want(pid, unix.SYS_GETTID)
	// The parent waits on word (0): the child runs, with RAX 0.
	r = e.call(unix.SYS_FUTEX, word, futexWait|futexPrivate, 0, 0)
	if r.Next != 3 || r.Ret != 0 || r.Gone {
		t.Fatalf("wait: %+v", r)
	}
	e.want(3, unix.SYS_GETTID)
	e.want(1, unix.SYS_FUTEX, word, futexWake|futexPrivate, 1)
	// The child exits: its tid word is cleared and the parent, woken by
	// the wake above, runs again with the wait's 0.
	le.PutUint32(e.mem[ctid:], 3)
	r = e.call(unix.SYS_EXIT, 0)
	if r.Next != pid || !r.Gone || r.Ret != 0 || r.Action != ActionContinue {
		t.Fatalf("exit: %+v", r)
	}
	if le.Uint32(e.mem[ctid:]) != 0 {
		t.Fatal("CLONE_CHILD_CLEARTID word not cleared")
	}
	e.want(pid, unix.SYS_GETTID)
	if e.p.Threads() != 1 {
		t.Fatalf("%d threads", e.p.Threads())
	}
	// Alone again: a wait without a timeout could never end.
	if r := e.call(unix.SYS_FUTEX, word, futexWait, 0, 0); r.Action != ActionStop || !errors.Is(r.Err, errDeadlock) {
		t.Fatalf("lone wait: %+v", r)
	}
}

// A timed wait with nothing else to run sleeps and times out; a yield
// with another runnable thread switches to it.
func TestThreadsTimeoutAndYield(t *testing.T) {
	e := newEnv(t, "")
	word, ts := e.buf(4), e.buf(16)
	le.PutUint64(e.mem[ts+8:], 1000)
	e.wantErr(unix.ETIMEDOUT, unix.SYS_FUTEX, word, futexWait, 0, ts)
	if len(e.slept) != 1 {
		t.Fatalf("slept %v", e.slept)
	}
	e.wantErr(unix.EAGAIN, unix.SYS_FUTEX, word, futexWait, 7, ts)
	e.call(unix.SYS_CLONE, goCloneFlags, 0x300000)
	if r := e.call(unix.SYS_SCHED_YIELD); r.Next != 3 || r.Ret != 0 {
		t.Fatalf("yield: %+v", r)
	}
	// The child sleeps: the parent runs meanwhile.
	if r := e.call(unix.SYS_NANOSLEEP, ts, 0); r.Next != pid {
		t.Fatalf("sleep: %+v", r)
	}
}

// Processes are refused, threads are capped, bad clone3 arguments fail.
func TestThreadsCloneLimits(t *testing.T) {
	e := newEnv(t, "")
	e.wantErr(unix.EPERM, unix.SYS_CLONE, uint64(unix.SIGCHLD), 0)                                // fork
	e.wantErr(unix.EPERM, unix.SYS_CLONE, unix.CLONE_VM|unix.CLONE_VFORK|uint64(unix.SIGCHLD), 0) // vfork
	e.wantErr(unix.EINVAL, unix.SYS_CLONE, goCloneFlags|unix.CLONE_NEWNS, 0)
	e.wantErr(unix.EPERM, unix.SYS_CLONE, goCloneFlags|unix.CLONE_SETTLS, 0, 0, 0, 1<<47)
	for i := 1; i < maxThreads; i++ {
		e.want(uint64(2+i), unix.SYS_CLONE, goCloneFlags, 0x400000)
	}
	e.wantErr(unix.EAGAIN, unix.SYS_CLONE, goCloneFlags, 0x400000)
	args := e.buf(88)
	le.PutUint64(e.mem[args:], goCloneFlags)
	e.wantErr(unix.EINVAL, unix.SYS_CLONE3, args, 32)
	e.wantErr(unix.EAGAIN, unix.SYS_CLONE3, args, 88)
	e.mem[args+88-1] = 1 // cgroup
	e.wantErr(unix.EPERM, unix.SYS_CLONE3, args, 88)
	e.wantErr(unix.EFAULT, unix.SYS_CLONE3, tMem-8, 88)
}

// epoll: an eventfd registered, a wait that finds it ready, a wait with
// nothing ready and no other thread that times out.
func TestEpollEventfd(t *testing.T) {
	e := newEnv(t, "")
	ep := e.ret(unix.SYS_EPOLL_CREATE1, unix.EPOLL_CLOEXEC)
	efd := e.ret(unix.SYS_EVENTFD2, 0, unix.EFD_NONBLOCK)
	ev, out, one := e.buf(12), e.buf(12*4), e.buf(8)
	le.PutUint32(e.mem[ev:], unix.EPOLLIN)
	le.PutUint64(e.mem[ev+4:], 0xfeed)
	e.want(0, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_ADD, efd, ev)
	e.wantErr(unix.EEXIST, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_ADD, efd, ev)
	e.wantErr(unix.EPERM, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_ADD, e.open("/dev/null", 0), ev)
	e.want(0, unix.SYS_EPOLL_PWAIT, ep, out, 4, 10, 0, 0) // times out
	le.PutUint64(e.mem[one:], 1)
	e.want(8, unix.SYS_WRITE, efd, one, 8)
	e.want(1, unix.SYS_EPOLL_PWAIT, ep, out, 4, neg(1), 0, 0)
	if le.Uint32(e.mem[out:]) != unix.EPOLLIN || le.Uint64(e.mem[out+4:]) != 0xfeed {
		t.Fatalf("event %x", e.mem[out:out+12])
	}
	e.want(0, unix.SYS_CLOSE, efd)
	if r := e.call(unix.SYS_EPOLL_PWAIT, ep, out, 4, neg(1), 0, 0); r.Action != ActionStop {
		t.Fatalf("wait on nothing forever: %+v", r)
	}
}
