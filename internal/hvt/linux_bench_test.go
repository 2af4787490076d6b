package hvt

import (
	"bytes"
	"context"
	"io"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// BenchmarkLinux is the static C CGI hello as an ordinary Linux program:
// on a restored machine (run, then Reset, on one machine; p50 is the
// request, cpu-µs/req the process CPU with the restore included), next to
// posix_spawn of the very same binary, for musl and glibc, in one run.
func BenchmarkLinux(b *testing.B) {
	for _, tc := range []toolchain{linuxToolchains[2], linuxToolchains[0]} {
		elf, bin := linuxBin(b, tc, "hello")
		b.Run("hvt-restore-"+tc.name, func(b *testing.B) {
			im, err := Prepare(elf, machine.Limits{Memory: 8 << 20})
			if err != nil {
				b.Fatal(err)
			}
			defer im.Close()
			m, err := im.newMachine()
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			var out bytes.Buffer
			lat := make(latencies, 0, b.N)
			exits := 0
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				out.Reset()
				t0 := time.Now()
				res := m.Run(context.Background(), &machine.Request{Env: helloEnv}, &out, io.Discard)
				lat = append(lat, time.Since(t0))
				if res.Outcome != machine.Served || !bytes.HasSuffix(out.Bytes(), []byte("Hello, world!\n")) {
					b.Fatalf("%v %q", res.Err(), out.Bytes())
				}
				exits += res.Exits
				if err := m.Reset(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/req")
			b.ReportMetric(float64(exits)/float64(b.N), "exits/req")
			lat.Report(b)
		})
		b.Run("posix-spawn-"+tc.name, func(b *testing.B) {
			cpu0 := cpuTime() + childCPU()
			lat := spawnBench(b, bin)
			// The child's CPU is the request's cost too.
			b.ReportMetric(float64((cpuTime()+childCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/req")
			lat.Report(b)
		})
	}
}

// BenchmarkLinuxSyscall is the cost of one system call (getpid) on a
// restored machine: requests making 0 and 1000 calls, the difference per
// call, for the default return path and for directReturn.
func BenchmarkLinuxSyscall(b *testing.B) {
	elf := linuxELF(b, linuxToolchains[2], "spin")
	for _, direct := range []bool{false, true} {
		name := map[bool]string{false: "default", true: "direct-sregs"}[direct]
		b.Run(name, func(b *testing.B) {
			directReturn = direct
			defer func() { directReturn = false }()
			im, err := Prepare(elf, machine.Limits{Memory: 8 << 20})
			if err != nil {
				b.Fatal(err)
			}
			defer im.Close()
			m, err := im.newMachine()
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			run := func(n int) time.Duration {
				t0 := time.Now()
				res := m.Run(context.Background(), &machine.Request{Args: []string{"/spin", strconv.Itoa(n)}}, io.Discard, io.Discard)
				d := time.Since(t0)
				if res.Outcome != machine.Served {
					b.Fatal(res.Err())
				}
				if err := m.Reset(); err != nil {
					b.Fatal(err)
				}
				return d
			}
			var base, many latencies
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				base = append(base, run(0))
				many = append(many, run(1000))
			}
			b.StopTimer()
			p0, p1 := quantile(base), quantile(many)
			b.ReportMetric((p1-p0)/1000, "µs/syscall")
		})
	}
}

func quantile(l latencies) float64 {
	c := slices.Clone(l)
	slices.Sort(c)
	return c.Quantile(0.5)
}

// childCPU is the CPU time of this process's waited-for children.
func childCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
