package linux

import (
	"errors"
	"fmt"
	"math"
	"time"

	"golang.org/x/sys/unix"
)

// Threads are green threads on the guest's one vCPU. The process knows
// every thread's kernel-side state (what it waits for, its signal mask,
// alternate stack, FS base, clear-child-tid address); the monitor keeps
// the registers of the threads that are not running and swaps them in
// when a call's Result names another thread (Result.Next). A switch
// happens only inside a system call, at a point where Linux would block
// or yield: futex waits, sched_yield, sleeps, blocking pipe, eventfd and
// epoll waits, the exit of a thread. There is no preemption: a thread
// that computes without making one of those calls keeps the vCPU, which
// is what a program with one CPU (sched_getaffinity) must expect anyway.

// maxThreads bounds the live threads of one process: TinyKVM's bound, far
// above the handful the Go runtime starts for GOMAXPROCS=1, and small
// enough that the monitor's saved registers stay a few KiB.
const maxThreads = 64

// noDeadline: a wait no clock ends.
const noDeadline = math.MaxInt64

type waitKind uint8

const (
	wRun   waitKind = iota // runnable (or running)
	wFutex                 // FUTEX_WAIT on futex, for bitset
	wSleep                 // nanosleep, clock_nanosleep: only the deadline ends it
	// wIO: a read, write or epoll wait that would block. When a pipe or
	// eventfd changes the thread re-executes the call (Result.Restart),
	// which then either completes or blocks again; a deadline (epoll's
	// timeout) ends it with timeoutRet.
	wIO
)

type thread struct {
	tid        int
	wait       waitKind
	futex      uint64
	bitset     uint32
	deadline   int64  // Config.Monotonic reading that ends a timed wait
	timeoutRet uint64 // RAX when the deadline ends the wait
	ioGen      uint64 // for wIO: Process ioGen when it blocked
	nr         uint64 // for wIO: the call to re-execute
	seq        uint64 // when it started waiting: futex wakes are FIFO
	ret        uint64 // RAX when it runs next
	restart    bool
	retry      bool // for wIO: the deadline re-executes the call too (poll.go)
	timedOut   bool // ... and this is that re-execution: it must not wait

	sigmask  uint64
	altstack altstack
	clearTid uint64 // CLONE_CHILD_CLEARTID, set_tid_address
	fsBase   uint64
	reseeded bool // its random state was refilled in this request (dust.go)
}

// Child is a thread that clone or clone3 created. Its registers are the
// caller's as they are on return from the call, except RAX = 0 (the
// child's return value), RSP = Stack when Stack is not 0, and the FS base
// = TLS when SetTLS. It first runs when a later call switches to it.
type Child struct {
	Tid    int
	Stack  uint64
	TLS    uint64
	SetTLS bool
}

var (
	errDeadlock = errors.New("every thread waits and nothing can wake any of them (futex waits without a timeout)")
	// errThreadGone is never returned to a program: calls made after the
	// last thread ended are refused (a broken monitor).
	errThreadGone = errors.New("system call from a thread that has exited")
)

func (p *Process) cur() *thread { return p.st.cur }

// Tid is the thread whose call Call serves next (the one running).
func (p *Process) Tid() int { return p.st.cur.tid }

// Threads is the number of live threads.
func (p *Process) Threads() int { return len(p.st.threads) }

func (p *Process) newThread(tid int) *thread {
	return &thread{tid: tid, altstack: altstack{flags: ssDisable}}
}

// schedule runs the next thread after the caller has set its own state:
// round-robin over the runnable threads, the caller last (so a yield lets
// every other thread run once). With none runnable it sleeps on the host
// until the earliest deadline of a waiting thread; with no deadline
// either, nothing could ever wake any of them, and the run ends rather
// than hanging until the request's deadline. gone: the caller exited.
func (p *Process) schedule(gone bool, from int) Result {
	for {
		now := p.cfg.Monotonic()
		p.wakeReady(now)
		if t := p.pick(from); t != nil {
			return p.switchTo(t, gone)
		}
		next := int64(noDeadline)
		for _, t := range p.st.threads {
			if t.wait != wRun {
				next = min(next, t.deadline)
			}
		}
		if next == noDeadline {
			for _, t := range p.st.threads {
				if t.wait == wIO {
					return stop(fmt.Errorf("%w (%d threads)", errBlockForever, len(p.st.threads)))
				}
			}
			return stop(fmt.Errorf("%w (%d threads)", errDeadlock, len(p.st.threads)))
		}
		if d := time.Duration(next - now); d > 0 && !p.cfg.Sleep(d) {
			return stop(fmt.Errorf("all %d threads waiting: the request's deadline passed", len(p.st.threads)))
		}
		// The clock may not have moved as far as asked (or at all, in
		// tests): the sleep was for next, so next has come.
		p.wakeReady(max(next, p.cfg.Monotonic()))
	}
}

// wakeReady makes runnable the threads whose wait is over at now.
func (p *Process) wakeReady(now int64) {
	for _, t := range p.st.threads {
		switch {
		case t.wait == wRun:
		case t.wait == wIO && t.ioGen != p.st.ioGen:
			t.wait, t.ret, t.restart = wRun, t.nr, true
		case t.deadline <= now && t.wait == wIO && t.retry:
			t.wait, t.ret, t.restart, t.timedOut = wRun, t.nr, true, true
		case t.deadline <= now:
			t.wait, t.ret = wRun, t.timeoutRet
		}
	}
}

// pick is the first runnable thread after index from (wrapping), the
// thread at from itself last.
func (p *Process) pick(from int) *thread {
	n := len(p.st.threads)
	for i := 1; i <= n; i++ {
		if t := p.st.threads[(from+i)%n]; t.wait == wRun {
			return t
		}
	}
	return nil
}

func (p *Process) index(t *thread) int {
	for i, u := range p.st.threads {
		if u == t {
			return i
		}
	}
	return -1
}

func (p *Process) switchTo(t *thread, gone bool) Result {
	r := Result{Ret: t.ret, Restart: t.restart}
	t.restart = false
	if t != p.st.cur || gone {
		r.Next, r.Gone = t.tid, gone
	}
	p.st.cur = t
	return r
}

// block parks the calling thread (its wait already set) and runs another.
func (p *Process) block() Result {
	t := p.cur()
	p.st.waitSeq++
	t.seq = p.st.waitSeq
	return p.schedule(false, p.index(t))
}

// yield lets every other runnable thread run before the caller goes on.
func (p *Process) yield() Result {
	t := p.cur()
	t.wait, t.ret = wRun, 0
	return p.schedule(false, p.index(t))
}

// blockIO parks the caller until a pipe or eventfd changes (then it
// re-executes call nr) or until deadline.
func (p *Process) blockIO(nr uint64, deadline int64, timeoutRet uint64) Result {
	t := p.cur()
	t.wait, t.nr, t.ioGen, t.deadline, t.timeoutRet, t.retry = wIO, nr, p.st.ioGen, deadline, timeoutRet, false
	return p.block()
}

// blockIORetry is blockIO for a call whose answer at its timeout must be
// computed by the call itself (poll and select write back what is ready):
// the deadline re-executes it with timedOut set.
func (p *Process) blockIORetry(nr uint64, deadline int64) Result {
	t := p.cur()
	t.wait, t.nr, t.ioGen, t.deadline, t.retry = wIO, nr, p.st.ioGen, deadline, true
	return p.block()
}

// ioChanged records that a pipe, eventfd or socket changed state, so that
// threads blocked on one retry.
func (p *Process) ioChanged() { p.st.ioGen++ }

// sleepUntil blocks the caller until the monotonic clock reads deadline.
// Alone, the process sleeps on the host (Config.Sleep, bounded by the
// request's deadline); with other threads runnable they run meanwhile,
// which is what keeps Go's sysmon, which sleeps 20 µs to 10 ms in a loop,
// from taking the vCPU from the threads doing the work.
func (p *Process) sleepUntil(deadline int64, ret uint64) Result {
	t := p.cur()
	t.wait, t.deadline, t.timeoutRet = wSleep, deadline, ret
	return p.block()
}

// after is the monotonic reading d from now, saturating.
func (p *Process) after(d time.Duration) int64 {
	now := p.cfg.Monotonic()
	if d <= 0 {
		return now
	}
	if int64(d) > noDeadline-now {
		return noDeadline - 1 // far, but still a deadline: a sleep, not a deadlock
	}
	return now + int64(d)
}

// ---- clone ----

const (
	cloneThread   = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD
	cloneOptional = unix.CLONE_SYSVSEM | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID |
		unix.CLONE_CHILD_SETTID | unix.CLONE_CHILD_CLEARTID | unix.CLONE_DETACHED
	csignal = 0xff // clone's exit signal byte: meaningless for a thread
)

func sysClone(p *Process, a [6]uint64) Result {
	// x86-64 order: flags, stack, parent_tid, child_tid, tls.
	return p.clone(a[0]&^csignal, a[1], a[2], a[3], a[4])
}

func sysClone3(p *Process, a [6]uint64) Result {
	const ver0 = 64 // CLONE_ARGS_SIZE_VER0
	size := a[1]
	if size < ver0 || size > pageSize {
		return fail(unix.EINVAL)
	}
	b, e := p.rmem(a[0], size)
	if e != 0 {
		return fail(e)
	}
	// Fields beyond the ones we know must be zero, as the kernel checks.
	for _, c := range b[min(size, 88):] {
		if c != 0 {
			return fail(unix.E2BIG)
		}
	}
	f := func(i int) uint64 {
		if uint64(8*i+8) > size {
			return 0
		}
		return le.Uint64(b[8*i:])
	}
	flags, childTid, parentTid, exitSig, stack, stackSize, tls := f(0), f(2), f(3), f(4), f(5), f(6), f(7)
	// pidfd is read only with CLONE_PIDFD (refused below; glibc fills it
	// in regardless); set_tid and cgroup are process features.
	if f(8) != 0 || f(9) != 0 || f(10) != 0 {
		return fail(unix.EPERM)
	}
	if exitSig > 64 || flags&csignal != 0 || (stack == 0) != (stackSize == 0) {
		return fail(unix.EINVAL)
	}
	sp := uint64(0)
	if stack != 0 {
		if stack+stackSize < stack {
			return fail(unix.EINVAL)
		}
		sp = stack + stackSize
	}
	return p.clone(flags, sp, parentTid, childTid, tls)
}

// clone makes a thread. Processes (no shared memory, no thread group)
// stay refused: one request, one process. Partial sharing (a thread
// with its own descriptor table or cwd) cannot be had here and is refused
// the same way.
func (p *Process) clone(flags, stack, parentTid, childTid, tls uint64) Result {
	switch {
	case flags&cloneThread != cloneThread:
		return fail(unix.EPERM)
	case flags&^(cloneThread|cloneOptional) != 0:
		return fail(unix.EINVAL)
	case len(p.st.threads) >= maxThreads:
		return fail(unix.EAGAIN)
	case flags&unix.CLONE_SETTLS != 0 && tls >= 1<<47:
		return fail(unix.EPERM)
	}
	if flags&unix.CLONE_PARENT_SETTID != 0 {
		if _, e := p.wmem(parentTid, 4); e != 0 {
			return fail(e)
		}
	}
	if flags&(unix.CLONE_CHILD_SETTID|unix.CLONE_CHILD_CLEARTID) != 0 {
		if _, e := p.wmem(childTid, 4); e != 0 {
			return fail(e)
		}
	}
	p.st.lastTid++
	tid := p.st.lastTid
	parent := p.cur()
	t := p.newThread(tid)
	t.sigmask = parent.sigmask // the alternate stack is not inherited by a thread
	t.fsBase = parent.fsBase
	if flags&unix.CLONE_SETTLS != 0 {
		t.fsBase = tls
	}
	if flags&unix.CLONE_CHILD_CLEARTID != 0 {
		t.clearTid = childTid
	}
	if flags&unix.CLONE_PARENT_SETTID != 0 {
		p.put32(parentTid, uint32(tid))
	}
	if flags&unix.CLONE_CHILD_SETTID != 0 {
		p.put32(childTid, uint32(tid))
	}
	p.st.threads = append(p.st.threads, t)
	p.st.threadsMade++
	return Result{Ret: uint64(tid), Child: &Child{Tid: tid, Stack: stack, TLS: tls, SetTLS: flags&unix.CLONE_SETTLS != 0}}
}

// ---- exit ----

// sysExitThread ends the calling thread; the last one's exit ends the
// process. CLONE_CHILD_CLEARTID: the tid word is zeroed and its waiters
// woken, which is how pthread_join (and glibc's thread reaping) learn of
// the end.
func sysExitThread(p *Process, a [6]uint64) Result {
	if len(p.st.threads) == 1 {
		return exitWith(int(a[0] & 0xff))
	}
	t := p.cur()
	if t.clearTid != 0 && p.put32(t.clearTid, 0) == 0 {
		p.futexWake(t.clearTid, 1, math.MaxUint32)
	}
	i := p.index(t)
	p.st.threads = append(p.st.threads[:i], p.st.threads[i+1:]...)
	// The thread after the one that left is now at i: start there.
	return p.schedule(true, i-1+len(p.st.threads))
}

func sysExitGroup(p *Process, a [6]uint64) Result { return exitWith(int(a[0] & 0xff)) }

func sysGettid(p *Process, a [6]uint64) Result { return ok(uint64(p.cur().tid)) }

func sysSetTidAddress(p *Process, a [6]uint64) Result {
	p.cur().clearTid = a[0]
	return ok(uint64(p.cur().tid))
}

func sysSchedYield(p *Process, a [6]uint64) Result { return p.yield() }

func (p *Process) thread(tid uint64) *thread {
	for _, t := range p.st.threads {
		if uint64(t.tid) == tid {
			return t
		}
	}
	return nil
}

// ---- futex ----

const (
	futexWait       = 0
	futexWake       = 1
	futexWaitBitset = 9
	futexWakeBitset = 10
	futexPrivate    = 128
	futexRealtime   = 256
)

// sysFutex: WAIT and WAKE (with and without a bitset), which is what the
// Go runtime and glibc's and musl's mutexes, condition variables and
// thread joins use. The word is compared in guest memory, waiters are
// woken in the order they started waiting. Private and shared futexes
// are the same thing in a one-process machine. REQUEUE, WAKE_OP and the
// priority-inheritance operations answer ENOSYS; current glibc and musl
// do without them for everything but PI mutexes.
func sysFutex(p *Process, a [6]uint64) Result {
	addr, op, val := a[0], a[1]&^(futexPrivate|futexRealtime), a[2]
	switch op {
	case futexWake, futexWakeBitset:
		bits := uint32(math.MaxUint32)
		if op == futexWakeBitset {
			if bits = uint32(a[5]); bits == 0 {
				return fail(unix.EINVAL)
			}
		}
		if addr%4 != 0 {
			return fail(unix.EINVAL)
		}
		if _, e := p.rmem(addr, 4); e != 0 {
			return fail(e)
		}
		return ok(uint64(p.futexWake(addr, int(min(val, math.MaxInt32)), bits)))
	case futexWait, futexWaitBitset:
		bits := uint32(math.MaxUint32)
		if op == futexWaitBitset {
			if bits = uint32(a[5]); bits == 0 {
				return fail(unix.EINVAL)
			}
		}
		if addr%4 != 0 {
			return fail(unix.EINVAL)
		}
		b, e := p.rmem(addr, 4)
		if e != 0 {
			return fail(e)
		}
		deadline := int64(noDeadline)
		if a[3] != 0 {
			sec, nsec, e := p.timespec(a[3])
			if e != 0 {
				return fail(e)
			}
			d := duration(sec, nsec)
			if op == futexWaitBitset { // absolute, on the clock the flag names
				clk := uint64(unix.CLOCK_MONOTONIC)
				if a[1]&futexRealtime != 0 {
					clk = unix.CLOCK_REALTIME
				}
				now, _ := p.clock(clk)
				d -= time.Duration(now)
			}
			deadline = p.after(d)
		}
		if le.Uint32(b) != uint32(val) {
			return fail(unix.EAGAIN)
		}
		t := p.cur()
		t.wait, t.futex, t.bitset, t.deadline, t.timeoutRet = wFutex, addr, bits, deadline, errno(unix.ETIMEDOUT)
		return p.block()
	}
	return fail(unix.ENOSYS)
}

// futexWake makes up to n waiters on addr whose bitset meets bits
// runnable, oldest first, and says how many.
func (p *Process) futexWake(addr uint64, n int, bits uint32) int {
	woken := 0
	for woken < n {
		var first *thread
		for _, t := range p.st.threads {
			if t.wait == wFutex && t.futex == addr && t.bitset&bits != 0 && (first == nil || t.seq < first.seq) {
				first = t
			}
		}
		if first == nil {
			break
		}
		first.wait, first.ret = wRun, 0
		woken++
	}
	return woken
}
