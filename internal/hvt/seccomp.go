package hvt

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
)

// The vCPU worker threads' seccomp filter.
//
// A worker thread runs Dust's run loop and, like every Go thread, whatever
// the Go runtime decides to do on it: grow the heap, help the collector,
// stop the world, hand its P to another thread, take a preemption or
// profiling signal, exit. Any of those making a system call the filter does
// not allow kills the whole server, so the allow-list is the run loop's
// needs plus every call the runtime (go1.26, linux/amd64) can make on an
// arbitrary M. The runtime's call sites that can only run at start-up, on
// sysmon or the template thread, or on the thread of a goroutine calling a
// specific API Dust never calls on a worker, are listed in
// runtimeExcluded with the reason. seccomp_test.go re-derives the
// runtime's system calls from $GOROOT/src and fails on one that is in
// neither list, so a Go upgrade cannot quietly bring back a killing call.

// vcpuSyscalls are allowed with any arguments. Where a line names runtime
// code, that is where the runtime can reach the call from any M; the order
// puts the frequent ones first, since the filter is a linear scan run on
// every system call of the thread.
var vcpuSyscalls = []uintptr{
	unix.SYS_FUTEX, // every lock, note and park (lock_futex.go, os_linux.go futexsleep/futexwakeup)
	unix.SYS_WRITE, // response stream; crash and print output to fd 2 (write1); netpollBreak's eventfd write
	unix.SYS_READ,  // request stream; netpoll drains its eventfd (netpoll_epoll.go), run from startTheWorld on any M
	unix.SYS_READV, // run loop: request stream
	unix.SYS_WRITEV,
	// A network write that held the last reference to a connection another
	// goroutine closed performs the actual close.
	unix.SYS_CLOSE,
	unix.SYS_CLOCK_GETTIME,   // nanotime1/walltime when the vDSO is missing or falls back
	unix.SYS_SCHED_YIELD,     // osyield: spinning locks, stop-the-world, runqgrab
	unix.SYS_NANOSLEEP,       // usleep: lock back-off, stop-the-world waits, crash relay
	unix.SYS_CLOCK_NANOSLEEP, // kept from the run loop's original list
	unix.SYS_RT_SIGRETURN,    // the restorer of every Go signal handler (sigreturn__sigaction)
	unix.SYS_RT_SIGPROCMASK,  // sigblock in mexit; unblocksig and the signal mask dance around signals
	unix.SYS_SIGALTSTACK,     // adjustSignalStack in the signal handler; unminitSignals in mexit
	unix.SYS_MADVISE,         // sysUnused (scavenging, any M that allocates), sysHugePage, sysNoHugePage, sysFault
	unix.SYS_MUNMAP,          // sysFree
	unix.SYS_GETTID,          // raise
	unix.SYS_GETPID,          // raise, signalM (preemption of another M from this one)
	unix.SYS_GETRANDOM,       // the __vdso_getrandom fallback behind crypto/rand
	unix.SYS_EPOLL_PWAIT,     // netpoll(0) in startTheWorldWithSema, findRunnable
	unix.SYS_EPOLL_CTL,       // netpollopen/netpollclose for descriptors opened or closed here; netpollinit
	// netpollinit: the first timer added in the process (time.go) may be on
	// any M, and initialises the poller there.
	unix.SYS_EPOLL_CREATE1,
	unix.SYS_EVENTFD2,
	// Three calls of setThreadCPUProfiler, which execute() runs on every M
	// when the CPU profiling rate changed since the M last scheduled.
	unix.SYS_TIMER_CREATE,
	unix.SYS_TIMER_SETTIME,
	unix.SYS_TIMER_DELETE,
	unix.SYS_EXIT,       // exitThread: a worker whose goroutine returns ends its thread (mexit)
	unix.SYS_EXIT_GROUP, // exit: fatal errors, os.Exit
	// The kernel, not Go, issues this when a timed nanosleep or futex wait
	// was interrupted by a stop (SIGSTOP, the cgroup freezer, a debugger
	// attaching) and resumes afterwards: seccomp sees it as a system call.
	unix.SYS_RESTART_SYSCALL,
}

// vcpuCheckedSyscalls are allowed only with the arguments vcpuFilter
// checks, listed here for the tests and the documentation:
//
//   - ioctl: request KVM_RUN or KVM_GET_REGS (vcpuIoctls), nothing else the
//     run loop needs.
//   - prctl: PR_SET_VMA, PR_SET_VMA_ANON_NAME only. The runtime's one
//     prctl site after start-up is setVMAName (set_vma_name_linux.go),
//     which names every new heap, stack and metadata mapping from the thread
//     that maps it; any other option (PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS,
//     PR_SET_DUMPABLE, ...) would change the thread or the process.
//   - mmap, mprotect: never PROT_EXEC. The runtime maps only read-write or
//     inaccessible memory (sysAlloc, sysMap, sysReserve, sysFault,
//     vgetrandom states), and the run loop maps nothing executable.
//   - kill, tgkill: only this process. The runtime signals its own threads
//     (signalM, raise) and itself (raiseproc, the GOTRACEBACK=crash relay).
var vcpuCheckedSyscalls = []uintptr{
	unix.SYS_IOCTL, unix.SYS_PRCTL, unix.SYS_MMAP, unix.SYS_MPROTECT, unix.SYS_TGKILL, unix.SYS_KILL,
}

// vcpuIoctls are the only ioctl requests a worker thread may issue.
var vcpuIoctls = []uintptr{kvm.KVM_RUN, kvm.KVM_GET_REGS}

// runtimeExcluded are the Go runtime's system calls (go1.26, linux/amd64)
// that a worker thread never makes, with the evidence. Only the tests read
// it; it lives here so that the allow-list and its complement are reviewed
// together.
var runtimeExcluded = map[uintptr]string{
	unix.SYS_CLONE: "newm on an M with lockedExt != 0 (every worker: LockOSThread is never undone) hands the new M " +
		"to the template thread (proc.go newm); the template thread is started by LockOSThread before the " +
		"filter goes on; newosproc0 is start-up only. A clone here would also put the filter on the new thread",
	unix.SYS_ARCH_PRCTL: "settls runs only in rt0 and in a new thread's clone child, never on an existing thread",
	unix.SYS_BRK:        "sbrk0 in mallocinit, start-up only",
	unix.SYS_MINCORE:    "sysargs' page-size probe when there is no auxv, start-up only",
	unix.SYS_OPENAT: "start-up only: sysargs (/proc/self/auxv), getHugePageSize, readRandom, cgroup.OpenCPU; " +
		"write_err_android.go is android-only",
	unix.SYS_PREAD64: "cgroup.ReadCPULimit via defaultGOMAXPROCS: start-up, sysmon (sysmonUpdateGOMAXPROCS) and " +
		"runtime.SetDefaultGOMAXPROCS on its caller's thread",
	unix.SYS_SCHED_GETAFFINITY: "getCPUCount: osinit, sysmon via defaultGOMAXPROCS, runtime.SetDefaultGOMAXPROCS " +
		"on its caller's thread",
	unix.SYS_FCNTL: "checkfds at start-up; closeonexec's callers are not built for linux",
	unix.SYS_UNAME: "getKernelVersion, called only from os_linux32.go (386, arm)",
	unix.SYS_PIPE2: "nonblockingPipe, whose callers (netpoll_aix.go, netpoll_kqueue_pipe.go) are not built for " +
		"linux; the linux poller wakes up through an eventfd",
	unix.SYS_SETITIMER: "setProcessCPUProfilerTimer, run by runtime.SetCPUProfileRate (pprof.StartCPUProfile) on " +
		"its caller's thread only; other Ms switch profiling with timer_create in execute()",
	unix.SYS_RT_SIGACTION: "initsig at start-up; os/signal and SetCPUProfileRate on their caller's thread; on any M " +
		"only in the crash path (sigfwdgo, dieFromSignal) when the process is already dying and the filter's " +
		"kill ends it just the same. Allowing it would let this thread install process-wide handlers that " +
		"then run, unfiltered, on every other thread",
	unix.SYS_SOCKET:       "write_err_android.go, android only",
	unix.SYS_CONNECT:      "write_err_android.go, android only",
	unix.SYS_FACCESSAT:    "write_err_android.go, android only",
	unix.SYS_GETTIMEOFDAY: "__vdso_gettimeofday is resolved for package syscall's Gettimeofday only; the runtime and package time use clock_gettime",
}

// runtimeDynamicSites are the runtime functions that make a system call
// whose number is not a constant, with why a worker need not allow it.
var runtimeDynamicSites = map[string]string{
	"syscall_runtime_doAllThreadsSyscall": "syscall.AllThreadsSyscall and the credential calls (Setuid, Setgid, " +
		"Setgroups, ...) run the call on every M, from a signal handler on the others (runPerThreadSyscall). " +
		"Dust changes credentials once, before any guest runs (cmd/dust/dropuser.go), so before any worker exists",
	"runPerThreadSyscall": "see syscall_runtime_doAllThreadsSyscall",
	"Syscall6":            "the generic entry of internal/runtime/syscall/linux; its callers are scanned",
}

// seccomp_data offsets (<linux/seccomp.h>): nr and arch are 32 bits, each
// args[i] is 64 bits, little-endian, from offset 16.
const (
	sdNr   = 0
	sdArch = 4
)

func sdArgLo(i int) uint32 { return 16 + 8*uint32(i) }
func sdArgHi(i int) uint32 { return 16 + 8*uint32(i) + 4 }

// vcpuFilter builds the BPF program for a thread of process pid: right
// architecture, an allowed system call, and for the checked ones allowed
// arguments; anything else kills the process, because a monitor thread
// doing something unexpected is compromised or broken, and either way must
// not go on.
//
// Only the low word of an argument is compared where the kernel declares
// the parameter int or unsigned int (ioctl's request, prctl's option, pids,
// mmap's prot bits live in the low word anyway): the kernel ignores the
// high word there, so checking it would only reject calls the kernel treats
// as allowed ones. prctl's arg2 is an unsigned long and is checked whole.
func vcpuFilter(pid int) []unix.SockFilter {
	var a bpfAsm
	const kill, allow = "kill", "allow"
	a.ld(sdArch)
	a.jeq(unix.AUDIT_ARCH_X86_64, "", kill)
	a.ld(sdNr)
	// KVM_RUN is by far the most frequent call: test ioctl first.
	a.jeq(unix.SYS_IOCTL, "ioctl", "")
	for _, nr := range vcpuSyscalls {
		a.jeq(uint32(nr), allow, "")
	}
	a.jeq(unix.SYS_MMAP, "noexec", "")
	a.jeq(unix.SYS_MPROTECT, "noexec", "")
	a.jeq(unix.SYS_PRCTL, "prctl", "")
	a.jeq(unix.SYS_TGKILL, "self", "")
	a.jeq(unix.SYS_KILL, "self", kill)

	a.label("ioctl")
	a.ld(sdArgLo(1))
	for _, req := range vcpuIoctls {
		a.jeq(uint32(req), allow, "")
	}
	a.ret(unix.SECCOMP_RET_KILL_PROCESS)

	a.label("noexec")
	a.ld(sdArgLo(2))
	a.jset(unix.PROT_EXEC, kill, allow)

	a.label("prctl")
	a.ld(sdArgLo(0))
	a.jeq(unix.PR_SET_VMA, "", kill)
	a.ld(sdArgLo(1))
	a.jeq(unix.PR_SET_VMA_ANON_NAME, "", kill)
	a.ld(sdArgHi(1))
	a.jeq(0, allow, kill)

	a.label("self")
	a.ld(sdArgLo(0))
	a.jeq(uint32(pid), allow, kill)

	a.label(kill)
	a.ret(unix.SECCOMP_RET_KILL_PROCESS)
	a.label(allow)
	a.ret(unix.SECCOMP_RET_ALLOW)
	return a.assemble()
}

// bpfAsm assembles classic BPF with forward jumps to named labels, so the
// filter's blocks can be reordered without recounting offsets.
type bpfAsm struct {
	prog   []unix.SockFilter
	jumps  []bpfJump
	labels map[string]int
}

type bpfJump struct {
	at     int
	jt, jf string // "" is the next instruction
}

func (a *bpfAsm) ld(off uint32) {
	a.prog = append(a.prog, unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off})
}

func (a *bpfAsm) ret(k uint32) {
	a.prog = append(a.prog, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: k})
}

func (a *bpfAsm) jeq(k uint32, jt, jf string) { a.jump(unix.BPF_JEQ, k, jt, jf) }

func (a *bpfAsm) jset(k uint32, jt, jf string) { a.jump(unix.BPF_JSET, k, jt, jf) }

func (a *bpfAsm) jump(op uint16, k uint32, jt, jf string) {
	a.jumps = append(a.jumps, bpfJump{len(a.prog), jt, jf})
	a.prog = append(a.prog, unix.SockFilter{Code: unix.BPF_JMP | op | unix.BPF_K, K: k})
}

func (a *bpfAsm) label(name string) {
	if a.labels == nil {
		a.labels = map[string]int{}
	}
	a.labels[name] = len(a.prog)
}

// assemble resolves the jumps; a bad label or a jump beyond BPF's 8-bit
// offsets is a bug in vcpuFilter, which the tests exercise.
func (a *bpfAsm) assemble() []unix.SockFilter {
	off := func(at int, l string) uint8 {
		if l == "" {
			return 0
		}
		to, ok := a.labels[l]
		d := to - at - 1
		if !ok || d < 0 || d > 255 {
			panic(fmt.Sprintf("hvt: seccomp filter: bad jump from %d to %q", at, l))
		}
		return uint8(d)
	}
	for _, j := range a.jumps {
		a.prog[j.at].Jt = off(j.at, j.jt)
		a.prog[j.at].Jf = off(j.at, j.jf)
	}
	return a.prog
}
