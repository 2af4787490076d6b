package hvt

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// Hostile Linux guests: testdata/linuxleak/hostile.c makes raw system
// calls with bad pointers (monitor pages, beyond memory, wrapping, into
// code, running into the guard page), huge lengths, mmap, clone and futex
// bombs, writes under /app, .. escapes, link tricks, execve, sockets,
// signals to others and unknown numbers. Each case is one request on one
// machine restored between them; each call must get its errno (or the run
// its typed outcome), the host must stay at its baseline of descriptors
// and threads, and the next request must find a process like a brand-new
// machine's.

func hostileTableELF(t testing.TB, tc toolchain) []byte {
	t.Helper()
	b, _ := buildLinux(t, tc, tc.name+"/hostile-table", tc.name+"-hostile-table", func(out string) *exec.Cmd {
		return exec.Command(tc.cc, append(append([]string{"-O2", "-o", out}, tc.flags...), "testdata/linuxleak/hostile.c")...)
	})
	return b
}

// Errnos as the program prints them.
const (
	ePERM, eNOENT, eSRCH, eBADF, eCHILD, eAGAIN, eNOMEM, eFAULT = "-1", "-2", "-3", "-9", "-10", "-11", "-12", "-14"
	eBUSY, eNOTDIR, eINVAL, eROFS, eACCES                       = "-16", "-20", "-22", "-30", "-13"
	eNAMETOOLONG, eNOSYS, eTIMEDOUT                             = "-36", "-38", "-110"
	pos                                                         = ">0" // any positive count
	nonneg                                                      = ">=0"
)

var hostileCases = []struct {
	name   string
	want   []string        // each call's answer, in order
	out    machine.Outcome // the run's outcome
	detail string
	ctx    time.Duration // a deadline for the run, when it is the way out
}{
	{name: "rw", want: []string{eFAULT, eFAULT, eFAULT, eFAULT, "0", eFAULT, eFAULT, eFAULT, pos, "8", eFAULT, eBADF}},
	{name: "iov", want: []string{eFAULT, eFAULT, eFAULT, eFAULT, eINVAL, eINVAL, eFAULT, "0", eFAULT}},
	{name: "paths", want: []string{eFAULT, eNAMETOOLONG, eFAULT, eFAULT, eFAULT, eFAULT, eFAULT, eFAULT, eFAULT, eFAULT, eFAULT, eFAULT, eFAULT, eINVAL}},
	// mprotect of code to RWX answers 0 and changes nothing: the page
	// tables are fixed (docs/linux-abi.md, "mprotect").
	{name: "mmap", want: []string{"1", eNOMEM, "0", eNOMEM, eNOMEM, ePERM, eINVAL, eNOMEM, eNOMEM, "0"}},
	{name: "mremap", want: []string{eFAULT, eNOMEM, eNOMEM, eINVAL, eINVAL, eINVAL, eNOMEM}},
	{name: "brk", want: []string{"1", "1", "1", "1", "1"}},
	{name: "threads", want: []string{"63", eAGAIN}},
	{name: "procs", want: []string{ePERM, ePERM, ePERM, ePERM, eINVAL, ePERM, eINVAL, eFAULT, eCHILD}},
	{name: "futex-timeout", want: []string{eTIMEDOUT, eINVAL, eFAULT, eAGAIN, eFAULT, eINVAL, eNOSYS}},
	{name: "futex-forever", out: machine.BadOutput, detail: "nothing can wake"},
	{name: "futex-deadline", out: machine.DeadlineExceeded, ctx: 300 * time.Millisecond},
	{name: "erofs", want: []string{eROFS, eROFS, eROFS, eROFS, eROFS, eROFS, eROFS, eROFS, eROFS, eACCES, eACCES, eBUSY, eBADF, eINVAL}},
	{name: "dotdot", want: []string{eNOENT, eNOENT, eNOENT, eROFS, "0", eNOENT, eNOENT, eNOTDIR}},
	{name: "symlink", want: []string{eNOSYS, eNOSYS, eNOSYS, eNOSYS, eNOSYS, eNOENT, eNOENT, eNOENT, eNOENT, nonneg, eINVAL}},
	{name: "exec", want: []string{ePERM, ePERM, ePERM}},
	// Sockets are served against in-monitor streams (internal/linux/net.go),
	// with no network behind them.
	{name: "net", want: []string{"0", "-101", "-97", "-94", "0", "0", eAGAIN, "-32", eFAULT, "-88"}},
	{name: "kill", want: []string{ePERM, ePERM, ePERM, eSRCH, ePERM, eSRCH, "0", eINVAL}},
	{name: "unknown", want: []string{eNOSYS, eNOSYS, eNOSYS, eNOSYS, eNOSYS, eNOSYS, eNOSYS, eNOSYS, eNOSYS, eNOSYS}},
}

func matchAnswer(got, want string) bool {
	switch want {
	case pos:
		return !strings.HasPrefix(got, "-") && got != "0"
	case nonneg:
		return !strings.HasPrefix(got, "-")
	}
	return got == want
}

func TestLinuxHostileTable(t *testing.T) {
	for _, tc := range []toolchain{linuxToolchains[0], linuxToolchains[2]} {
		t.Run(tc.name, func(t *testing.T) {
			kvmtest.Require(t)
			files := fstest.MapFS{"index.html": {Data: []byte("<p>hello</p>\n"), Mode: 0o644}}
			im, err := PrepareWith(hostileTableELF(t, tc), machine.Limits{Memory: 16 << 20, MaxOutput: 64 << 10}, Options{Files: files})
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			he := fmt.Sprintf("he=%x", im.lay.heapEnd)
			run := func(m *Machine, q string, d time.Duration) (machine.Result, string) {
				ctx := context.Background()
				if d > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, d)
					defer cancel()
				}
				var out, log strings.Builder
				res := m.Run(ctx, &machine.Request{Env: []string{"QUERY_STRING=" + q + "&" + he}, Body: strings.NewReader(strings.Repeat("B", 64)), BodyLen: 64}, &out, &log)
				_, body, _ := strings.Cut(out.String(), "\r\n\r\n")
				return res, strings.TrimSpace(body)
			}
			check := func(m *Machine) string {
				res, body := run(m, "case=check", 0)
				if res.Outcome != machine.Served {
					t.Fatalf("check: %v", res.Err())
				}
				return body
			}
			fresh, err := im.newMachine()
			if err != nil {
				t.Fatal(err)
			}
			clean := check(fresh)
			fresh.Close()
			m, err := im.newMachine()
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			reset := func() {
				t.Helper()
				if err := m.Reset(); err != nil {
					t.Fatal(err)
				}
			}
			check(m)
			reset() // the page map opens at the first Reset: part of the baseline
			fds0, threads0 := machinetest.HostUsage(t)
			for _, c := range hostileCases {
				res, body := run(m, "case="+c.name, c.ctx)
				got := strings.Fields(body)
				want := c.out
				if want == 0 {
					want = machine.Served
				}
				if res.Outcome != want || !strings.Contains(res.Detail, c.detail) {
					t.Errorf("%s: %v (%s), want %v (%q)", c.name, res.Outcome, res.Detail, want, c.detail)
				}
				if c.want != nil {
					ok := len(got) == len(c.want)
					for i := 0; ok && i < len(got); i++ {
						ok = matchAnswer(got[i], c.want[i])
					}
					if !ok {
						t.Errorf("%s: answered %v, want %v", c.name, got, c.want)
					}
				}
				_, unknown := m.LinuxCalls()
				t.Logf("%s: %v (%s) %v; refused or unknown: %v", c.name, res.Outcome, res.Detail, got, unknown)
				reset()
				if fds, threads := machinetest.HostUsage(t); fds > fds0 || threads > threads0+2 {
					t.Errorf("%s: host grew: fds %d→%d threads %d→%d", c.name, fds0, fds, threads0, threads)
				}
				if at := templateDiff(m); at >= 0 {
					t.Errorf("%s: after Reset guest memory differs from the template at %#x", c.name, at)
				}
				if after := check(m); after != clean {
					t.Errorf("%s: the next request found %q, a brand-new machine %q", c.name, after, clean)
				}
				reset()
			}
		})
	}
}
