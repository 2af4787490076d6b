package linux

import (
	"errors"
	"math"
	"time"

	"golang.org/x/sys/unix"
)

// ---- time ----

// clock is clock id clk's reading in nanoseconds. Every clock but the
// wall clock reads Config.Monotonic: CPU time is not measured per guest,
// and a request's process is never busier than its wall time.
func (p *Process) clock(clk uint64) (int64, unix.Errno) {
	switch clk {
	case unix.CLOCK_REALTIME, unix.CLOCK_REALTIME_COARSE, unix.CLOCK_TAI, unix.CLOCK_REALTIME_ALARM:
		return p.cfg.Now().UnixNano(), 0
	case unix.CLOCK_MONOTONIC, unix.CLOCK_MONOTONIC_RAW, unix.CLOCK_MONOTONIC_COARSE, unix.CLOCK_BOOTTIME,
		unix.CLOCK_BOOTTIME_ALARM, unix.CLOCK_PROCESS_CPUTIME_ID, unix.CLOCK_THREAD_CPUTIME_ID:
		return p.cfg.Monotonic(), 0
	}
	// Including the negative ids of other processes' CPU clocks.
	return 0, unix.EINVAL
}

func sysClockGettime(p *Process, a [6]uint64) Result {
	ns, e := p.clock(a[0])
	if e != 0 {
		return fail(e)
	}
	return okOrFail(p.putTimespec(a[1], ns))
}

func sysClockGetres(p *Process, a [6]uint64) Result {
	if _, e := p.clock(a[0]); e != 0 {
		return fail(e)
	}
	if a[1] == 0 {
		return ok(0)
	}
	res := int64(1)
	if a[0] == unix.CLOCK_REALTIME_COARSE || a[0] == unix.CLOCK_MONOTONIC_COARSE {
		res = 4e6 // a jiffy at HZ=250
	}
	return okOrFail(p.putTimespec(a[1], res))
}

func sysGettimeofday(p *Process, a [6]uint64) Result {
	if a[0] != 0 {
		ns := p.cfg.Now().UnixNano()
		var b [16]byte
		le.PutUint64(b[:], uint64(ns/1e9))
		le.PutUint64(b[8:], uint64(ns%1e9/1e3))
		if e := p.put(a[0], b[:]); e != 0 {
			return fail(e)
		}
	}
	if a[1] != 0 {
		if e := p.put(a[1], make([]byte, 8)); e != 0 { // struct timezone: UTC
			return fail(e)
		}
	}
	return ok(0)
}

func sysTime(p *Process, a [6]uint64) Result {
	s := uint64(p.cfg.Now().Unix())
	if a[0] != 0 {
		if e := p.put64(a[0], s); e != 0 {
			return fail(e)
		}
	}
	return ok(s)
}

func duration(sec, nsec int64) time.Duration {
	if sec > (math.MaxInt64-nsec)/1e9 {
		return math.MaxInt64
	}
	return time.Duration(sec*1e9 + nsec)
}

// sleep blocks the calling thread for d (sleepUntil): other threads run
// meanwhile; with none to run the process sleeps on the host, and a sleep
// the request's deadline cuts short ends the run (the program cannot
// finish in time anyway).
func (p *Process) sleep(d time.Duration) Result { return p.sleepUntil(p.after(d), 0) }

func sysNanosleep(p *Process, a [6]uint64) Result {
	sec, nsec, e := p.timespec(a[0])
	if e != 0 {
		return fail(e)
	}
	return p.sleep(duration(sec, nsec))
}

func sysClockNanosleep(p *Process, a [6]uint64) Result {
	clk, flags := a[0], a[1]
	switch clk {
	case unix.CLOCK_REALTIME, unix.CLOCK_MONOTONIC, unix.CLOCK_BOOTTIME, unix.CLOCK_TAI, unix.CLOCK_PROCESS_CPUTIME_ID:
	case unix.CLOCK_THREAD_CPUTIME_ID:
		return fail(unix.EINVAL)
	default:
		if _, e := p.clock(clk); e != 0 {
			return fail(e)
		}
		return fail(unix.EOPNOTSUPP)
	}
	if flags&^uint64(unix.TIMER_ABSTIME) != 0 {
		return fail(unix.EINVAL)
	}
	sec, nsec, e := p.timespec(a[2])
	if e != 0 {
		return fail(e)
	}
	d := duration(sec, nsec)
	if flags&unix.TIMER_ABSTIME != 0 {
		now, _ := p.clock(clk)
		d -= time.Duration(now)
	}
	return p.sleep(d)
}

func sysGetrandom(p *Process, a [6]uint64) Result {
	flags := a[2]
	if flags&^uint64(unix.GRND_NONBLOCK|unix.GRND_RANDOM|unix.GRND_INSECURE) != 0 ||
		flags&(unix.GRND_RANDOM|unix.GRND_INSECURE) == unix.GRND_RANDOM|unix.GRND_INSECURE {
		return fail(unix.EINVAL)
	}
	b, e := p.upTo(a[0], min(a[1], maxRandom), true)
	if e != 0 {
		return fail(e)
	}
	p.cfg.Random(b)
	return ok(uint64(len(b)))
}

// ---- identity and limits ----

func sysGetpid(p *Process, a [6]uint64) Result  { return ok(pid) }
func sysGetppid(p *Process, a [6]uint64) Result { return ok(ppid) }
func sysGetuid(p *Process, a [6]uint64) Result  { return ok(uid) }
func sysGetgid(p *Process, a [6]uint64) Result  { return ok(gid) }

// Process group and session: the process leads both, as a CGI child of a
// server that called setsid would.
func sysGetpgid(p *Process, a [6]uint64) Result {
	if a[0] != 0 && a[0] != pid {
		return fail(unix.ESRCH)
	}
	return ok(pid)
}

func sysGetpgrp(p *Process, a [6]uint64) Result { return ok(pid) }

func sysSetpgid(p *Process, a [6]uint64) Result {
	if (a[0] == 0 || a[0] == pid) && (a[1] == 0 || a[1] == pid) {
		return ok(0)
	}
	return fail(unix.EPERM)
}

func sysSetsid(p *Process, a [6]uint64) Result { return fail(unix.EPERM) } // already a group leader

func sysGetgroups(p *Process, a [6]uint64) Result {
	size := int32(a[0])
	switch {
	case size < 0:
		return fail(unix.EINVAL)
	case size == 0:
		return ok(1)
	}
	return okOrFail2(p.put32(a[1], gid), 1)
}

func sysGetresuid(p *Process, a [6]uint64) Result {
	for _, addr := range a[:3] {
		if e := p.put32(addr, uid); e != 0 {
			return fail(e)
		}
	}
	return ok(0)
}

// An unprivileged process may "change" its ids only to what they are.
func sameID(ids ...uint64) Result {
	for _, id := range ids {
		if uint32(id) != uid && uint32(id) != math.MaxUint32 {
			return fail(unix.EPERM)
		}
	}
	return ok(0)
}

func sysSetuid(p *Process, a [6]uint64) Result    { return sameID(a[0]) }
func sysSetreuid(p *Process, a [6]uint64) Result  { return sameID(a[0], a[1]) }
func sysSetresuid(p *Process, a [6]uint64) Result { return sameID(a[0], a[1], a[2]) }
func sysSetfsuid(p *Process, a [6]uint64) Result  { return ok(uid) } // returns the old value, never fails

func sysUname(p *Process, a [6]uint64) Result {
	b := make([]byte, 6*65)
	for i, s := range []string{"Linux", "dust", "6.1.0-dust", "#1 SMP PREEMPT_DYNAMIC dust", "x86_64", "(none)"} {
		copy(b[i*65:], s)
	}
	return okOrFail(p.put(a[0], b))
}

func (p *Process) getrlimit(res, addr uint64) unix.Errno {
	if res >= rlimNlimits {
		return unix.EINVAL
	}
	var b [16]byte
	le.PutUint64(b[:], p.st.rlim[res].cur)
	le.PutUint64(b[8:], p.st.rlim[res].max)
	return p.put(addr, b[:])
}

// setrlimit lets the program lower its limits and raise a soft one up to
// its hard one, as an unprivileged process may.
func (p *Process) setrlimit(res, addr uint64, oldAddr uint64) unix.Errno {
	if res >= rlimNlimits {
		return unix.EINVAL
	}
	b, e := p.rmem(addr, 16)
	if e != 0 {
		return e
	}
	r := rlimit{le.Uint64(b), le.Uint64(b[8:])}
	if r.cur > r.max {
		return unix.EINVAL
	}
	if r.max > p.st.rlim[res].max {
		return unix.EPERM
	}
	if oldAddr != 0 {
		if e := p.getrlimit(res, oldAddr); e != 0 {
			return e
		}
	}
	p.st.rlim[res] = r
	return 0
}

func sysGetrlimit(p *Process, a [6]uint64) Result { return okOrFail(p.getrlimit(a[0], a[1])) }
func sysSetrlimit(p *Process, a [6]uint64) Result { return okOrFail(p.setrlimit(a[0], a[1], 0)) }

func sysPrlimit64(p *Process, a [6]uint64) Result {
	if a[0] != 0 && a[0] != pid {
		return fail(unix.ESRCH)
	}
	if a[1] >= rlimNlimits {
		return fail(unix.EINVAL)
	}
	if a[3] != 0 {
		if _, e := p.wmem(a[3], 16); e != 0 {
			return fail(e)
		}
	}
	if a[2] != 0 {
		return okOrFail(p.setrlimit(a[1], a[2], a[3]))
	}
	if a[3] != 0 {
		return okOrFail(p.getrlimit(a[1], a[3]))
	}
	return ok(0)
}

func sysSysinfo(p *Process, a [6]uint64) Result {
	b := make([]byte, 112)
	total := uint64(len(p.cfg.Mem))
	free := p.cfg.HeapEnd - p.cfg.HeapStart - (p.st.brk - p.cfg.HeapStart)
	for _, s := range p.st.spans {
		free -= s.end - s.start
	}
	le.PutUint64(b[0:], uint64(p.cfg.Monotonic()/1e9))
	le.PutUint64(b[32:], total)
	le.PutUint64(b[40:], free)
	le.PutUint16(b[80:], 1)  // procs
	le.PutUint32(b[104:], 1) // mem_unit
	return okOrFail(p.put(a[0], b))
}

func sysGetrusage(p *Process, a [6]uint64) Result {
	who := int32(a[0])
	if who != unix.RUSAGE_SELF && who != unix.RUSAGE_CHILDREN && who != unix.RUSAGE_THREAD {
		return fail(unix.EINVAL)
	}
	b := make([]byte, 144)
	if who != unix.RUSAGE_CHILDREN {
		ns := p.cfg.Monotonic()
		le.PutUint64(b[0:], uint64(ns/1e9)) // ru_utime: all of it, see clock
		le.PutUint64(b[8:], uint64(ns%1e9/1e3))
	}
	return okOrFail(p.put(a[1], b))
}

func sysTimes(p *Process, a [6]uint64) Result {
	ticks := uint64(p.cfg.Monotonic() / 1e7) // USER_HZ 100
	if a[0] != 0 {
		b := make([]byte, 32)
		le.PutUint64(b, ticks)
		if e := p.put(a[0], b); e != 0 {
			return fail(e)
		}
	}
	return ok(ticks)
}

func sysSetRobustList(p *Process, a [6]uint64) Result {
	if a[1] != 24 { // sizeof(struct robust_list_head)
		return fail(unix.EINVAL)
	}
	return ok(0)
}

func sysZero(p *Process, a [6]uint64) Result { return ok(0) }

func sysNosys(p *Process, a [6]uint64) Result { return fail(unix.ENOSYS) }

// sysRefused answers what the sandbox forbids: no sockets, no new
// programs or processes, no debugging, no mounts, no privilege changes.
func sysRefused(p *Process, a [6]uint64) Result { return fail(unix.EPERM) }

func sysNoChild(p *Process, a [6]uint64) Result { return fail(unix.ECHILD) }

func sysSchedGetaffinity(p *Process, a [6]uint64) Result {
	if a[0] != 0 && a[0] != pid {
		return fail(unix.ESRCH)
	}
	if a[1] < 8 || a[1]%8 != 0 {
		return fail(unix.EINVAL)
	}
	return okOrFail2(p.put64(a[2], 1), 8) // CPU 0 only
}

func sysSchedSetaffinity(p *Process, a [6]uint64) Result {
	if a[0] != 0 && a[0] != pid {
		return fail(unix.ESRCH)
	}
	b, e := p.rmem(a[2], min(a[1], 8))
	if e != 0 {
		return fail(e)
	}
	if len(b) == 0 || b[0]&1 == 0 {
		return fail(unix.EINVAL)
	}
	return ok(0)
}

func sysGetcpu(p *Process, a [6]uint64) Result {
	for _, addr := range a[:2] {
		if addr != 0 {
			if e := p.put32(addr, 0); e != 0 {
				return fail(e)
			}
		}
	}
	return ok(0)
}

const (
	archSetGS    = 0x1001
	archSetFS    = 0x1002
	archGetFS    = 0x1003
	archGetGS    = 0x1004
	archGetCPUID = 0x1011
	archSetCPUID = 0x1012
)

func sysArchPrctl(p *Process, a [6]uint64) Result {
	switch a[0] {
	case archSetFS:
		if a[1] >= 1<<47 { // not a canonical user address
			return fail(unix.EPERM)
		}
		p.cur().fsBase = a[1]
		p.cur().reseeded = false // the thread's state is found from here now
		return Result{FSBase: a[1], SetFS: true}
	case archGetFS:
		return okOrFail(p.put64(a[1], p.cur().fsBase))
	case archGetCPUID:
		return ok(1)
	case archSetCPUID:
		return fail(unix.ENODEV)
	}
	// GS is the monitor's: no program we serve sets it.
	return fail(unix.EINVAL)
}

func sysPrctl(p *Process, a [6]uint64) Result {
	switch a[0] {
	case unix.PR_SET_NAME:
		_, e := p.rmem(a[1], 1)
		return okOrFail(e)
	case unix.PR_GET_NAME:
		b := make([]byte, 16)
		copy(b, "app")
		return okOrFail(p.put(a[1], b))
	case unix.PR_GET_DUMPABLE, unix.PR_GET_NO_NEW_PRIVS:
		return ok(1)
	case unix.PR_SET_DUMPABLE, unix.PR_SET_PDEATHSIG, unix.PR_SET_VMA, unix.PR_SET_TIMERSLACK:
		return ok(0)
	case unix.PR_SET_NO_NEW_PRIVS:
		if a[1] != 1 {
			return fail(unix.EINVAL)
		}
		return ok(0)
	case unix.PR_CAPBSET_READ:
		return ok(0)
	}
	return fail(unix.EINVAL)
}

// ---- signals: recorded per process (dispositions) and per thread (mask,
// alternate stack), never delivered to a handler ----

const (
	sigDFL = 0
	sigIGN = 1
)

func sigbit(sig unix.Signal) uint64 { return 1 << (sig - 1) }

const unblockable = 1<<(unix.SIGKILL-1) | 1<<(unix.SIGSTOP-1)

// ignoredByDefault: signals whose default action is to ignore, and the
// job-control stops, which have no meaning without a shell.
func ignoredByDefault(sig unix.Signal) bool {
	switch sig {
	case unix.SIGCHLD, unix.SIGCONT, unix.SIGURG, unix.SIGWINCH,
		unix.SIGSTOP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU:
		return true
	}
	return false
}

// raise sends sig to thread t of the process. A signal that would end a
// Linux process ends this one with status 128+sig (what a shell reports
// for a signal death); one with a handler installed does too, because
// handlers are not run; a blocked one stays pending until unblocked
// (pending is kept per process: an approximation for a signal blocked in
// one thread only). Go's preemption signal, SIGURG, is ignored by default
// and so dropped even with Go's handler installed: goroutines are then
// preempted at their own safe points only, which Go falls back to.
func (p *Process) raise(t *thread, sig unix.Signal) Result {
	if sig == 0 {
		return ok(0)
	}
	if sig != unix.SIGKILL {
		if p.st.sigact[sig].handler == sigIGN || ignoredByDefault(sig) {
			return ok(0)
		}
		if t.sigmask&sigbit(sig) != 0 {
			p.st.pending |= sigbit(sig)
			return ok(0)
		}
	}
	return exitWith(128 + int(sig))
}

func signalArg(v uint64) (unix.Signal, unix.Errno) {
	if v > 64 {
		return 0, unix.EINVAL
	}
	return unix.Signal(v), 0
}

func sysKill(p *Process, a [6]uint64) Result {
	sig, e := signalArg(a[1])
	if e != 0 {
		return fail(e)
	}
	switch int32(a[0]) {
	case 0, pid, -pid:
		return p.raise(p.cur(), sig)
	}
	return fail(unix.EPERM)
}

func sysTkill(p *Process, a [6]uint64) Result {
	sig, e := signalArg(a[1])
	switch {
	case e != 0 || int32(a[0]) <= 0:
		return fail(unix.EINVAL)
	}
	t := p.thread(a[0])
	if t == nil {
		return fail(unix.ESRCH)
	}
	return p.raise(t, sig)
}

func sysTgkill(p *Process, a [6]uint64) Result {
	sig, e := signalArg(a[2])
	switch {
	case e != 0 || int32(a[0]) <= 0 || int32(a[1]) <= 0:
		return fail(unix.EINVAL)
	case a[0] != pid:
		return fail(unix.EPERM)
	}
	t := p.thread(a[1])
	if t == nil {
		return fail(unix.ESRCH)
	}
	return p.raise(t, sig)
}

func sysRtSigaction(p *Process, a [6]uint64) Result {
	sig, act, oact := unix.Signal(a[0]), a[1], a[2]
	if a[3] != 8 || a[0] < 1 || a[0] > 64 {
		return fail(unix.EINVAL)
	}
	var na sigaction
	if act != 0 {
		b, e := p.rmem(act, 32)
		if e != 0 {
			return fail(e)
		}
		if sig == unix.SIGKILL || sig == unix.SIGSTOP {
			return fail(unix.EINVAL)
		}
		na = sigaction{le.Uint64(b), le.Uint64(b[8:]), le.Uint64(b[16:]), le.Uint64(b[24:]) &^ unblockable}
	}
	if oact != 0 {
		o := p.st.sigact[sig]
		b := make([]byte, 32)
		le.PutUint64(b, o.handler)
		le.PutUint64(b[8:], o.flags)
		le.PutUint64(b[16:], o.restorer)
		le.PutUint64(b[24:], o.mask)
		if e := p.put(oact, b); e != 0 {
			return fail(e)
		}
	}
	if act != 0 {
		p.st.sigact[sig] = na
		if na.handler == sigIGN || na.handler == sigDFL && ignoredByDefault(sig) {
			p.st.pending &^= sigbit(sig)
		}
	}
	return ok(0)
}

func sysRtSigprocmask(p *Process, a [6]uint64) Result {
	how, set, oset := a[0], a[1], a[2]
	if a[3] != 8 {
		return fail(unix.EINVAL)
	}
	var m uint64
	if set != 0 {
		if how > unix.SIG_SETMASK {
			return fail(unix.EINVAL)
		}
		v, e := p.get64(set)
		if e != 0 {
			return fail(e)
		}
		m = v
	}
	t := p.cur()
	if oset != 0 {
		if e := p.put64(oset, t.sigmask); e != 0 {
			return fail(e)
		}
	}
	if set == 0 {
		return ok(0)
	}
	switch how {
	case unix.SIG_BLOCK:
		t.sigmask |= m
	case unix.SIG_UNBLOCK:
		t.sigmask &^= m
	case unix.SIG_SETMASK:
		t.sigmask = m
	}
	t.sigmask &^= unblockable
	// A pending signal that is now unblocked is delivered.
	if ready := p.st.pending &^ t.sigmask; ready != 0 {
		for s := unix.Signal(1); s <= 64; s++ {
			if ready&sigbit(s) != 0 {
				p.st.pending &^= sigbit(s)
				return p.raise(t, s)
			}
		}
	}
	return ok(0)
}

func sysRtSigpending(p *Process, a [6]uint64) Result {
	if a[1] > 8 {
		return fail(unix.EINVAL)
	}
	var b [8]byte
	le.PutUint64(b[:], p.st.pending&p.cur().sigmask)
	return okOrFail(p.put(a[0], b[:a[1]]))
}

// Waiting for a signal nothing can send would never end.
func sysPause(p *Process, a [6]uint64) Result {
	return stop(errors.New("waiting for a signal with no one to send it"))
}

const (
	ssOnstack    = 1
	ssDisable    = 2
	ssAutodisarm = 1 << 31
	minSigstksz  = 2048
)

func sysSigaltstack(p *Process, a [6]uint64) Result {
	ss, old := a[0], a[1]
	var ns altstack
	if ss != 0 {
		b, e := p.rmem(ss, 24)
		if e != 0 {
			return fail(e)
		}
		ns = altstack{le.Uint64(b), int32(le.Uint32(b[8:])), le.Uint64(b[16:])}
		switch mode := uint32(ns.flags) &^ ssAutodisarm; mode {
		case ssDisable:
			ns = altstack{flags: ssDisable}
		case 0, ssOnstack:
			if ns.size < minSigstksz {
				return fail(unix.ENOMEM)
			}
			ns.flags &^= ssOnstack
		default:
			return fail(unix.EINVAL)
		}
	}
	if old != 0 {
		b := make([]byte, 24)
		cur := p.cur().altstack
		le.PutUint64(b, cur.sp)
		le.PutUint32(b[8:], uint32(cur.flags))
		le.PutUint64(b[16:], cur.size)
		if e := p.put(old, b); e != 0 {
			return fail(e)
		}
	}
	if ss != 0 {
		p.cur().altstack = ns
	}
	return ok(0)
}
