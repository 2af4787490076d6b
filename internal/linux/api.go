// Package linux serves the Linux system calls of an ordinary static
// x86-64 Linux program (gcc -static, musl, CGO_ENABLED=0 Go) running as an
// hvt guest: one table of calls, each handler small and validating every
// guest pointer and length against guest memory before using it; unknown
// calls answered ENOSYS, counted and reported, never a host crash.
//
// The package knows nothing about KVM: the monitor (internal/hvt) traps a
// guest's SYSCALL, hands the number and arguments to Process.Call, writes
// the result back into RAX and resumes the guest. Everything a call can
// touch is in Config (guest memory, the request body, the response and log
// writers, the clock, randomness, the read-only app files) or in the
// Process (file descriptors, the program break, mappings, a per-request
// in-memory /tmp), so a Process lives exactly as long as one request.
package linux

import (
	"io"
	"io/fs"
	"time"
)

// Config is what a Process may use. Mem is the guest's memory, identity
// mapped (guest-virtual = guest-physical = index into Mem).
type Config struct {
	Mem []byte
	// Heap is the guest address range [HeapStart, HeapEnd) that brk and
	// anonymous mmap may hand out (page-aligned, inside Mem, writable in
	// the guest's page tables); nothing outside it is ever given to the
	// program as new memory.
	HeapStart, HeapEnd uint64
	// Stdin is the request body (at most StdinLen bytes; < 0: until EOF);
	// Stdout the CGI response, Stderr the app's log. The monitor's writers
	// enforce the output and log limits; a write error from them ends the
	// program (ActionStop).
	Stdin    io.Reader
	StdinLen int64
	Stdout   io.Writer
	Stderr   io.Writer
	// Now is the wall clock; Monotonic nanoseconds since the request
	// started. Random fills a buffer with fresh random bytes (per request).
	Now       func() time.Time
	Monotonic func() int64
	Random    func([]byte)
	// Files are the app's read-only files, seen under /app (nil: none).
	Files fs.FS
	// HeapZero says the heap is all zero bytes when the process starts (a
	// fresh machine, or one restored to its template): then mmap and brk
	// need not clear memory never handed out before, which for the Go
	// runtime's gigabyte of reservations is most of it.
	HeapZero bool
	// Sleep blocks for d or until the request's deadline, whichever is
	// first, and reports whether the whole d passed.
	Sleep func(d time.Duration) bool
	// ReadyOnAccept makes a server program's first wait for a connection
	// with none pending its ready point (ActionReady): the snapshot of a
	// server app is taken there, once per deploy.
	ReadyOnAccept bool
	// Request is the request as SysRequest hands it over (EncodeRequest:
	// its arguments and environment), for a program resumed from its
	// ready point. nil only in the snapshot run, where SysReady ends the
	// run instead of returning.
	Request []byte
	// GoRuntime says the program is a Go binary (the monitor knows from
	// its build note): at a ready point that declares no random state
	// (an unmodified server's first accept), the process finds the Go
	// runtime's itself, or refuses the ready point (dust.go).
	GoRuntime bool
}

// Action tells the monitor what to do after a call.
type Action int

const (
	// ActionContinue: write Result.Ret to RAX and resume the guest.
	ActionContinue Action = iota
	// ActionExit: the program exited (exit_group, or exit of its last
	// thread) with Result.Status.
	ActionExit
	// ActionStop: the call could not be served (a writer failed, the
	// deadline passed while blocked): end the run; Result.Err says why.
	ActionStop
	// ActionReady: the program reached its ready point (the Dust ready
	// call, or, with Config.ReadyOnAccept, a wait for a connection with
	// none pending). The monitor takes the post-init snapshot there;
	// Result.Ret is what RAX holds when a request resumes the program
	// (the monitor may replace it with the request's own value).
	// At a wait for a connection Result.Restart is set and Ret is the
	// call's number: the snapshot's registers are those of the thread
	// about to re-execute its accept, poll or epoll_wait (RAX = Ret, RIP
	// back on the SYSCALL instruction), so a copy handed a connection
	// (Process.Connect) completes the call as if it had waited for it.
	ActionReady
	// ActionIdle: a server program (Config.ReadyOnAccept, or one that was
	// handed connections with Process.Connect) waits for a connection
	// with none pending, and every connection delivered so far is
	// finished: written to its end (shutdown, or closed). For a server
	// app this is the end of the request. Result.Restart is set and Ret
	// is the call's number, as for ActionReady at a connection wait: a
	// monitor that delivers another connection may resume the program
	// there; one that does not must not resume it (it would be idle
	// again at once).
	ActionIdle
)

// Result of one system call.
type Result struct {
	Ret    uint64 // the value for RAX: a result, or -errno as uint64
	Action Action
	Status int   // exit status, for ActionExit
	Err    error // for ActionStop
	// FSBase, when SetFS is true, is the new FS base the monitor must load
	// (arch_prctl(ARCH_SET_FS)) before resuming.
	FSBase uint64
	SetFS  bool

	// Threads (thread.go). Next, when not 0, is the thread that runs after
	// this call: the monitor saves the calling thread's registers as they
	// are on return from the call (unless Gone: the caller exited) and
	// loads Next's; Ret is then Next's RAX. Restart: the thread that runs
	// re-executes its system call (RAX = Ret, the call's number; RIP back
	// onto the SYSCALL instruction) because what blocked it has changed.
	// Child, when not nil, is a thread this call created.
	Next    int
	Gone    bool
	Restart bool
	Child   *Child
}

// Process is one request's Linux process: one or more green threads
// (thread.go) on the guest's one vCPU. It is not safe for concurrent use.
type Process struct {
	cfg Config
	st  state
}

// New makes the process for one request.
func New(cfg Config) *Process { return newProcess(cfg) }

// Call serves system call nr with its six arguments (RDI, RSI, RDX, R10,
// R8, R9).
func (p *Process) Call(nr uint64, args [6]uint64) Result { return p.call(nr, args) }

// Unknown reports the system calls answered ENOSYS or EPERM so far, and
// those refused otherwise (connect, other socket families and types), by
// name (or "syscall_N"), with how many times each: the monitor logs them
// once per request and counts them per app.
func (p *Process) Unknown() map[string]int { return p.unknown() }

// Calls is how many system calls the process made.
func (p *Process) Calls() int { return p.calls() }

// SysName is the name of x86-64 system call nr ("syscall_N" if unknown),
// for reports that count calls by name.
func SysName(nr uint64) string { return sysName(nr) }
