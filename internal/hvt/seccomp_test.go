package hvt

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
)

// ---- The runtime's system calls, from its sources ----

// goSources returns $GOROOT/src for the toolchain that built this test,
// insisting that its version is this binary's runtime: scanning another
// release's sources would prove nothing.
func goSources(t *testing.T) string {
	t.Helper()
	root := ""
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		root = strings.TrimSpace(string(out))
	}
	if root == "" {
		root = runtime.GOROOT()
	}
	v, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		t.Fatalf("Go sources: %v", err)
	}
	if got, _, _ := strings.Cut(string(v), "\n"); got != runtime.Version() {
		t.Fatalf("Go sources at %s are %s, this test binary runs %s", root, got, runtime.Version())
	}
	return filepath.Join(root, "src")
}

// sysIdent matches the runtime's names for system call numbers: SYS_x in
// Go (internal/runtime/syscall/linux) and assembly, sys_x for the odd
// architecture-specific one.
var sysIdent = regexp.MustCompile(`^_?(SYS|sys)_\w+$`)

// notSyscalls are identifiers sysIdent matches that are not system call
// numbers.
var notSyscalls = map[string]string{
	"_SYS_SECCOMP": "si_code of a seccomp SIGSYS (os_linux.go sigFromSeccomp)",
}

// vdsoFallbacks are the system calls a vDSO function makes when it cannot
// answer from user space.
var vdsoFallbacks = map[string]uintptr{
	"clock_gettime": unix.SYS_CLOCK_GETTIME,
	"gettimeofday":  unix.SYS_GETTIMEOFDAY,
	"getrandom":     unix.SYS_GETRANDOM,
	"time":          unix.SYS_TIME,
	"getcpu":        unix.SYS_GETCPU,
}

type runtimeCall struct {
	nr   uintptr
	name string
	at   string
}

// runtimeScan is what scanRuntime found.
type runtimeScan struct {
	calls    []runtimeCall
	problems []string // call sites the filter's assumptions do not cover
}

func (s *runtimeScan) problem(format string, a ...any) {
	s.problems = append(s.problems, fmt.Sprintf(format, a...))
}

// scanRuntime lists the system calls in the runtime's sources for
// linux/amd64 (with and without cgo): package runtime and everything under
// internal/runtime, Go and assembly. It also checks what the filter's
// argument checks assume: prctl only with PR_SET_VMA_ANON_NAME, no
// PROT_EXEC, and no system call whose number is not a constant outside
// runtimeDynamicSites.
func scanRuntime(t *testing.T, src string) *runtimeScan {
	t.Helper()
	var ctxs []build.Context
	for _, cgo := range []bool{false, true} {
		c := build.Default
		c.GOOS, c.GOARCH, c.CgoEnabled = "linux", "amd64", cgo
		ctxs = append(ctxs, c)
	}
	dirs := []string{filepath.Join(src, "runtime")}
	err := filepath.WalkDir(filepath.Join(src, "internal", "runtime"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "testdata" {
				return filepath.SkipDir
			}
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var goFiles, asmFiles []string
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			n := e.Name()
			if e.IsDir() || strings.HasSuffix(n, "_test.go") {
				continue
			}
			for _, c := range ctxs {
				if ok, err := c.MatchFile(dir, n); err == nil && ok {
					switch filepath.Ext(n) {
					case ".go":
						goFiles = append(goFiles, filepath.Join(dir, n))
					case ".s":
						asmFiles = append(asmFiles, filepath.Join(dir, n))
					}
					break
				}
			}
		}
	}
	s := &runtimeScan{}
	scanGo(t, s, src, goFiles)
	for _, f := range asmFiles {
		scanAsm(t, s, src, f)
	}
	return s
}

func scanGo(t *testing.T, s *runtimeScan, src string, files []string) {
	fset := token.NewFileSet()
	var parsed []*ast.File
	consts := map[string]uint64{}
	decl := map[*ast.Ident]bool{}
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, af)
		for _, d := range af.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, sp := range gd.Specs {
				vs := sp.(*ast.ValueSpec)
				for i, n := range vs.Names {
					decl[n] = true
					if !sysIdent.MatchString(n.Name) || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.INT {
						continue
					}
					v, err := strconv.ParseUint(lit.Value, 0, 64)
					if err != nil {
						t.Fatal(err)
					}
					if old, dup := consts[n.Name]; dup && old != v {
						s.problem("%s is both %d and %d", n.Name, old, v)
					}
					consts[n.Name] = v
				}
			}
		}
	}
	rel := func(p token.Pos) string {
		pos := fset.Position(p)
		r, _ := filepath.Rel(src, pos.Filename)
		return fmt.Sprintf("%s:%d", r, pos.Line)
	}
	name := func(e ast.Expr) string {
		switch e := e.(type) {
		case *ast.Ident:
			return e.Name
		case *ast.SelectorExpr:
			return e.Sel.Name
		}
		return ""
	}
	vdso := regexp.MustCompile(`^"__vdso_(\w+)"$`)
	prctlUses, prctlChecked := 0, 0
	for _, af := range parsed {
		for _, d := range af.Decls {
			fn := ""
			if fd, ok := d.(*ast.FuncDecl); ok {
				fn = fd.Name.Name
			}
			ast.Inspect(d, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.Ident:
					if decl[n] {
						break
					}
					if n.Name == "_PROT_EXEC" || n.Name == "PROT_EXEC" {
						s.problem("%s: the runtime maps executable memory (%s); the filter denies PROT_EXEC", rel(n.Pos()), n.Name)
					}
					if !sysIdent.MatchString(n.Name) {
						break
					}
					if _, ok := notSyscalls[n.Name]; ok {
						break
					}
					v, ok := consts[n.Name]
					if !ok {
						s.problem("%s: cannot resolve %s to a number", rel(n.Pos()), n.Name)
						break
					}
					if n.Name == "SYS_PRCTL" {
						prctlUses++
					}
					s.calls = append(s.calls, runtimeCall{uintptr(v), strings.ToLower(strings.TrimLeft(n.Name, "_SYsy")), rel(n.Pos())})
				case *ast.BasicLit:
					if m := vdso.FindStringSubmatch(n.Value); m != nil {
						nr, ok := vdsoFallbacks[m[1]]
						if !ok {
							s.problem("%s: vDSO function %s: which system call does it fall back on?", rel(n.Pos()), m[1])
							break
						}
						s.calls = append(s.calls, runtimeCall{nr, m[1] + " (vDSO fallback)", rel(n.Pos())})
					}
				case *ast.CallExpr:
					if name(n.Fun) != "Syscall6" || len(n.Args) < 3 {
						break
					}
					first := name(n.Args[0])
					if !sysIdent.MatchString(first) {
						if _, ok := runtimeDynamicSites[fn]; !ok {
							s.problem("%s: %s makes system call %s, not a constant: add it to runtimeDynamicSites with a reason, or allow what it calls", rel(n.Pos()), fn, first)
						}
						break
					}
					if first == "SYS_PRCTL" {
						prctlChecked++
						if name(n.Args[1]) != "PR_SET_VMA" || name(n.Args[2]) != "PR_SET_VMA_ANON_NAME" {
							s.problem("%s: prctl with option %s, %s; the filter allows PR_SET_VMA, PR_SET_VMA_ANON_NAME only", rel(n.Pos()), name(n.Args[1]), name(n.Args[2]))
						}
					}
				}
				return true
			})
		}
	}
	if prctlUses != prctlChecked {
		s.problem("SYS_PRCTL appears %d times but only %d are direct Syscall6 calls whose option the scan can check", prctlUses, prctlChecked)
	}
}

var (
	asmDefine = regexp.MustCompile(`(?m)^#define\s+(SYS_\w+)\s+(\d+)`)
	asmUse    = regexp.MustCompile(`\$(SYS_\w+)`)
	asmText   = regexp.MustCompile(`(?m)^TEXT\s+([^(\s]+)\(SB\)`)
	asmInsn   = regexp.MustCompile(`\bSYSCALL\b`)
)

func scanAsm(t *testing.T, s *runtimeScan, src, file string) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	r, _ := filepath.Rel(src, file)
	defs := map[string]uint64{}
	for _, m := range asmDefine.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseUint(m[2], 10, 64)
		defs[m[1]] = v
	}
	line := func(off int) string { return fmt.Sprintf("%s:%d", r, strings.Count(text[:off], "\n")+1) }
	for _, m := range asmUse.FindAllStringSubmatchIndex(text, -1) {
		id := text[m[2]:m[3]]
		v, ok := defs[id]
		if !ok {
			s.problem("%s: cannot resolve $%s to a number", line(m[0]), id)
			continue
		}
		// The runtime's assembly names are the kernel's, typos included
		// (SYS_setittimer): the number is what counts.
		s.calls = append(s.calls, runtimeCall{uintptr(v), strings.TrimPrefix(id, "SYS_"), line(m[0])})
	}
	// A function with a SYSCALL instruction but no constant number takes
	// it from its caller, who must then be known.
	texts := asmText.FindAllStringSubmatchIndex(text, -1)
	for i, m := range texts {
		end := len(text)
		if i+1 < len(texts) {
			end = texts[i+1][0]
		}
		body := text[m[0]:end]
		fn := text[m[2]:m[3]]
		if _, after, ok := strings.Cut(fn, "·"); ok {
			fn = after
		}
		fn, _, _ = strings.Cut(fn, "<") // Syscall6<ABIInternal>
		if asmInsn.MatchString(body) && !asmUse.MatchString(body) {
			if _, ok := runtimeDynamicSites[fn]; !ok {
				s.problem("%s: %s issues SYSCALL with a number from its caller: add it to runtimeDynamicSites with a reason", line(m[0]), fn)
			}
		}
	}
}

func TestSeccompCoversGoRuntime(t *testing.T) {
	s := scanRuntime(t, goSources(t))
	for _, p := range s.problems {
		t.Error(p)
	}
	allowed := map[uintptr]bool{}
	for _, nr := range vcpuSyscalls {
		allowed[nr] = true
	}
	for _, nr := range vcpuCheckedSyscalls {
		allowed[nr] = true
	}
	found := map[uintptr][]runtimeCall{}
	for _, c := range s.calls {
		found[c.nr] = append(found[c.nr], c)
	}
	// A scan that finds nothing would pass; these are certain.
	for _, nr := range []uintptr{unix.SYS_FUTEX, unix.SYS_MMAP, unix.SYS_PRCTL, unix.SYS_TIMER_CREATE, unix.SYS_EPOLL_PWAIT, unix.SYS_CLONE, unix.SYS_CLOCK_GETTIME} {
		if len(found[nr]) == 0 {
			t.Errorf("the scan did not find system call %d, which the runtime certainly makes: the scan is broken", nr)
		}
	}
	nrs := make([]uintptr, 0, len(found))
	for nr := range found {
		nrs = append(nrs, nr)
	}
	sort.Slice(nrs, func(i, j int) bool { return nrs[i] < nrs[j] })
	for _, nr := range nrs {
		cs := found[nr]
		var at []string
		for _, c := range cs {
			at = append(at, c.at)
		}
		why, excluded := runtimeExcluded[nr]
		switch {
		case allowed[nr] && excluded:
			t.Errorf("system call %d (%s) is both allowed and in runtimeExcluded", nr, cs[0].name)
		case allowed[nr]:
			t.Logf("allow   %3d %-18s %s", nr, cs[0].name, strings.Join(at, " "))
		case excluded:
			t.Logf("exclude %3d %-18s %s: %s", nr, cs[0].name, strings.Join(at, " "), why)
		default:
			t.Errorf("the Go runtime makes system call %d (%s) at %s, which the vCPU filter neither allows nor excludes: "+
				"find out whether it can run on any M; then add it to vcpuSyscalls, or to runtimeExcluded with the reason",
				nr, cs[0].name, strings.Join(at, ", "))
		}
	}
	for nr, why := range runtimeExcluded {
		if len(found[nr]) == 0 {
			t.Errorf("runtimeExcluded lists system call %d (%q), which the runtime no longer makes: drop it", nr, why)
		}
	}
}

// ---- The filter program, interpreted ----

// seccompData lays out struct seccomp_data.
func seccompData(arch uint32, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint32(b[0:], nr)
	binary.LittleEndian.PutUint32(b[4:], arch)
	for i, a := range args {
		binary.LittleEndian.PutUint64(b[16+8*i:], a)
	}
	return b
}

// runBPF interprets the subset of classic BPF vcpuFilter emits and
// returns the action and how many instructions ran.
func runBPF(t *testing.T, prog []unix.SockFilter, data []byte) (uint32, int) {
	t.Helper()
	var acc uint32
	for pc, steps := 0, 1; pc < len(prog); steps++ {
		in := prog[pc]
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			acc = binary.LittleEndian.Uint32(data[in.K:])
			pc++
		case unix.BPF_RET | unix.BPF_K:
			return in.K, steps
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K:
			hit := acc == in.K
			if in.Code&0xf0 == unix.BPF_JSET {
				hit = acc&in.K != 0
			}
			pc++
			if hit {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		default:
			t.Fatalf("instruction %d: unexpected opcode %#x", pc, in.Code)
		}
	}
	t.Fatal("the filter runs off its end")
	return 0, 0
}

func TestSeccompFilterDecisions(t *testing.T) {
	const pid = 4242
	prog := vcpuFilter(pid)
	if len(prog) > unix.BPF_MAXINSNS {
		t.Fatalf("%d instructions", len(prog))
	}
	const (
		x86    = unix.AUDIT_ARCH_X86_64
		allow  = unix.SECCOMP_RET_ALLOW
		kill   = unix.SECCOMP_RET_KILL_PROCESS
		hiBits = 0xdead_0000_0000
	)
	plain := map[uintptr]bool{}
	for _, nr := range vcpuSyscalls {
		plain[nr] = true
	}
	checked := map[uintptr]bool{}
	for _, nr := range vcpuCheckedSyscalls {
		checked[nr] = true
	}
	for nr := uint32(0); nr < 512; nr++ {
		if checked[uintptr(nr)] {
			continue
		}
		want := uint32(kill)
		if plain[uintptr(nr)] {
			want = allow
		}
		if got, _ := runBPF(t, prog, seccompData(x86, nr, 1, 2, 3)); got != want {
			t.Errorf("system call %d: action %#x, want %#x", nr, got, want)
		}
	}
	cases := []struct {
		what string
		data []byte
		want uint32
	}{
		{"futex, i386 ABI", seccompData(unix.AUDIT_ARCH_I386, unix.SYS_FUTEX), kill},
		{"futex, x32 ABI", seccompData(x86, unix.SYS_FUTEX|0x40000000), kill},
		{"KVM_RUN", seccompData(x86, unix.SYS_IOCTL, 7, uint64(kvm.KVM_RUN), 0), allow},
		{"KVM_GET_REGS", seccompData(x86, unix.SYS_IOCTL, 7, uint64(kvm.KVM_GET_REGS), 0xc000), allow},
		// The kernel's cmd is an unsigned int: it sees KVM_RUN.
		{"KVM_RUN, high bits", seccompData(x86, unix.SYS_IOCTL, 7, hiBits|uint64(kvm.KVM_RUN)), allow},
		{"TCGETS", seccompData(x86, unix.SYS_IOCTL, 0, unix.TCGETS), kill},
		{"KVM_SET_USER_MEMORY_REGION", seccompData(x86, unix.SYS_IOCTL, 7, 0x4020ae46), kill},
		{"prctl VMA name", seccompData(x86, unix.SYS_PRCTL, unix.PR_SET_VMA, unix.PR_SET_VMA_ANON_NAME, 0x7f0000000000, 4096, 0xc000001000), allow},
		{"prctl VMA, arg2 high word", seccompData(x86, unix.SYS_PRCTL, unix.PR_SET_VMA, 1<<32), kill},
		{"prctl VMA, other sub-option", seccompData(x86, unix.SYS_PRCTL, unix.PR_SET_VMA, 1), kill},
		{"prctl PR_SET_NO_NEW_PRIVS", seccompData(x86, unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1), kill},
		{"prctl PR_SET_SECCOMP", seccompData(x86, unix.SYS_PRCTL, unix.PR_SET_SECCOMP, 2), kill},
		{"mmap rw", seccompData(x86, unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE), allow},
		{"mmap none", seccompData(x86, unix.SYS_MMAP, 0, 4096, unix.PROT_NONE), allow},
		{"mmap rx", seccompData(x86, unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC), kill},
		{"mprotect rw", seccompData(x86, unix.SYS_MPROTECT, 0x1000, 4096, unix.PROT_READ|unix.PROT_WRITE), allow},
		{"mprotect x", seccompData(x86, unix.SYS_MPROTECT, 0x1000, 4096, unix.PROT_EXEC), kill},
		{"tgkill self", seccompData(x86, unix.SYS_TGKILL, pid, 99, uint64(unix.SIGURG)), allow},
		{"tgkill other", seccompData(x86, unix.SYS_TGKILL, 1, 1, uint64(unix.SIGURG)), kill},
		{"kill self", seccompData(x86, unix.SYS_KILL, pid, uint64(unix.SIGQUIT)), allow},
		{"kill group", seccompData(x86, unix.SYS_KILL, 0, uint64(unix.SIGQUIT)), kill},
		{"kill all", seccompData(x86, unix.SYS_KILL, 0xffffffffffffffff, uint64(unix.SIGQUIT)), kill},
	}
	for _, c := range cases {
		if got, _ := runBPF(t, prog, c.data); got != c.want {
			t.Errorf("%s: action %#x, want %#x", c.what, got, c.want)
		}
	}
	// The cost on the hot paths, in BPF instructions.
	_, run := runBPF(t, prog, seccompData(x86, unix.SYS_IOCTL, 7, uint64(kvm.KVM_RUN)))
	_, futex := runBPF(t, prog, seccompData(x86, unix.SYS_FUTEX))
	_, worst := runBPF(t, prog, seccompData(x86, unix.SYS_GETPPID))
	t.Logf("%d instructions; KVM_RUN runs %d, futex %d, a denied call %d", len(prog), run, futex, worst)
}

// ---- Filtered worker threads, in a child process ----

// seccompChildEnv makes the test binary a child that runs one scenario on
// filtered worker threads (seccompChild) instead of the tests: a filter
// kill is then the child's SIGSYS, not the end of the test run.
const seccompChildEnv = "DUST_SECCOMP_CHILD"

func init() {
	if mode := os.Getenv(seccompChildEnv); mode != "" {
		os.Exit(seccompChild(mode))
	}
}

// childStep announces the next call on fd 2 with a bare write, so that a
// killed child's last line names the call that killed it.
func childStep(format string, a ...any) {
	unix.Write(2, []byte("step: "+fmt.Sprintf(format, a...)+"\n"))
}

func childFail(format string, a ...any) int {
	unix.Write(2, []byte("FAIL: "+fmt.Sprintf(format, a...)+"\n"))
	return 2
}

func seccompChild(mode string) int {
	// The kills are expected: no core files.
	unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{})
	if !seccompOn.Load() {
		return childFail("seccomp off")
	}
	switch {
	case mode == "calls":
		return childCalls()
	case mode == "runtime":
		return childRuntime()
	case mode == "stop":
		return childStop()
	case strings.HasPrefix(mode, "deny:"):
		name := strings.TrimPrefix(mode, "deny:")
		for _, d := range deniedCalls {
			if d.name == name {
				return childDeny(d)
			}
		}
	}
	return childFail("unknown mode %q", mode)
}

// threadSeccomp reads a thread's seccomp mode from another thread (the
// filtered one may not open files).
func threadSeccomp(tid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
	if err != nil {
		return err.Error()
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Seccomp:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// awaitTrue spins, yielding, until cond holds or ten seconds pass.
func awaitTrue(cond func() bool) bool {
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); runtime.Gosched() {
		if cond() {
			return true
		}
	}
	return false
}

type sigevent struct {
	value  uintptr
	signo  int32
	notify int32
	tid    int32
	_      [44]byte
}

// childCalls makes each system call the filter allows, the way the
// runtime or the run loop makes it, on a filtered worker thread.
func childCalls() int {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return childFail("pipe: %v", err)
	}
	var failed []string
	check := func(name string, err error) {
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", name, err))
		}
	}
	sys := func(nr uintptr, a ...uintptr) error {
		var v [6]uintptr
		copy(v[:], a)
		_, _, e := unix.Syscall6(nr, v[0], v[1], v[2], v[3], v[4], v[5])
		if e != 0 {
			return e
		}
		return nil
	}
	tid := 0
	err := onWorker(func() {
		childStep("gettid")
		tid = unix.Gettid()

		childStep("mmap, PROT_READ|PROT_WRITE")
		m, err := unix.Mmap(-1, 0, 4<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		check("mmap", err)
		if err == nil {
			// setVMAName's call; this kernel may lack CONFIG_ANON_VMA_NAME
			// and answer EINVAL, which is what the runtime copes with too.
			childStep("prctl PR_SET_VMA PR_SET_VMA_ANON_NAME")
			name := []byte(" Go: dust seccomp test\x00")
			err := unix.Prctl(unix.PR_SET_VMA, unix.PR_SET_VMA_ANON_NAME, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&name[0])))
			if err != nil && err != unix.EINVAL {
				check("prctl PR_SET_VMA", err)
			}
			m[0] = 1
			childStep("madvise MADV_FREE")
			check("madvise MADV_FREE", unix.Madvise(m, unix.MADV_FREE))
			childStep("madvise MADV_DONTNEED")
			check("madvise MADV_DONTNEED", unix.Madvise(m, unix.MADV_DONTNEED))
			childStep("madvise MADV_HUGEPAGE")
			check("madvise MADV_HUGEPAGE", unix.Madvise(m, unix.MADV_HUGEPAGE))
			childStep("mprotect PROT_NONE")
			check("mprotect", unix.Mprotect(m, unix.PROT_NONE))
			childStep("munmap")
			check("munmap", unix.Munmap(m))
		}

		childStep("futex FUTEX_WAKE")
		var word uint32
		check("futex", sys(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&word)), 1|128 /* FUTEX_WAKE|FUTEX_PRIVATE_FLAG */, 1))
		childStep("sched_yield")
		check("sched_yield", sys(unix.SYS_SCHED_YIELD))
		childStep("nanosleep")
		check("nanosleep", unix.Nanosleep(&unix.Timespec{Nsec: 1000}, nil))
		childStep("clock_nanosleep")
		check("clock_nanosleep", unix.ClockNanosleep(unix.CLOCK_MONOTONIC, 0, &unix.Timespec{Nsec: 1000}, nil))
		childStep("clock_gettime (the system call, not the vDSO)")
		var ts unix.Timespec
		check("clock_gettime", sys(unix.SYS_CLOCK_GETTIME, unix.CLOCK_MONOTONIC, uintptr(unsafe.Pointer(&ts))))
		childStep("getrandom")
		var rnd [16]byte
		_, err = unix.Getrandom(rnd[:], 0)
		check("getrandom", err)
		childStep("restart_syscall (nothing to restart: EINTR)")
		if err := sys(unix.SYS_RESTART_SYSCALL); err != unix.EINTR {
			check("restart_syscall", fmt.Errorf("%v, want EINTR", err))
		}

		childStep("rt_sigprocmask")
		var mask [8]byte
		check("rt_sigprocmask", sys(unix.SYS_RT_SIGPROCMASK, unix.SIG_BLOCK, 0, uintptr(unsafe.Pointer(&mask[0])), 8))
		childStep("sigaltstack")
		var st [24]byte
		check("sigaltstack", sys(unix.SYS_SIGALTSTACK, 0, uintptr(unsafe.Pointer(&st[0]))))
		childStep("getpid, kill(self, 0)")
		check("kill", unix.Kill(unix.Getpid(), 0))
		// Go's handler runs on this thread and returns by rt_sigreturn.
		childStep("tgkill(self, SIGURG), rt_sigreturn")
		check("tgkill", unix.Tgkill(unix.Getpid(), unix.Gettid(), unix.SIGURG))

		childStep("timer_create")
		ev := sigevent{signo: int32(unix.SIGPROF), notify: 4 /* SIGEV_THREAD_ID */, tid: int32(unix.Gettid())}
		var timer int32
		check("timer_create", sys(unix.SYS_TIMER_CREATE, unix.CLOCK_THREAD_CPUTIME_ID, uintptr(unsafe.Pointer(&ev)), uintptr(unsafe.Pointer(&timer))))
		childStep("timer_settime")
		spec := unix.ItimerSpec{Value: unix.Timespec{Sec: 3600}}
		check("timer_settime", sys(unix.SYS_TIMER_SETTIME, uintptr(timer), 0, uintptr(unsafe.Pointer(&spec)), 0))
		childStep("timer_delete")
		check("timer_delete", sys(unix.SYS_TIMER_DELETE, uintptr(timer)))

		childStep("write, read")
		_, err = unix.Write(p[1], []byte("x"))
		check("write", err)
		var b [8]byte
		_, err = unix.Read(p[0], b[:1])
		check("read", err)
		childStep("writev, readv")
		_, err = unix.Writev(p[1], [][]byte{[]byte("ab"), []byte("c")})
		check("writev", err)
		_, err = unix.Readv(p[0], [][]byte{b[:3]})
		check("readv", err)

		childStep("epoll_create1")
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		check("epoll_create1", err)
		childStep("eventfd2")
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		check("eventfd2", err)
		childStep("epoll_ctl")
		check("epoll_ctl", unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, efd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}))
		binary.LittleEndian.PutUint64(b[:], 1)
		unix.Write(efd, b[:])
		childStep("epoll_pwait")
		var evs [4]unix.EpollEvent
		if n, _, e := unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&evs[0])), 4, 0, 0, 0); e != 0 || n != 1 {
			check("epoll_pwait", fmt.Errorf("%d events, errno %v", n, e))
		}
		// The filter passes these requests; the kernel then turns them
		// down, for an eventfd is no vCPU.
		childStep("ioctl KVM_RUN")
		if err := sys(unix.SYS_IOCTL, uintptr(efd), kvm.KVM_RUN, 0); err != unix.ENOTTY {
			check("ioctl KVM_RUN", fmt.Errorf("%v, want ENOTTY", err))
		}
		childStep("ioctl KVM_GET_REGS")
		if err := sys(unix.SYS_IOCTL, uintptr(efd), kvm.KVM_GET_REGS, uintptr(unsafe.Pointer(&b[0]))); err != unix.ENOTTY {
			check("ioctl KVM_GET_REGS", fmt.Errorf("%v, want ENOTTY", err))
		}
		childStep("close")
		check("close", unix.Close(efd))
		check("close", unix.Close(ep))
	})
	if err != nil {
		return childFail("worker: %v", err)
	}
	if len(failed) > 0 {
		return childFail("%s", strings.Join(failed, "; "))
	}
	if s := threadSeccomp(tid); s != "2" {
		return childFail("worker thread %d: Seccomp %s, want 2 (filter)", tid, s)
	}

	// A worker whose goroutine returns ends its thread: mexit, exit.
	childStep("exit (a worker thread ends)")
	w := startWorker()
	if w.err != nil {
		return childFail("worker: %v", w.err)
	}
	done := make(chan int)
	w.jobs <- func() { done <- unix.Gettid() }
	tid2 := <-done
	close(w.jobs)
	if !awaitTrue(func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid2))
		return err != nil
	}) {
		return childFail("worker thread %d did not end", tid2)
	}

	// The clean exit is the worker's exit_group.
	childStep("exit_group")
	onWorker(func() { os.Exit(0) })
	return childFail("os.Exit returned")
}

// childRuntime has the Go runtime do its work from a filtered worker:
// heap growth (mmap, and the VMA naming that killed the server), the
// collector and stop-the-world, scavenging, a burst of goroutines that has
// the worker hand its P over and other threads start, timers, and CPU
// profiling switched on and off while the worker schedules.
func childRuntime() int {
	// The worker exists, filtered, before profiling starts: otherwise its
	// thread would take on the profiling rate while still unfiltered.
	if err := onWorker(func() {}); err != nil {
		return childFail("worker: %v", err)
	}
	childStep("CPU profiling on; the worker's next scheduling runs timer_create, timer_settime")
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		return childFail("StartCPUProfile: %v", err)
	}
	var sum int
	err := onWorker(func() {
		childStep("heap growth")
		var keep [][]byte
		for i := 0; i < 48; i++ {
			b := make([]byte, 4<<20)
			b[len(b)-1] = byte(i)
			keep = append(keep, b)
		}
		childStep("runtime.GC")
		runtime.GC()
		childStep("goroutine burst")
		var wg sync.WaitGroup
		results := make(chan int, 64)
		for i := 0; i < 2000; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := make([]byte, 1024+i%8192)
				select {
				case results <- len(b):
				case <-time.After(time.Hour):
				}
			}()
		}
		go func() { wg.Wait(); close(results) }()
		for n := range results {
			sum += n
		}
		childStep("timer")
		t := time.NewTimer(time.Millisecond)
		<-t.C
		childStep("debug.FreeOSMemory")
		keep = nil
		debug.FreeOSMemory()
		runtime.GC()
	})
	if err != nil {
		return childFail("worker: %v", err)
	}
	childStep("CPU profiling off; the worker's next scheduling runs timer_delete")
	pprof.StopCPUProfile()
	if err := onWorker(func() { runtime.Gosched() }); err != nil {
		return childFail("worker: %v", err)
	}
	if sum == 0 {
		return childFail("goroutine burst produced nothing")
	}
	return 0
}

// childStop sleeps on a filtered worker while the parent stops and
// continues the process: the kernel resumes the sleep with
// restart_syscall.
func childStop() int {
	err := onWorker(func() {
		// SIGCONT's Go handler must run elsewhere: run here, it would end
		// the sleep with EINTR instead of having it restarted.
		var set unix.Sigset_t
		set.Val[0] = 1 << (unix.SIGCONT - 1)
		unix.PthreadSigmask(unix.SIG_BLOCK, &set, nil)
		childStep("nanosleep, stopped and continued: restart_syscall")
		unix.Write(2, []byte(fmt.Sprintf("sleeping %d\n", unix.Gettid())))
		err := unix.Nanosleep(&unix.Timespec{Sec: 60}, nil)
		unix.Write(2, []byte(fmt.Sprintf("woke: %v\n", err)))
	})
	if err != nil {
		return childFail("worker: %v", err)
	}
	return 0
}

type deniedCall struct {
	name string
	call func() error
}

func rawErr(_, _ uintptr, e unix.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

// deniedCalls are calls a worker must die for; each is harmless if the
// filter let it through.
var deniedCalls = []deniedCall{
	{"openat", func() error { _, err := unix.Open("/dev/null", unix.O_RDONLY, 0); return err }},
	{"socket", func() error { _, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0); return err }},
	{"execve", func() error { return unix.Exec("/nonexistent/dust", []string{"x"}, nil) }},
	{"getppid", func() error { unix.Getppid(); return nil }},
	{"rt_sigaction (query)", func() error {
		var old [32]byte
		return rawErr(unix.Syscall6(unix.SYS_RT_SIGACTION, uintptr(unix.SIGUSR1), 0, uintptr(unsafe.Pointer(&old[0])), 8, 0, 0))
	}},
	{"sched_getaffinity", func() error { var s unix.CPUSet; return unix.SchedGetaffinity(0, &s) }},
	{"ioctl TCGETS", func() error { _, err := unix.IoctlGetTermios(0, unix.TCGETS); return err }},
	{"ioctl KVM_CREATE_VM", func() error { return rawErr(unix.Syscall(unix.SYS_IOCTL, 0, 0xae01, 0)) }},
	{"prctl PR_SET_NAME", func() error {
		n := []byte("x\x00")
		return unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&n[0])), 0, 0, 0)
	}},
	{"prctl PR_SET_VMA, arg2 with a high word", func() error { return unix.Prctl(unix.PR_SET_VMA, 1<<32, 0, 0, 0) }},
	{"mmap PROT_EXEC", func() error {
		_, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_ANON|unix.MAP_PRIVATE)
		return err
	}},
	{"mprotect PROT_EXEC", func() error {
		m, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			return err
		}
		return unix.Mprotect(m, unix.PROT_READ|unix.PROT_EXEC)
	}},
	{"tgkill another process", func() error { return unix.Tgkill(1, 1, 0) }},
	{"kill another process", func() error { return unix.Kill(1, 0) }},
	{"kill the process group", func() error { return unix.Kill(0, 0) }},
}

func childDeny(d deniedCall) int {
	var res error
	err := onWorker(func() {
		childStep("%s", d.name)
		res = d.call()
	})
	if err != nil {
		return childFail("worker: %v", err)
	}
	unix.Write(2, []byte(fmt.Sprintf("survived: %v\n", res)))
	return 0
}

// startChild re-executes the test binary in child mode; lines are its
// stderr, line by line, closed at its end.
func startChild(t *testing.T, mode string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), seccompChildEnv+"="+mode)
	r, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return cmd, lines
}

// finishChild collects the rest of the child's output and its status.
func finishChild(t *testing.T, cmd *exec.Cmd, lines <-chan string) (string, syscall.WaitStatus) {
	t.Helper()
	var out bytes.Buffer
	for l := range lines {
		out.WriteString(l + "\n")
	}
	cmd.Wait()
	return out.String(), cmd.ProcessState.Sys().(syscall.WaitStatus)
}

func lastStep(out string) string {
	i := strings.LastIndex(out, "step: ")
	if i < 0 {
		return "(before the first step)"
	}
	s, _, _ := strings.Cut(out[i+len("step: "):], "\n")
	return s
}

// expectCleanExit fails on anything but status 0, naming the call a kill
// interrupted.
func expectCleanExit(t *testing.T, out string, ws syscall.WaitStatus) {
	t.Helper()
	switch {
	case ws.Signaled() && ws.Signal() == syscall.SIGSYS:
		t.Fatalf("the filter killed the child at %q\n%s", lastStep(out), out)
	case ws.Signaled():
		t.Fatalf("child died of %v at %q\n%s", ws.Signal(), lastStep(out), out)
	case ws.ExitStatus() != 0:
		t.Fatalf("child exit %d\n%s", ws.ExitStatus(), out)
	}
}

func TestSeccompWorkerAllowsRuntimeCalls(t *testing.T) {
	cmd, lines := startChild(t, "calls")
	out, ws := finishChild(t, cmd, lines)
	expectCleanExit(t, out, ws)
	if !strings.Contains(out, "step: exit_group") {
		t.Fatalf("the child did not get to the end\n%s", out)
	}
}

func TestSeccompWorkerRunsGoRuntime(t *testing.T) {
	cmd, lines := startChild(t, "runtime")
	out, ws := finishChild(t, cmd, lines)
	expectCleanExit(t, out, ws)
}

func TestSeccompFilterDenies(t *testing.T) {
	for _, d := range deniedCalls {
		t.Run(d.name, func(t *testing.T) {
			cmd, lines := startChild(t, "deny:"+d.name)
			out, ws := finishChild(t, cmd, lines)
			if !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
				t.Fatalf("%s on a worker: want the child killed by SIGSYS, got %v\n%s", d.name, ws, out)
			}
			if got := lastStep(out); got != d.name {
				t.Fatalf("killed at %q, want at %q\n%s", got, d.name, out)
			}
		})
	}
}

// TestSeccompWorkerSurvivesStop stops and continues the process while a
// worker sleeps: the kernel resumes the sleep with restart_syscall, which
// must be allowed, or a SIGSTOP/SIGCONT, a cgroup freeze or a debugger
// attaching kills the server.
func TestSeccompWorkerSurvivesStop(t *testing.T) {
	cmd, lines := startChild(t, "stop")
	pid := cmd.Process.Pid
	defer cmd.Process.Kill()
	tid := 0
	var early strings.Builder
	for l := range lines {
		early.WriteString(l + "\n")
		if _, err := fmt.Sscanf(l, "sleeping %d", &tid); err == nil {
			break
		}
	}
	if tid == 0 {
		out, ws := finishChild(t, cmd, lines)
		t.Fatalf("child %v before sleeping\n%s", ws, early.String()+out)
	}
	task := fmt.Sprintf("/proc/%d/task/%d/", pid, tid)
	inSyscall := func(nr int) func() bool {
		return func() bool {
			b, err := os.ReadFile(task + "syscall")
			if err != nil {
				return true // gone: the wait below reports why
			}
			return strings.HasPrefix(string(b), strconv.Itoa(nr)+" ")
		}
	}
	if !awaitTrue(inSyscall(unix.SYS_NANOSLEEP)) {
		t.Fatal("the worker never got into nanosleep")
	}
	syscall.Kill(pid, syscall.SIGSTOP)
	if !awaitTrue(func() bool {
		b, err := os.ReadFile(task + "stat")
		if err != nil {
			return true
		}
		_, rest, _ := strings.Cut(string(b), ") ")
		return strings.HasPrefix(rest, "T")
	}) {
		t.Fatal("the child did not stop")
	}
	syscall.Kill(pid, syscall.SIGCONT)
	restarted := awaitTrue(inSyscall(unix.SYS_RESTART_SYSCALL))
	// End the sleep: Go's SIGURG handler runs and it returns EINTR.
	unix.Tgkill(pid, tid, unix.SIGURG)
	out, ws := finishChild(t, cmd, lines)
	out = early.String() + out
	expectCleanExit(t, out, ws)
	if !restarted || !strings.Contains(out, "woke: interrupted system call") {
		t.Fatalf("the sleep was not resumed by restart_syscall, so the test proves nothing\n%s", out)
	}
}
