package hvt

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
)

// vCPU worker threads.
//
// Every KVM_RUN happens on a long-lived OS thread that a worker goroutine
// holds locked for life: the kernel then never moves a vCPU between
// threads (which costs a synchronize_rcu on Linux 6.12 and older), and each
// worker thread can be put under a seccomp filter that allows only what the
// run loop needs. Filters are per thread (no TSYNC), so the rest of the Go
// runtime is unaffected; a locked thread never spawns other threads (the Go
// runtime hands thread creation to its template thread), so the filter does
// not leak into them either.

// seccompOn says whether new worker threads install the filter.
var seccompOn atomic.Bool

func init() { seccompOn.Store(true) }

// SetSeccomp turns the vCPU-thread seccomp filter on or off for workers
// started from now on (default on). Off is for hosts without seccomp and
// for debugging with tools that need more system calls.
func SetSeccomp(on bool) { seccompOn.Store(on) }

// vcpuSyscalls are what a vCPU worker thread may do once running guests:
// KVM_RUN and KVM_GET_REGS (ioctl, checked by request number below), I/O on
// the response and request streams the hypercalls touch, and what the Go
// runtime does on any thread (memory, futexes, signals, clocks, yielding).
// close is there because a network write that held the last reference to
// a connection another goroutine closed performs the actual close.
var vcpuSyscalls = []uintptr{
	unix.SYS_READ, unix.SYS_WRITE, unix.SYS_READV, unix.SYS_WRITEV, unix.SYS_CLOSE,
	unix.SYS_FUTEX, unix.SYS_MMAP, unix.SYS_MUNMAP, unix.SYS_MADVISE, unix.SYS_MPROTECT,
	unix.SYS_RT_SIGRETURN, unix.SYS_RT_SIGPROCMASK, unix.SYS_SIGALTSTACK,
	unix.SYS_SCHED_YIELD, unix.SYS_NANOSLEEP, unix.SYS_CLOCK_GETTIME, unix.SYS_CLOCK_NANOSLEEP,
	unix.SYS_GETTID, unix.SYS_GETPID, unix.SYS_TGKILL, unix.SYS_GETRANDOM,
	unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_CTL, unix.SYS_EXIT, unix.SYS_EXIT_GROUP,
}

// vcpuIoctls are the only ioctl requests a worker thread may issue.
var vcpuIoctls = []uintptr{kvm.KVM_RUN, kvm.KVM_GET_REGS}

// seccomp_data offsets (<linux/seccomp.h>).
const (
	sdNr   = 0
	sdArch = 4
	sdArg1 = 16 + 8 // low 32 bits of args[1] (little-endian)
)

// vcpuFilter builds the BPF program: right architecture, an allowed system
// call, and for ioctl an allowed request; anything else kills the process,
// because a monitor thread doing something unexpected is compromised or
// broken, and either way must not go on.
func vcpuFilter() []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jeq := func(k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: k, Jt: jt, Jf: jf}
	}
	const (
		ld   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		ret  = unix.BPF_RET | unix.BPF_K
		kill = unix.SECCOMP_RET_KILL_PROCESS
	)
	n := len(vcpuSyscalls)
	var p []unix.SockFilter
	p = append(p, stmt(ld, sdArch), jeq(unix.AUDIT_ARCH_X86_64, 1, 0), stmt(ret, kill), stmt(ld, sdNr))
	// Each allowed number jumps to the ALLOW at the end of this block.
	for i, nr := range vcpuSyscalls {
		p = append(p, jeq(uint32(nr), uint8(n-i+1), 0))
	}
	// ioctl: go check the request; otherwise kill.
	p = append(p, jeq(unix.SYS_IOCTL, 2, 0), stmt(ret, kill), stmt(ret, unix.SECCOMP_RET_ALLOW))
	p = append(p, stmt(ld, sdArg1))
	m := len(vcpuIoctls)
	for i, req := range vcpuIoctls {
		p = append(p, jeq(uint32(req), uint8(m-i), 0))
	}
	p = append(p, stmt(ret, kill), stmt(ret, unix.SECCOMP_RET_ALLOW))
	return p
}

// installFilter puts the calling thread under vcpuFilter.
func installFilter() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("hvt: PR_SET_NO_NEW_PRIVS: %w", err)
	}
	f := vcpuFilter()
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&prog))); e != 0 {
		return fmt.Errorf("hvt: seccomp: %w", e)
	}
	return nil
}

// worker is one locked OS thread that runs machines.
type worker struct {
	jobs     chan func()
	filtered bool
	err      error // set at start when the filter could not be installed
}

const maxIdleWorkers = 64

var workers struct {
	mu   sync.Mutex
	idle []*worker
}

func startWorker() *worker {
	w := &worker{jobs: make(chan func())}
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread lives and dies with this goroutine
		if seccompOn.Load() {
			w.err = installFilter()
			w.filtered = w.err == nil
		}
		close(ready)
		for f := range w.jobs {
			f()
		}
		// Returning while locked ends the thread, filter and all.
	}()
	<-ready
	return w
}

// onWorker runs f on a vCPU worker thread and waits for it.
func onWorker(f func()) error {
	workers.mu.Lock()
	var w *worker
	if n := len(workers.idle); n > 0 {
		w = workers.idle[n-1]
		workers.idle = workers.idle[:n-1]
	}
	workers.mu.Unlock()
	if w == nil {
		w = startWorker()
		if w.err != nil {
			close(w.jobs)
			return w.err
		}
	}
	done := make(chan struct{})
	w.jobs <- func() { f(); close(done) }
	<-done
	workers.mu.Lock()
	if len(workers.idle) < maxIdleWorkers {
		workers.idle = append(workers.idle, w)
		w = nil
	}
	workers.mu.Unlock()
	if w != nil {
		close(w.jobs)
	}
	return nil
}
