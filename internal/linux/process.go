package linux

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/sys/unix"
)

// The guest's ABI is x86-64 whatever the host is, and the table below is
// keyed by x/sys/unix's numbers: they are x86-64's only on an amd64 build.
// A build for another host architecture stops here (a negative constant
// converted to uint) rather than serving arm64 numbers to an x86-64 guest.
const _ = uint(unix.SYS_NEWFSTATAT-262) + uint(262-unix.SYS_NEWFSTATAT)

// Identities the program sees. pid 1 is avoided on purpose: init gets
// special signal treatment in Linux and programs (the Go runtime among
// them, as TinyKVM found) behave differently there; 2 is an ordinary
// process whose parent is init. uid/gid 1000 is the usual first
// unprivileged user: 0 would make programs think they may do what root
// may, and 65534 (nobody) is special-cased by some tools.
const (
	pid  = 2
	ppid = 1
	tid  = pid // the main thread is the thread-group leader; clone numbers the others from 3
	uid  = 1000
	gid  = 1000
)

// Limits that do not depend on Config.
const (
	maxFDs     = 1024       // RLIMIT_NOFILE, hard and soft
	maxMaps    = 65530      // vm.max_map_count's default
	maxRW      = 0x7ffff000 // MAX_RW_COUNT: Linux's cap on one read/write
	maxIOV     = 1024       // UIO_MAXIOV
	pathMax    = 4096       // PATH_MAX, with the NUL
	nameMax    = 255        // NAME_MAX
	maxRandom  = 33554431   // getrandom's per-call cap (INT_MAX >> 6)
	stackLimit = 8 << 20    // RLIMIT_STACK reported unless SetStackSize says otherwise
	pageSize   = 4096
	// [0, nullPage) is never a valid pointer: Linux's vm.mmap_min_addr
	// default, so no Linux program has memory there, and the hvt monitor
	// keeps its own pages (GDT, page tables, TSS) in exactly that range.
	nullPage = 64 << 10
)

type handler func(p *Process, a [6]uint64) Result

// rlimit is one resource limit, {cur, max} as struct rlimit64 holds it.
type rlimit struct{ cur, max uint64 }

type sigaction struct{ handler, flags, restorer, mask uint64 }

type altstack struct {
	sp    uint64
	flags int32
	size  uint64
}

// region is a range of guest memory system calls must not use as a buffer
// (see Deny and ReadOnly).
type region struct {
	start, end uint64
	readable   bool
}

// span is a page run handed out by mmap or mremap: [start, end).
type span struct{ start, end uint64 }

type state struct {
	ncalls  int
	unknown map[string]int

	regions []region

	brk   uint64
	spans []span // sorted, disjoint, non-adjacent, inside the heap, above the break's page

	fds    []*fdesc // index is the descriptor; nil is free
	cwd    string
	tmp    *tmpfs
	umask  uint32
	inoSeq uint64

	stdinLeft int64 // < 0: unbounded
	stdinEOF  bool

	rlim    [rlimNlimits]rlimit
	sigact  [65]sigaction // 1..64
	pending uint64

	threads     []*thread // live, in creation order (round-robin order)
	cur         *thread   // the one running
	lastTid     int
	threadsMade int
	waitSeq     uint64
	ioGen       uint64   // bumped when a pipe, eventfd or socket changes (wIO)
	net         netState // sockets (net.go)
	clean       []span   // heap ranges known to be zero (mm.go)
	lazy        []span   // PROT_NONE mappings not cleared yet (mm.go)

	start time.Time

	// Dust's ready point (dust.go): whether the program reached it, the
	// clock then (a copy's clock continues from there), and the random
	// state every copy refills, with the states refilled so far.
	readied bool
	readyAt int64
	rand    *randDesc
	seeded  map[uint64]bool
}

func newProcess(cfg Config) *Process {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Monotonic == nil {
		t0 := time.Now()
		cfg.Monotonic = func() int64 { return int64(time.Since(t0)) }
	}
	if cfg.Random == nil {
		cfg.Random = func(b []byte) { rand.Read(b) }
	}
	if cfg.Stdin == nil {
		cfg.Stdin = eofReader{}
	}
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	if cfg.Sleep == nil {
		// Without a monitor there is nothing to wait for: a sleep ends at
		// once and counts as complete (tests; the monitor always sets it).
		cfg.Sleep = func(time.Duration) bool { return true }
	}
	// A heap range that is not page-aligned or not inside Mem is shrunk to
	// the part that is, so that no later check has to trust it.
	mem := uint64(len(cfg.Mem))
	hs, he := max(cfg.HeapStart, nullPage), min(cfg.HeapEnd, mem)
	if hs < he {
		hs, he = alignUp(hs), he&^(pageSize-1)
	}
	if hs >= he {
		hs, he = 0, 0
	}
	cfg.HeapStart, cfg.HeapEnd = hs, he

	p := &Process{cfg: cfg}
	st := &p.st
	st.unknown = map[string]int{}
	st.regions = []region{{start: 0, end: nullPage}}
	st.brk = hs
	st.cwd = "/"
	st.umask = 0o022
	st.tmp = newTmpfs()
	st.stdinLeft = cfg.StdinLen
	main := p.newThread(tid)
	st.threads, st.cur, st.lastTid = []*thread{main}, main, tid
	if cfg.HeapZero && hs < he {
		st.clean = []span{{hs, he}}
	}
	st.start = cfg.Now()
	for i := range st.rlim {
		st.rlim[i] = rlimit{unix.RLIM_INFINITY, unix.RLIM_INFINITY}
	}
	st.rlim[unix.RLIMIT_NOFILE] = rlimit{maxFDs, maxFDs}
	st.rlim[unix.RLIMIT_STACK] = rlimit{stackLimit, unix.RLIM_INFINITY}
	st.rlim[unix.RLIMIT_CORE] = rlimit{0, unix.RLIM_INFINITY}
	st.fds = []*fdesc{
		{f: p.newOfile(node{kind: kStdin, path: "/dev/stdin"}, unix.O_RDONLY)},
		{f: p.newOfile(node{kind: kStdout, path: "/dev/stdout"}, unix.O_WRONLY)},
		{f: p.newOfile(node{kind: kStderr, path: "/dev/stderr"}, unix.O_WRONLY)},
	}
	return p
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

func (p *Process) call(nr uint64, a [6]uint64) Result {
	p.st.ncalls++
	if p.st.cur == nil {
		return stop(errThreadGone)
	}
	if p.st.rand != nil && p.st.seeded != nil {
		// A copy resumed from a ready point (Clone makes seeded): the
		// snapshot's own process never refills anything.
		p.reseed(p.st.cur)
	}
	var r Result
	switch {
	case nr == SysReady:
		r = sysReady(p, a)
	case nr == SysRequest:
		r = sysRequest(p, a)
	case nr < uint64(len(table)) && table[nr] != nil:
		r = table[nr](p, a)
	default:
		r = fail(unix.ENOSYS)
	}
	if r.Action == ActionStop && errors.Is(r.Err, errBlockForever) && len(p.st.threads) > 1 {
		// Another thread may fill or drain it: wait, then try again.
		r = p.blockIO(nr, noDeadline, 0)
	}
	if r.Action == ActionReady && p.st.rand == nil && p.cfg.GoRuntime {
		d, err := p.locateGoRand()
		if err != nil {
			return stop(err)
		}
		p.st.rand = d
	}
	if r.Action == ActionContinue && (r.Ret == errno(unix.ENOSYS) || r.Ret == errno(unix.EPERM)) {
		p.countRefused(nr)
	}
	return r
}

// countRefused counts call nr as not served (Unknown). A guest can try
// every number there is: past maxUnknownNames distinct names the rest are
// counted together.
func (p *Process) countRefused(nr uint64) {
	name := sysName(nr)
	if _, seen := p.st.unknown[name]; !seen && len(p.st.unknown) >= maxUnknownNames {
		name = "others"
	}
	p.st.unknown[name]++
}

// maxUnknownNames bounds the distinct names Unknown reports.
const maxUnknownNames = 64

func (p *Process) unknown() map[string]int {
	m := make(map[string]int, len(p.st.unknown))
	for k, v := range p.st.unknown {
		m[k] = v
	}
	return m
}

func (p *Process) calls() int { return p.st.ncalls }

// Close releases what the process holds on the host (open app files). The
// monitor calls it when the request ends; calls after Close are not served.
func (p *Process) Close() error {
	for fd := range p.st.fds {
		p.closeFD(fd)
	}
	p.st.fds = nil
	p.st.tmp = newTmpfs()
	return nil
}

// Deny makes guest memory [start, end) unusable as a system-call buffer:
// a pointer into it gets EFAULT, as an unmapped or supervisor-only page
// would in Linux. The monitor denies its own pages (page tables, GDT,
// the system-call stub) and guard pages: they are inside Mem but the
// program must not be able to make the monitor write them on its behalf.
func (p *Process) Deny(start, end uint64) { p.restrict(start, end, false) }

// ReadOnly makes guest memory [start, end) readable but not writable by
// system calls (a read() into the program's text gets EFAULT, as it
// would in Linux).
func (p *Process) ReadOnly(start, end uint64) { p.restrict(start, end, true) }

func (p *Process) restrict(start, end uint64, readable bool) {
	if start < end {
		p.st.regions = append(p.st.regions, region{start, end, readable})
	}
}

// SetStackSize sets the RLIMIT_STACK the program sees to the size of the
// stack the monitor gave it (the default is Linux's 8 MiB).
func (p *Process) SetStackSize(n uint64) { p.st.rlim[unix.RLIMIT_STACK].cur = n }

// FSBase is the FS base the program last set with arch_prctl (0 if none),
// for a monitor that saves and restores it.
func (p *Process) FSBase() uint64 { return p.st.cur.fsBase }

func sysName(nr uint64) string {
	if n, ok := sysNames[nr]; ok {
		return n
	}
	return fmt.Sprintf("syscall_%d", nr)
}

// errno is -e as the kernel puts it in RAX.
func errno(e unix.Errno) uint64 { return -uint64(e) }

func ok(v uint64) Result         { return Result{Ret: v} }
func fail(e unix.Errno) Result   { return Result{Ret: errno(e)} }
func stop(err error) Result      { return Result{Action: ActionStop, Err: err, Ret: errno(unix.EINTR)} }
func exitWith(status int) Result { return Result{Action: ActionExit, Status: status} }
func alignUp(x uint64) uint64    { return (x + pageSize - 1) &^ (pageSize - 1) }
func pageAligned(x uint64) bool  { return x&(pageSize-1) == 0 }
func okOrFail(e unix.Errno) Result {
	if e != 0 {
		return fail(e)
	}
	return ok(0)
}

// exitError ends the program with a status from inside a file operation
// (a write to a pipe nobody reads raises SIGPIPE).
type exitError struct{ status int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.status) }

// result turns what a file operation returned into a Result: an errno is
// the call's answer, an exitError ends the program, any other error stops
// the run (a monitor writer failed, the body could not be read).
func result(n int, err error) Result {
	if err == nil {
		return ok(uint64(n))
	}
	var e unix.Errno
	if errors.As(err, &e) {
		return fail(e)
	}
	var x exitError
	if errors.As(err, &x) {
		return exitWith(x.status)
	}
	return stop(err)
}

const rlimNlimits = 16 // RLIM_NLIMITS: RLIMIT_CPU .. RLIMIT_RTTIME
