package hvt

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// vCPU worker threads.
//
// Every KVM_RUN happens on a long-lived OS thread that a worker goroutine
// holds locked for life: the kernel then never moves a vCPU between
// threads (which costs a synchronize_rcu on Linux 6.12 and older), and each
// worker thread can be put under a seccomp filter that allows only what the
// run loop and the Go runtime need (seccomp.go). Filters are per thread
// (no TSYNC), so the rest of the Go runtime is unaffected; a locked thread
// never spawns other threads (newm hands thread creation on a locked M to
// the template thread, which LockOSThread starts before the filter goes
// on), so the filter does not leak into them either.

// seccompOn says whether new worker threads install the filter.
var seccompOn atomic.Bool

func init() { seccompOn.Store(true) }

// SetSeccomp turns the vCPU-thread seccomp filter on or off for workers
// started from now on (default on). Off is for hosts without seccomp and
// for debugging with tools that need more system calls.
func SetSeccomp(on bool) { seccompOn.Store(on) }

// installFilter puts the calling thread under vcpuFilter (seccomp.go).
func installFilter() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("hvt: PR_SET_NO_NEW_PRIVS: %w", err)
	}
	f := vcpuFilter(unix.Getpid())
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
