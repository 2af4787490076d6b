package hvt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// Static Linux programs built at test time with the host's toolchains.

// toolchain is a C compiler and the flags that make a static program.
type toolchain struct {
	name  string
	cc    string
	flags []string
}

var linuxToolchains = []toolchain{
	{"glibc", "gcc", []string{"-static"}},
	{"glibc-pie", "gcc", []string{"-static-pie"}},
	{"musl", "musl-gcc", []string{"-static"}},
}

// Test programs. Each is a CGI program: environment in, stdout out.
var linuxSources = map[string]string{
	"hello": `#include <stdio.h>
int main(void) { fputs("Content-Type: text/plain\r\n\r\nHello, world!\n", stdout); return 0; }
`,
	// echo: argv, QUERY_STRING and the body read from stdin.
	"echo": `#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
	char buf[65536]; size_t n = 0; ssize_t r;
	while (n < sizeof buf && (r = read(0, buf + n, sizeof buf - n)) > 0) n += r;
	const char *q = getenv("QUERY_STRING");
	printf("Content-Type: text/plain\r\n\r\nargc=%d argv0=%s query=%s body=", argc, argv[0], q ? q : "(none)");
	fwrite(buf, 1, n, stdout);
	for (int i = 1; i < argc; i++) printf(" arg%d=%s", i, argv[i]);
	printf("\n");
	return 0;
}
`,
	"abort": `#include <stdio.h>
#include <stdlib.h>
int main(void) { puts("Content-Type: text/plain\r\n\r\nabout to abort"); fflush(stdout); abort(); }
`,
	// malloc: small blocks through brk, large ones through mmap, freed
	// and reused, with a checksum that catches any lost or shared byte.
	"malloc": `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
	enum { N = 2000 };
	static char *p[N]; static size_t sz[N];
	unsigned long sum = 0, want = 0;
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N; i++) {
			sz[i] = (i % 97 == 0) ? 200000 + i : 16 + (i * 37) % 3000;
			p[i] = malloc(sz[i]);
			if (!p[i]) { printf("Status: 500\r\n\r\nmalloc %zu failed\n", sz[i]); return 1; }
			memset(p[i], (i + round) & 0xff, sz[i]);
			want += ((i + round) & 0xff) * sz[i];
		}
		for (int i = 0; i < N; i++) {
			for (size_t j = 0; j < sz[i]; j += 511) sum += (unsigned char)p[i][j] * (j + 511 <= sz[i] ? 511 : sz[i] - j);
			free(p[i]);
		}
	}
	printf("Content-Type: text/plain\r\n\r\n%s %lu\n", sum == want ? "ok" : "BAD", sum);
	return 0;
}
`,
	// hostile: raw system calls with pointers into monitor memory, past
	// the end of guest memory, wrapping, and unknown numbers.
	"hostile": `#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
	long r[8];
	r[0] = syscall(SYS_write, 1, (void *)0x7ffffffff000, 4096);  /* beyond memory */
	r[1] = syscall(SYS_read, 0, (void *)-4096L, 1L << 40);       /* wrapping */
	r[2] = syscall(999);
	r[3] = syscall(SYS_writev, 1, (void *)0x10, 1000000);
	r[4] = syscall(100000, 1, 2, 3, 4, 5, 6);
	r[5] = syscall(SYS_mmap, 0, 1L << 45, 3, 0x22, -1, 0);       /* more than the machine */
	r[6] = syscall(SYS_getrandom, (void *)-16L, 32, 0);
	r[7] = syscall(SYS_write, 1, (void *)0, 1);
	printf("Content-Type: text/plain\r\n\r\n");
	for (int i = 0; i < 8; i++) printf("%ld ", r[i]);
	printf("survived\n");
	return 0;
}
`,
	// portio: the stub's OUT from the program's own code must not pass
	// for a system call.
	// monitor: system calls pointing into the monitor's pages (GDT,
	// page tables, the syscall stub), which the program cannot reach
	// with its own loads and stores.
	"monitor": `#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
	long a = syscall(SYS_write, 1, (void *)0x1000, 64);
	long b = syscall(SYS_getrandom, (void *)0x2000, 16, 0);
	long c = syscall(SYS_read, 0, (void *)0x10000, 8);
	printf("Content-Type: text/plain\r\n\r\n%ld %ld %ld\n", a, b, c);
	return 0;
}
`,
	"portio": `int main(void) { __asm__ volatile("mov $60, %eax; xor %edi, %edi; outb %al, $0xDC"); return 3; }
`,
	// threads: pthread_create until it fails (the cap, EAGAIN), every
	// thread blocked on a condition variable until main releases them,
	// joined (CLONE_CHILD_CLEARTID); then two threads taking turns.
	"threads": `#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int go_on, turn, rounds;
static void *worker(void *arg) {
	pthread_mutex_lock(&mu);
	while (!go_on) pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	return arg;
}
static void *pong(void *arg) {
	for (int i = 0; i < 8; i++) {
		pthread_mutex_lock(&mu);
		while (turn != 1) pthread_cond_wait(&cv, &mu);
		turn = 0; rounds++;
		pthread_cond_broadcast(&cv);
		pthread_mutex_unlock(&mu);
	}
	return arg;
}
int main(void) {
	static pthread_t t[100];
	int n = 0, err = 0, joined = 0;
	long sum = 0;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, 64 << 10);
	for (; n < 100; n++) if ((err = pthread_create(&t[n], &a, worker, (void *)(intptr_t)n))) break;
	pthread_mutex_lock(&mu); go_on = 1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);
	for (int i = 0; i < n; i++) { void *r; if (pthread_join(t[i], &r) == 0) { joined++; sum += (intptr_t)r; } }
	pthread_t p;
	pthread_create(&p, &a, pong, 0);
	for (int i = 0; i < 8; i++) {
		pthread_mutex_lock(&mu);
		turn = 1; pthread_cond_broadcast(&cv);
		while (turn != 0) pthread_cond_wait(&cv, &mu);
		pthread_mutex_unlock(&mu);
	}
	pthread_join(p, 0);
	printf("Content-Type: text/plain\r\n\r\ncreated=%d err=%d joined=%d sum=%ld pingpong=%d\n", n, err, joined, sum, rounds);
	return 0;
}
`,
	// deadlock: main joins a thread that waits for a signal nobody sends.
	"deadlock": `#include <pthread.h>
#include <stdio.h>
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static void *waiter(void *a) { pthread_mutex_lock(&mu); for (;;) pthread_cond_wait(&cv, &mu); return a; }
int main(void) { pthread_t t; pthread_create(&t, 0, waiter, 0); pthread_join(t, 0); puts("joined"); return 0; }
`,
	// spin: N system calls (argv[1]) then exit: the cost of one call.
	"spin": `#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
	long n = argc > 1 ? atol(argv[1]) : 0;
	for (long i = 0; i < n; i++) syscall(SYS_getpid);
	return 0;
}
`,
}

var (
	linuxBuildMu sync.Mutex
	linuxBuilt   = map[string][]byte{}
	linuxDir     string
)

// linuxELF builds program name with tc, or skips when tc's compiler is
// missing (musl-tools is optional outside CI).
func linuxELF(t testing.TB, tc toolchain, name string) []byte {
	t.Helper()
	b, _ := linuxBin(t, tc, name)
	return b
}

func linuxBin(t testing.TB, tc toolchain, name string) ([]byte, string) {
	t.Helper()
	return buildLinux(t, tc, tc.name+"/"+name, tc.name+"-"+name, func(out string) *exec.Cmd {
		src := filepath.Join(linuxDir, name+".c")
		if err := os.WriteFile(src, []byte(linuxSources[name]), 0o644); err != nil {
			t.Fatal(err)
		}
		return exec.Command(tc.cc, append(append([]string{"-O2", "-o", out}, tc.flags...), src)...)
	})
}

// buildLinux builds a test program once per test binary: cmd makes the
// command that writes it to out (a path in linuxDir), key names it in the
// cache. A toolchain that is missing skips the test.
func buildLinux(t testing.TB, tc toolchain, key, file string, cmd func(out string) *exec.Cmd) ([]byte, string) {
	t.Helper()
	if tc.cc != "" {
		if _, err := exec.LookPath(tc.cc); err != nil {
			t.Skipf("%s not installed (Debian: %s)", tc.cc, map[string]string{"gcc": "gcc libc6-dev", "musl-gcc": "musl-tools"}[tc.cc])
		}
	}
	linuxBuildMu.Lock()
	defer linuxBuildMu.Unlock()
	if linuxDir == "" {
		d, err := os.MkdirTemp("", "dust-linux-")
		if err != nil {
			t.Fatal(err)
		}
		linuxDir = d
	}
	out := filepath.Join(linuxDir, file)
	if b, ok := linuxBuilt[key]; ok {
		return b, out
	}
	if msg, err := cmd(out).CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", key, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	linuxBuilt[key] = b
	return b, out
}

func prepareLinux(t testing.TB, tc toolchain, name string, l machine.Limits) *Image {
	t.Helper()
	kvmtest.Require(t)
	im, err := Prepare(linuxELF(t, tc, name), l)
	if err != nil {
		t.Fatalf("prepare %s (%s): %v", name, tc.name, err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// runLinux serves req on m and returns the result, stdout and stderr.
func runLinux(m *Machine, req *machine.Request) (machine.Result, string, string) {
	var out, log bytes.Buffer
	res := m.Run(context.Background(), req, &out, &log)
	return res, out.String(), log.String()
}

func TestLinuxImageRecognised(t *testing.T) {
	for _, tc := range linuxToolchains {
		t.Run(tc.name, func(t *testing.T) {
			img, err := parseImage(linuxELF(t, tc, "hello"))
			if err != nil {
				t.Fatal(err)
			}
			if !img.linux || img.segments[0].vaddr < linuxPIEBase || img.phdrAddr == 0 {
				t.Fatalf("linux %v, first segment %#x, phdrs at %#x", img.linux, img.segments[0].vaddr, img.phdrAddr)
			}
			l, err := buildLinuxLayout(img, 16<<20)
			if err != nil {
				t.Fatal(err)
			}
			// The page tables: the stub is executable and read-only,
			// everything the program may write is NX, nothing both W and X.
			if p := l.perm(img, linuxStubAddr); p != permUserRX {
				t.Errorf("stub page permission %#x", p)
			}
			for a := uint64(0); a < l.memSize; a += pageSize {
				p := l.perm(img, a)
				if p&pteRW != 0 && p&pteNX == 0 {
					t.Fatalf("%#x writable and executable", a)
				}
			}
			if p := l.perm(img, imageBase); p != permNone {
				t.Errorf("below the image: permission %#x, want unmapped", p)
			}
			if l.heapStart != img.end || l.heapEnd != l.guard || l.stackSize != 2<<20 {
				t.Errorf("heap [%#x, %#x) guard %#x stack %d", l.heapStart, l.heapEnd, l.guard, l.stackSize)
			}
		})
	}
}

// A dynamically linked program is refused, saying how to build a static one.
func TestLinuxDynamicRefused(t *testing.T) {
	kvmtest.Require(t)
	dyn := toolchain{"glibc-dynamic", "gcc", nil}
	_, err := Prepare(linuxELF(t, dyn, "hello"), machine.Limits{})
	if !errors.Is(err, machine.ErrBadImage) {
		t.Fatalf("got %v, want ErrBadImage", err)
	}
	for _, want := range []string{"dynamically linked", "gcc -static", "musl-gcc -static", "CGO_ENABLED=0 GOOS=linux go build"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
}

// hello on fresh machines and on one machine restored between requests,
// for every toolchain: the answer, and no more exits than system calls
// plus one.
func TestLinuxHello(t *testing.T) {
	for _, tc := range linuxToolchains {
		t.Run(tc.name, func(t *testing.T) {
			im := prepareLinux(t, tc, "hello", machine.Limits{})
			check := func(what string, m *Machine, res machine.Result, out, log string) {
				t.Helper()
				if err := res.Err(); err != nil || res.ExitStatus != 0 {
					t.Fatalf("%s: %v status %d, log %q", what, err, res.ExitStatus, log)
				}
				if out != "Content-Type: text/plain\r\n\r\nHello, world!\n" {
					t.Fatalf("%s: answered %q", what, out)
				}
				calls, unknown := m.LinuxCalls()
				if res.Exits > calls+1 {
					t.Errorf("%s: %d exits for %d system calls", what, res.Exits, calls)
				}
				t.Logf("%s: %d exits, %d system calls, unanswered %v", what, res.Exits, calls, unknown)
			}
			freshThenRestored(t, im, 2, 5, check)
		})
	}
}

// freshThenRestored serves hello's request on fresh brand-new machines,
// then restored times on one machine reset in between, checking each.
func freshThenRestored(t *testing.T, im *Image, fresh, restored int, check func(string, *Machine, machine.Result, string, string)) {
	t.Helper()
	for i := range fresh {
		m, err := im.newMachine()
		if err != nil {
			t.Fatal(err)
		}
		res, out, log := runLinux(m, &machine.Request{Env: helloEnv})
		check(fmt.Sprintf("fresh %d", i), m, res, out, log)
		m.Close()
	}
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i := range restored {
		res, out, log := runLinux(m, &machine.Request{Env: helloEnv})
		check(fmt.Sprintf("restored %d", i), m, res, out, log)
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
}

// echo: argv from the CGI arguments, QUERY_STRING from the environment,
// the body on stdin, each request seeing only its own.
func TestLinuxEcho(t *testing.T) {
	for _, tc := range linuxToolchains {
		t.Run(tc.name, func(t *testing.T) {
			im := prepareLinux(t, tc, "echo", machine.Limits{})
			m, err := im.newMachine()
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			for i := range 4 {
				body := strings.Repeat(fmt.Sprintf("body%d-", i), 1+i*3000)
				req := &machine.Request{
					Args: []string{"/echo", fmt.Sprintf("a%d", i)},
					Env:  append([]string{fmt.Sprintf("QUERY_STRING=q=%d", i)}, helloEnv...),
					Body: strings.NewReader(body), BodyLen: int64(len(body)),
				}
				res, out, log := runLinux(m, req)
				if err := res.Err(); err != nil {
					t.Fatalf("request %d: %v (log %q)", i, err, log)
				}
				want := fmt.Sprintf("Content-Type: text/plain\r\n\r\nargc=2 argv0=/echo query=q=%d body=%s arg1=a%d\n", i, body, i)
				if out != want {
					t.Fatalf("request %d answered %.200q, want %.200q", i, out, want)
				}
				if err := m.Reset(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestLinuxAbort(t *testing.T) {
	for _, tc := range linuxToolchains {
		t.Run(tc.name, func(t *testing.T) {
			im := prepareLinux(t, tc, "abort", machine.Limits{})
			res, out, _ := runOnce(t, im, nil)
			if res.Outcome == machine.Served && res.ExitStatus == 0 {
				t.Fatalf("abort() served with status 0: %q", out)
			}
			t.Logf("abort: %v status %d", res.Outcome, res.ExitStatus)
		})
	}
}

func TestLinuxMalloc(t *testing.T) {
	for _, tc := range linuxToolchains {
		t.Run(tc.name, func(t *testing.T) {
			im := prepareLinux(t, tc, "malloc", machine.Limits{Memory: 32 << 20})
			m, err := im.newMachine()
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			for i := range 2 {
				res, out, log := runLinux(m, &machine.Request{Env: helloEnv})
				if err := res.Err(); err != nil || !strings.HasPrefix(out, "Content-Type: text/plain\r\n\r\nok ") {
					t.Fatalf("run %d: %v %q log %q", i, err, out, log)
				}
				calls, _ := m.LinuxCalls()
				t.Logf("%d system calls", calls)
				if err := m.Reset(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// Bad pointers and unknown numbers are answered with errors and counted;
// the program goes on, the host keeps its descriptors and threads, and
// the next request on the same machine is clean.
func TestLinuxHostile(t *testing.T) {
	tc := linuxToolchains[0]
	im := prepareLinux(t, tc, "hostile", machine.Limits{})
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	runLinux(m, &machine.Request{})
	m.Reset()
	fds0, threads0 := machinetest.HostUsage(t)
	for i := range 3 {
		res, out, log := runLinux(m, &machine.Request{Env: helloEnv})
		if err := res.Err(); err != nil {
			t.Fatalf("run %d: %v (log %q)", i, err, log)
		}
		_, body, _ := strings.Cut(out, "\r\n\r\n")
		f := strings.Fields(body)
		if len(f) != 9 || f[8] != "survived" {
			t.Fatalf("answered %q", out)
		}
		for j, v := range f[:8] {
			if !strings.HasPrefix(v, "-") {
				t.Errorf("call %d answered %s, want an error", j, v)
			}
		}
		calls, unknown := m.LinuxCalls()
		n := 0
		for _, c := range unknown {
			n += c
		}
		if n < 2 {
			t.Errorf("unknown calls not counted: %v", unknown)
		}
		if i == 0 {
			t.Logf("%d calls, answers %v, unknown %v", calls, f[:8], unknown)
		}
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	if fds, threads := machinetest.HostUsage(t); fds > fds0 || threads > threads0+2 {
		t.Errorf("host grew: fds %d→%d threads %d→%d", fds0, fds, threads0, threads)
	}
}

// Pointers into monitor-owned low memory must be refused like pointers
// beyond the end: reading there leaks the GDT and page tables, writing
// there lets a request rewrite its own page tables and the syscall stub
// (restrictProcess).
func TestLinuxMonitorMemoryRefused(t *testing.T) {
	im := prepareLinux(t, linuxToolchains[0], "monitor", machine.Limits{})
	res, out, _ := runOnce(t, im, &machine.Request{Body: strings.NewReader("XXXXXXXX"), BodyLen: 8})
	_, body, _ := strings.Cut(out, "\r\n\r\n")
	if res.Outcome == machine.Served && body == "-1 -1 -1\n" {
		return
	}
	t.Fatalf("system calls reached monitor memory below %#x: %v, answered %q", imageBase, res.Outcome, body)
}

// The stub's port from user code is a bad hypercall, not an exit(0).
func TestLinuxUserPortIO(t *testing.T) {
	im := prepareLinux(t, linuxToolchains[0], "portio", machine.Limits{})
	res, _, _ := runOnce(t, im, nil)
	if res.Outcome != machine.BadHypercall {
		t.Fatalf("outcome %v (%s), want bad hypercall", res.Outcome, res.Detail)
	}
}

// A program writing past it
// ends with OutputLimit, as a Dust guest does.
func TestLinuxOutputLimit(t *testing.T) {
	im := prepareLinux(t, linuxToolchains[2], "malloc", machine.Limits{MaxOutput: 10, Memory: 32 << 20})
	res, out, _ := runOnce(t, im, nil)
	if res.Outcome != machine.OutputLimit || len(out) > 10 {
		t.Fatalf("outcome %v, %d bytes out", res.Outcome, len(out))
	}
}

// FuzzParseImage: whatever the Dust-or-Linux dispatcher accepts as a Linux
// program lays out without panicking and keeps clear of monitor memory.
func FuzzParseImage(f *testing.F) {
	f.Add(synthELF(func(h []byte, p []testPhdr) []testPhdr { return p[:2] }))
	f.Add(synthELF(func(h []byte, p []testPhdr) []testPhdr {
		h[16] = etDyn
		return append(p[:2], testPhdr{typ: ptDynamic, off: 0x2000, filesz: 4})
	}))
	f.Add(synthELF(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := parseImage(b)
		if err != nil {
			if !errors.Is(err, machine.ErrBadImage) {
				t.Fatalf("error %v does not wrap ErrBadImage", err)
			}
			return
		}
		for _, s := range img.segments {
			if s.vaddr < imageBase || s.vaddr+s.memsz > MaxMemory || s.vaddr+s.memsz < s.vaddr {
				t.Fatalf("segment [%#x,+%#x) escapes guest memory", s.vaddr, s.memsz)
			}
		}
		if img.linux {
			if l, err := buildLinuxLayout(img, 16<<20); err == nil && l.heapStart < imageBase {
				t.Fatal("heap below image base")
			}
		}
	})
}
