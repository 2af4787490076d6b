package linux

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestClocks(t *testing.T) {
	e := newEnv(t, "")
	ts := e.buf(16)
	for _, c := range []struct {
		clk       uint64
		sec, nsec uint64
	}{
		{unix.CLOCK_REALTIME, 1700000000, 123456789},
		{unix.CLOCK_REALTIME_COARSE, 1700000000, 123456789},
		{unix.CLOCK_MONOTONIC, 5, 123},
		{unix.CLOCK_BOOTTIME, 5, 123},
		{unix.CLOCK_MONOTONIC_COARSE, 5, 123},
		{unix.CLOCK_PROCESS_CPUTIME_ID, 5, 123},
		{unix.CLOCK_THREAD_CPUTIME_ID, 5, 123},
	} {
		e.want(0, unix.SYS_CLOCK_GETTIME, c.clk, ts)
		if s, ns := le.Uint64(e.mem[ts:]), le.Uint64(e.mem[ts+8:]); s != c.sec || ns != c.nsec {
			t.Errorf("clock %d: %d.%09d", c.clk, s, ns)
		}
	}
	e.wantErr(unix.EINVAL, unix.SYS_CLOCK_GETTIME, 99, ts)
	e.wantErr(unix.EINVAL, unix.SYS_CLOCK_GETTIME, neg(6), ts) // another process's CPU clock
	e.want(0, unix.SYS_CLOCK_GETRES, unix.CLOCK_MONOTONIC, ts)
	if le.Uint64(e.mem[ts+8:]) != 1 {
		t.Error("clock_getres")
	}
	e.want(0, unix.SYS_CLOCK_GETRES, unix.CLOCK_MONOTONIC, 0)
	tv := e.buf(16)
	e.want(0, unix.SYS_GETTIMEOFDAY, tv, 0)
	if le.Uint64(e.mem[tv:]) != 1700000000 || le.Uint64(e.mem[tv+8:]) != 123456 {
		t.Error("gettimeofday")
	}
	e.wantErr(unix.EFAULT, unix.SYS_GETTIMEOFDAY, tMem, 0)
	e.want(1700000000, unix.SYS_TIME, 0)
	e.want(1700000000, unix.SYS_TIME, tv)
	e.wantErr(unix.EFAULT, unix.SYS_TIME, 8)
}

func TestSleep(t *testing.T) {
	e := newEnv(t, "")
	ts := e.buf(16)
	le.PutUint64(e.mem[ts:], 1)
	le.PutUint64(e.mem[ts+8:], 500)
	e.want(0, unix.SYS_NANOSLEEP, ts, 0)
	e.want(0, unix.SYS_CLOCK_NANOSLEEP, unix.CLOCK_MONOTONIC, 0, ts, 0)
	// Absolute: 6 s on a monotonic clock reading 5.000000123 s.
	le.PutUint64(e.mem[ts:], 6)
	le.PutUint64(e.mem[ts+8:], 0)
	e.want(0, unix.SYS_CLOCK_NANOSLEEP, unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, ts, 0)
	// In the past: no sleep at all.
	le.PutUint64(e.mem[ts:], 1)
	e.want(0, unix.SYS_CLOCK_NANOSLEEP, unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, ts, 0)
	want := []time.Duration{time.Second + 500, time.Second + 500, time.Second - 123}
	if len(e.slept) != len(want) || e.slept[0] != want[0] || e.slept[1] != want[1] || e.slept[2] != want[2] {
		t.Fatalf("slept %v, want %v", e.slept, want)
	}
	le.PutUint64(e.mem[ts+8:], 1e9)
	e.wantErr(unix.EINVAL, unix.SYS_NANOSLEEP, ts, 0)
	le.PutUint64(e.mem[ts:], neg(1))
	le.PutUint64(e.mem[ts+8:], 0)
	e.wantErr(unix.EINVAL, unix.SYS_NANOSLEEP, ts, 0)
	e.wantErr(unix.EFAULT, unix.SYS_NANOSLEEP, tMem-4, 0)
	e.wantErr(unix.EINVAL, unix.SYS_CLOCK_NANOSLEEP, unix.CLOCK_THREAD_CPUTIME_ID, 0, ts, 0)
	e.wantErr(unix.EINVAL, unix.SYS_CLOCK_NANOSLEEP, unix.CLOCK_MONOTONIC, 2, ts, 0)
	// A huge sleep the deadline cuts short ends the run.
	le.PutUint64(e.mem[ts:], 1<<62)
	e.sleepOK = false
	r := e.call(unix.SYS_NANOSLEEP, ts, 0)
	if r.Action != ActionStop || r.Err == nil || !strings.Contains(r.Err.Error(), "deadline") {
		t.Fatalf("nanosleep past the deadline: %+v", r)
	}
	if got := e.slept[len(e.slept)-1]; got <= 0 {
		t.Fatalf("huge sleep became %v", got)
	}
}

func TestGetrandom(t *testing.T) {
	e := newEnv(t, "")
	b := e.buf(32)
	e.want(32, unix.SYS_GETRANDOM, b, 32, 0)
	if allZero(e.bytes(b, 32)) {
		t.Fatal("getrandom gave zeros")
	}
	first := string(e.bytes(b, 32))
	e.want(32, unix.SYS_GETRANDOM, b, 32, unix.GRND_NONBLOCK)
	if string(e.bytes(b, 32)) == first {
		t.Fatal("getrandom repeated itself")
	}
	e.wantErr(unix.EINVAL, unix.SYS_GETRANDOM, b, 32, 8)
	e.wantErr(unix.EINVAL, unix.SYS_GETRANDOM, b, 32, unix.GRND_RANDOM|unix.GRND_INSECURE)
	e.wantErr(unix.EFAULT, unix.SYS_GETRANDOM, tMem, 32, 0)
	e.want(0, unix.SYS_GETRANDOM, 0, 0, 0)
	// Clamped as Linux does, and to memory: from the heap start, the
	// rest of Mem is 3 MiB, less than the 32 MiB cap.
	e.want(tMem-tHeapStart, unix.SYS_GETRANDOM, tHeapStart, ^uint64(0), 0)
	big := &env{t: t, mem: make([]byte, 64<<20)}
	big.p = New(Config{Mem: big.mem})
	big.want(maxRandom, unix.SYS_GETRANDOM, 1<<20, ^uint64(0), 0)
}

func TestIdentity(t *testing.T) {
	e := newEnv(t, "")
	e.want(pid, unix.SYS_GETPID)
	e.want(ppid, unix.SYS_GETPPID)
	e.want(tid, unix.SYS_GETTID)
	e.want(tid, unix.SYS_SET_TID_ADDRESS, e.buf(4))
	for _, nr := range []uint64{unix.SYS_GETUID, unix.SYS_GETEUID, unix.SYS_GETGID, unix.SYS_GETEGID} {
		e.want(1000, nr)
	}
	g := e.buf(4)
	e.want(1, unix.SYS_GETGROUPS, 0, 0)
	e.want(1, unix.SYS_GETGROUPS, 4, g)
	e.wantErr(unix.EINVAL, unix.SYS_GETGROUPS, neg(1), g)
	e.want(0, unix.SYS_SETUID, 1000)
	e.wantErr(unix.EPERM, unix.SYS_SETUID, 0)
	e.wantErr(unix.EPERM, unix.SYS_SETRESUID, neg(1), 0, neg(1))
	u := e.buf(390)
	e.want(0, unix.SYS_UNAME, u)
	field := func(i int) string {
		f := e.bytes(u+uint64(i)*65, 65)
		return strings.TrimRight(string(f), "\x00")
	}
	if field(0) != "Linux" || field(1) != "dust" || field(2) != "6.1.0-dust" || field(4) != "x86_64" {
		t.Fatalf("uname %q %q %q %q", field(0), field(1), field(2), field(4))
	}
	e.wantErr(unix.EFAULT, unix.SYS_UNAME, tMem-100)
	aff := e.buf(128)
	e.want(8, unix.SYS_SCHED_GETAFFINITY, 0, 128, aff)
	if le.Uint64(e.mem[aff:]) != 1 {
		t.Fatal("affinity")
	}
	e.wantErr(unix.EINVAL, unix.SYS_SCHED_GETAFFINITY, 0, 4, aff)
	e.wantErr(unix.ESRCH, unix.SYS_SCHED_GETAFFINITY, 77, 8, aff)
	e.want(0, unix.SYS_SET_ROBUST_LIST, e.buf(24), 24)
	e.wantErr(unix.EINVAL, unix.SYS_SET_ROBUST_LIST, e.buf(24), 8)
	e.wantErr(unix.ENOSYS, unix.SYS_RSEQ, 0, 32, 0, 0)
	e.want(0, unix.SYS_SCHED_YIELD)
	e.wantErr(unix.ECHILD, unix.SYS_WAIT4, neg(1), 0, 0, 0)
	si := e.buf(112)
	e.want(0, unix.SYS_SYSINFO, si)
	if le.Uint64(e.mem[si+32:]) != tMem || le.Uint64(e.mem[si+40:]) != tHeapEnd-tHeapStart || le.Uint32(e.mem[si+104:]) != 1 {
		t.Fatal("sysinfo")
	}
	ru := e.buf(144)
	e.want(0, unix.SYS_GETRUSAGE, 0, ru)
	e.wantErr(unix.EINVAL, unix.SYS_GETRUSAGE, 5, ru)
}

func TestArchPrctl(t *testing.T) {
	e := newEnv(t, "")
	r := e.call(unix.SYS_ARCH_PRCTL, archSetFS, 0x7000)
	if r.Ret != 0 || !r.SetFS || r.FSBase != 0x7000 || e.p.FSBase() != 0x7000 {
		t.Fatalf("ARCH_SET_FS: %+v", r)
	}
	b := e.buf(8)
	e.want(0, unix.SYS_ARCH_PRCTL, archGetFS, b)
	if le.Uint64(e.mem[b:]) != 0x7000 {
		t.Fatal("ARCH_GET_FS")
	}
	if r := e.call(unix.SYS_ARCH_PRCTL, archSetFS, 1<<63); r.Ret != errno(unix.EPERM) || r.SetFS {
		t.Fatalf("non-canonical FS base: %+v", r)
	}
	e.wantErr(unix.EINVAL, unix.SYS_ARCH_PRCTL, archSetGS, 0x7000)
	e.wantErr(unix.EINVAL, unix.SYS_ARCH_PRCTL, 0x9999, 0)
}

func TestRlimits(t *testing.T) {
	e := newEnv(t, "")
	e.p.SetStackSize(256 << 10)
	old := e.buf(16)
	e.want(0, unix.SYS_PRLIMIT64, 0, unix.RLIMIT_NOFILE, 0, old)
	if le.Uint64(e.mem[old:]) != maxFDs || le.Uint64(e.mem[old+8:]) != maxFDs {
		t.Fatal("RLIMIT_NOFILE")
	}
	e.want(0, unix.SYS_GETRLIMIT, unix.RLIMIT_STACK, old)
	if le.Uint64(e.mem[old:]) != 256<<10 {
		t.Fatal("RLIMIT_STACK")
	}
	e.want(0, unix.SYS_GETRLIMIT, unix.RLIMIT_AS, old)
	if le.Uint64(e.mem[old:]) != unix.RLIM_INFINITY {
		t.Fatal("RLIMIT_AS")
	}
	nw := e.buf(16)
	le.PutUint64(e.mem[nw:], 10)
	le.PutUint64(e.mem[nw+8:], 2000)
	e.wantErr(unix.EPERM, unix.SYS_PRLIMIT64, 0, unix.RLIMIT_NOFILE, nw, 0) // raising the hard limit
	le.PutUint64(e.mem[nw+8:], 5)
	e.wantErr(unix.EINVAL, unix.SYS_PRLIMIT64, 0, unix.RLIMIT_NOFILE, nw, 0) // cur > max
	le.PutUint64(e.mem[nw:], 4)
	e.want(0, unix.SYS_PRLIMIT64, pid, unix.RLIMIT_NOFILE, nw, old)
	if le.Uint64(e.mem[old:]) != maxFDs {
		t.Fatal("old limit")
	}
	e.want(3, unix.SYS_OPENAT, atFDCWD, e.str("/dev/null"), 0)
	e.wantErr(unix.EMFILE, unix.SYS_OPENAT, atFDCWD, e.str("/dev/null"), 0)
	e.wantErr(unix.ESRCH, unix.SYS_PRLIMIT64, 77, unix.RLIMIT_NOFILE, 0, old)
	e.wantErr(unix.EINVAL, unix.SYS_PRLIMIT64, 0, 16, 0, old)
	e.wantErr(unix.EFAULT, unix.SYS_PRLIMIT64, 0, unix.RLIMIT_NOFILE, 0, tMem)
}

func TestExit(t *testing.T) {
	for _, nr := range []uint64{unix.SYS_EXIT, unix.SYS_EXIT_GROUP} {
		e := newEnv(t, "")
		if r := e.call(nr, 0x1234); r.Action != ActionExit || r.Status != 0x34 {
			t.Fatalf("%s: %+v", sysName(nr), r)
		}
	}
}

func TestSignals(t *testing.T) {
	e := newEnv(t, "")
	act, old := e.buf(32), e.buf(32)
	le.PutUint64(e.mem[act:], 0x401000) // a handler
	le.PutUint64(e.mem[act+8:], 0x04000000)
	e.want(0, unix.SYS_RT_SIGACTION, uint64(unix.SIGURG), act, 0, 8)
	e.want(0, unix.SYS_RT_SIGACTION, uint64(unix.SIGURG), 0, old, 8)
	if le.Uint64(e.mem[old:]) != 0x401000 || le.Uint64(e.mem[old+8:]) != 0x04000000 {
		t.Fatal("sigaction not recorded")
	}
	e.wantErr(unix.EINVAL, unix.SYS_RT_SIGACTION, uint64(unix.SIGKILL), act, 0, 8)
	e.wantErr(unix.EINVAL, unix.SYS_RT_SIGACTION, 65, act, 0, 8)
	e.wantErr(unix.EINVAL, unix.SYS_RT_SIGACTION, 0, act, 0, 8)
	e.wantErr(unix.EINVAL, unix.SYS_RT_SIGACTION, 1, act, 0, 16)
	e.wantErr(unix.EFAULT, unix.SYS_RT_SIGACTION, 1, tMem, 0, 8)
	// Go's preemption signal with Go's handler: not delivered, not fatal.
	e.want(0, unix.SYS_TGKILL, pid, tid, uint64(unix.SIGURG))
	e.want(0, unix.SYS_KILL, pid, 0) // existence check
	e.wantErr(unix.EPERM, unix.SYS_KILL, 1, uint64(unix.SIGTERM))
	e.wantErr(unix.EPERM, unix.SYS_KILL, neg(1), uint64(unix.SIGTERM))
	e.wantErr(unix.ESRCH, unix.SYS_TGKILL, pid, 3, uint64(unix.SIGTERM))
	e.wantErr(unix.EINVAL, unix.SYS_TGKILL, pid, tid, 65)
	e.wantErr(unix.EINVAL, unix.SYS_TKILL, 0, 1)

	// Blocked: pending, delivered on unblock.
	set := e.buf(8)
	le.PutUint64(e.mem[set:], sigbit(unix.SIGABRT)|sigbit(unix.SIGKILL))
	e.want(0, unix.SYS_RT_SIGPROCMASK, unix.SIG_BLOCK, set, 0, 8)
	e.want(0, unix.SYS_RT_SIGPROCMASK, unix.SIG_BLOCK, 0, old, 8)
	if le.Uint64(e.mem[old:]) != sigbit(unix.SIGABRT) {
		t.Fatalf("mask %#x: SIGKILL must not be blockable", le.Uint64(e.mem[old:]))
	}
	e.want(0, unix.SYS_TKILL, tid, uint64(unix.SIGABRT))
	e.want(0, unix.SYS_RT_SIGPENDING, old, 8)
	if le.Uint64(e.mem[old:]) != sigbit(unix.SIGABRT) {
		t.Fatal("SIGABRT not pending")
	}
	e.wantErr(unix.EINVAL, unix.SYS_RT_SIGPROCMASK, 7, set, 0, 8)
	e.wantErr(unix.EINVAL, unix.SYS_RT_SIGPROCMASK, unix.SIG_BLOCK, set, 0, 4)
	if r := e.call(unix.SYS_RT_SIGPROCMASK, unix.SIG_UNBLOCK, set, 0, 8); r.Action != ActionExit || r.Status != 128+6 {
		t.Fatalf("unblocking a pending SIGABRT: %+v", r)
	}

	// abort(): SIGABRT with the default action.
	e = newEnv(t, "")
	if r := e.call(unix.SYS_TGKILL, pid, tid, uint64(unix.SIGABRT)); r.Action != ActionExit || r.Status != 134 {
		t.Fatalf("SIGABRT: %+v", r)
	}
	// A handled fatal signal ends the program too (handlers do not run).
	act = e.buf(32)
	le.PutUint64(e.mem[act:], 0x401000)
	e.want(0, unix.SYS_RT_SIGACTION, uint64(unix.SIGSEGV), act, 0, 8)
	if r := e.call(unix.SYS_KILL, 0, uint64(unix.SIGSEGV)); r.Action != ActionExit || r.Status != 128+11 {
		t.Fatalf("handled SIGSEGV: %+v", r)
	}
	le.PutUint64(e.mem[act:], sigIGN)
	e.want(0, unix.SYS_RT_SIGACTION, uint64(unix.SIGTERM), act, 0, 8)
	e.want(0, unix.SYS_KILL, pid, uint64(unix.SIGTERM))

	ss, oss := e.buf(24), e.buf(24)
	e.want(0, unix.SYS_SIGALTSTACK, 0, oss)
	if int32(le.Uint32(e.mem[oss+8:])) != ssDisable {
		t.Fatal("initial sigaltstack not disabled")
	}
	le.PutUint64(e.mem[ss:], 0x20000)
	le.PutUint64(e.mem[ss+16:], 32<<10)
	e.want(0, unix.SYS_SIGALTSTACK, ss, 0)
	e.want(0, unix.SYS_SIGALTSTACK, 0, oss)
	if le.Uint64(e.mem[oss:]) != 0x20000 || le.Uint64(e.mem[oss+16:]) != 32<<10 {
		t.Fatal("sigaltstack not recorded")
	}
	le.PutUint64(e.mem[ss+16:], 100)
	e.wantErr(unix.ENOMEM, unix.SYS_SIGALTSTACK, ss, 0)
	le.PutUint32(e.mem[ss+8:], 8)
	e.wantErr(unix.EINVAL, unix.SYS_SIGALTSTACK, ss, 0)
}

func TestUnknownAndRefused(t *testing.T) {
	e := newEnv(t, "")
	for _, nr := range []uint64{unix.SYS_EXECVE, unix.SYS_FORK, unix.SYS_CLONE, unix.SYS_PTRACE, unix.SYS_MOUNT} {
		e.wantErr(unix.EPERM, nr)
	}
	// Refusals with other errnos are counted too (net.go).
	e.wantErr(unix.EAFNOSUPPORT, unix.SYS_SOCKET, unix.AF_UNIX, unix.SOCK_STREAM, 0)
	e.wantErr(unix.ESOCKTNOSUPPORT, unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_DGRAM, 0)
	s := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	e.wantErr(unix.ENETUNREACH, unix.SYS_CONNECT, s, e.sockaddr4([4]byte{10, 0, 0, 1}, 80), sinLen)
	e.wantErr(unix.ENOSYS, unix.SYS_IO_URING_SETUP)
	e.wantErr(unix.ENOSYS, 1023)
	e.wantErr(unix.ENOSYS, 1024)
	e.wantErr(unix.ENOSYS, ^uint64(0))
	e.wantErr(unix.ENOSYS, unix.SYS_RSEQ)
	e.want(pid, unix.SYS_GETPID)
	want := map[string]int{
		"socket": 2, "connect": 1, "execve": 1, "fork": 1, "clone": 1, "ptrace": 1, "mount": 1,
		"io_uring_setup": 1, "syscall_1023": 1, "syscall_1024": 1, "syscall_18446744073709551615": 1, "rseq": 1,
	}
	got := e.p.Unknown()
	if len(got) != len(want) {
		t.Fatalf("Unknown() = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("Unknown()[%q] = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	got["socket"] = 99 // a copy: the process's counts are its own
	if e.p.Unknown()["socket"] != 2 {
		t.Fatal("Unknown returned its own map")
	}
	if e.p.Calls() != 15 {
		t.Fatalf("Calls() = %d", e.p.Calls())
	}
}

func TestHeapConfigSanitised(t *testing.T) {
	mem := make([]byte, 1<<20)
	for _, c := range []struct{ hs, he, wantS, wantE uint64 }{
		{0, 1 << 20, nullPage, 1 << 20},
		{100, 8191, 0, 0},
		{1 << 19, 1 << 40, 1 << 19, 1 << 20},
		{1 << 40, 1 << 41, 0, 0},
		{1 << 19, 1 << 18, 0, 0},
	} {
		p := New(Config{Mem: mem, HeapStart: c.hs, HeapEnd: c.he})
		if p.cfg.HeapStart != c.wantS || p.cfg.HeapEnd != c.wantE {
			t.Errorf("heap [%#x, %#x) became [%#x, %#x), want [%#x, %#x)", c.hs, c.he, p.cfg.HeapStart, p.cfg.HeapEnd, c.wantS, c.wantE)
		}
		if r := p.Call(unix.SYS_MMAP, [6]uint64{0, pageSize, protRW, anonPriv, neg(1), 0}); r.Ret != errno(unix.ENOMEM) && (r.Ret < p.cfg.HeapStart || r.Ret >= p.cfg.HeapEnd) {
			t.Errorf("mmap in [%#x, %#x): %#x", p.cfg.HeapStart, p.cfg.HeapEnd, r.Ret)
		}
	}
}

// However many distinct numbers a guest tries, the report of unknown
// calls stays bounded.
func TestUnknownNamesBounded(t *testing.T) {
	e := newEnv(t, "")
	for nr := uint64(100000); nr < 101000; nr++ {
		e.call(nr)
	}
	u := e.p.Unknown()
	if len(u) > maxUnknownNames+1 || u["others"] == 0 {
		t.Fatalf("%d names reported (others %d), want at most %d and the rest folded", len(u), u["others"], maxUnknownNames+1)
	}
	total := 0
	for _, n := range u {
		total += n
	}
	if total != 1000 {
		t.Fatalf("%d calls counted, want 1000", total)
	}
}
