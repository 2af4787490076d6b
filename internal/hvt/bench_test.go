package hvt

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// Benchmarks report medians and tails as custom metrics (p50-µs, p99-µs)
// because these machines are shared and noisy: compare figures from one
// run, not across runs. Run them with `make bench`.

type latencies = machinetest.Latencies

var helloEnv = machinetest.HelloEnv

// BenchmarkHello is one request through a fresh machine, three ways, plus
// the process-per-request baseline, measured in the same run.
func BenchmarkHello(b *testing.B) {
	im := prepare(b, "hello", machine.Limits{Memory: 4 << 20})
	check := func(b *testing.B, res machine.Result, out []byte) {
		if res.Outcome != machine.Served || !bytes.HasSuffix(out, []byte("Hello, world!\n")) {
			b.Fatalf("%v %q", res.Err(), out)
		}
	}
	b.Run("hvt-pool", func(b *testing.B) {
		// A pool of pre-created, never-used machines; destruction on
		// background workers. Per request: take, run, hand back.
		poolBench(b, im, check, 0)
	})
	b.Run("hvt-pool-500rps-no-seccomp", func(b *testing.B) {
		// The same without the vCPU-thread filter, which also skips the
		// hop to a worker thread: what the filter costs per request.
		SetSeccomp(false)
		defer SetSeccomp(true)
		poolBench(b, im, check, 2*time.Millisecond)
	})
	b.Run("hvt-pool-500rps", func(b *testing.B) {
		// The same, with requests arriving every 2 ms (500/s, within what
		// the pool refills on 2 cores) instead of back to back: the
		// latency a request sees when a prepared machine is waiting.
		poolBench(b, im, check, 2*time.Millisecond)
	})
	b.Run("hvt-cold", func(b *testing.B) {
		// No pool: create, run and destroy on the request path.
		var out bytes.Buffer
		lat := make(latencies, 0, b.N)
		for i := 0; i < b.N; i++ {
			out.Reset()
			t0 := time.Now()
			m, err := im.NewMachine()
			if err != nil {
				b.Fatal(err)
			}
			res := m.Run(context.Background(), &machine.Request{Env: helloEnv}, &out, io.Discard)
			m.Close()
			lat = append(lat, time.Since(t0))
			check(b, res, out.Bytes())
		}
		lat.Report(b)
	})
	b.Run("posix-spawn", func(b *testing.B) {
		// The same C program, linked statically against glibc, started
		// per request with clone(CLONE_VM|CLONE_VFORK)+execve (what
		// posix_spawn does), stdout through a pipe.
		spawnBench(b, staticHello(b)).Report(b)
	})
}

// spawnBench starts bin per request with clone(CLONE_VM|CLONE_VFORK)+execve
// (what posix_spawn does), reads its stdout through a pipe, checks it said
// hello and returns the latencies.
func spawnBench(b *testing.B, bin string) latencies {
	attr := &syscall.ProcAttr{Env: helloEnv}
	buf := make([]byte, 4096)
	lat := make(latencies, 0, b.N)
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		r, w, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		attr.Files = []uintptr{0, w.Fd(), 2}
		pid, err := syscall.ForkExec(bin, []string{bin}, attr)
		w.Close()
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.ReadFull(r, buf)
		r.Close()
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
		lat = append(lat, time.Since(t0))
		if !bytes.HasSuffix(buf[:n], []byte("Hello, world!\n")) || ws.ExitStatus() != 0 {
			b.Fatalf("spawned hello: %q status %d", buf[:n], ws.ExitStatus())
		}
	}
	return lat
}

func waitReady(p *machine.Pool, n int) {
	for p.Stats().Ready < n {
		runtime.Gosched()
	}
}

var (
	staticOnce sync.Once
	staticBin  string
	staticErr  error
)

// staticHello builds examples/hello/hello.c as an ordinary static Linux
// program with the host's gcc and glibc.
func staticHello(b *testing.B) string {
	staticOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dust-spawn-")
		if err != nil {
			staticErr = err
			return
		}
		staticBin = filepath.Join(dir, "hello")
		out, err := exec.Command("gcc", "-O2", "-static", "-o", staticBin, "../../examples/hello/hello.c").CombinedOutput()
		if err != nil {
			staticErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if staticErr != nil {
		b.Fatalf("building the static hello baseline: %v", staticErr)
	}
	return staticBin
}

// BenchmarkSustained measures fresh machines per second with creation and
// destruction included, from as many goroutines as GOMAXPROCS.
func BenchmarkSustained(b *testing.B) {
	machinetest.Sustained(b, prepare(b, "hello", machine.Limits{Memory: 4 << 20}))
}

// BenchmarkMemoryPerMachine keeps 2,000 hello machines (2 MiB guests) alive
// after they served their request and reports what each costs the host: the
// private pages this process touched for it, and the drop in the kernel's
// MemAvailable (which also counts KVM's structures, shadow page tables and
// the kernel thread each VM gets). MemAvailable is only faithful in a fresh
// process: freed kernel objects stay in slab caches and are reused, so a
// second round reads low. Hence one round per run.
func BenchmarkMemoryPerMachine(b *testing.B) {
	im := prepare(b, "hello", machine.Limits{Memory: 2 << 20})
	const n = 2000
	for i := 0; i < min(b.N, 1); i++ {
		runtime.GC()
		priv0, avail0 := privateKiB(b), memAvailableKiB(b)
		ms := make([]machine.Machine, 0, n)
		for j := 0; j < n; j++ {
			m, err := im.NewMachine()
			if err != nil {
				b.Fatal(err)
			}
			if res := m.Run(context.Background(), &machine.Request{Env: helloEnv}, io.Discard, io.Discard); res.Outcome != machine.Served {
				b.Fatal(res.Err())
			}
			ms = append(ms, m)
		}
		priv1, avail1 := privateKiB(b), memAvailableKiB(b)
		_, threads := machinetest.HostUsage(b)
		for _, m := range ms {
			m.Close()
		}
		b.ReportMetric(float64(priv1-priv0)/n, "private-KiB/machine")
		b.ReportMetric(float64(avail0-avail1)/n, "host-KiB/machine")
		b.ReportMetric(float64(threads), "threads-while-live")
	}
}

func privateKiB(b *testing.B) int64 {
	return procField(b, "/proc/self/smaps_rollup", "Private_Dirty:") + procField(b, "/proc/self/smaps_rollup", "Private_Clean:")
}

func memAvailableKiB(b *testing.B) int64 { return procField(b, "/proc/meminfo", "MemAvailable:") }

func procField(b *testing.B, file, key string) int64 {
	data, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			var n int64
			fmt.Sscan(v, &n)
			return n
		}
	}
	b.Fatalf("%s: no %s", file, key)
	return 0
}

// BenchmarkBreakdown shows where each microsecond of a hello machine's life
// goes: every creation, run and destruction phase (ioctl by ioctl), median
// and p99, printed as a table with -v. Machines are made, run and closed
// one at a time so the phases do not overlap.
func BenchmarkBreakdown(b *testing.B) {
	im := prepare(b, "hello", machine.Limits{Memory: 4 << 20})
	var mu sync.Mutex
	phases := map[string][]time.Duration{}
	var order []string
	PhaseHook = func(group, phase string, d time.Duration) {
		k := group + ": " + phase
		mu.Lock()
		if _, ok := phases[k]; !ok {
			order = append(order, k)
		}
		phases[k] = append(phases[k], d)
		mu.Unlock()
	}
	defer func() { PhaseHook = nil }()
	exits := 0
	for i := 0; i < b.N; i++ {
		m, err := im.NewMachine()
		if err != nil {
			b.Fatal(err)
		}
		res := m.Run(context.Background(), &machine.Request{Env: helloEnv}, io.Discard, io.Discard)
		if res.Outcome != machine.Served {
			b.Fatal(res.Err())
		}
		exits += res.Exits
		m.Close()
	}
	b.StopTimer()
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-58s %10s %10s\n", "phase", "p50 µs", "p99 µs")
	totals := map[string]float64{}
	for _, k := range order {
		l := latencies(phases[k])
		slices.Sort(l)
		p50, p99 := l.Quantile(0.5), l.Quantile(0.99)
		fmt.Fprintf(&sb, "%-58s %10.1f %10.1f\n", k, p50, p99)
		totals[strings.SplitN(k, ":", 2)[0]] += p50
	}
	b.Log(sb.String())
	for g, v := range totals {
		b.ReportMetric(v, g+"-p50sum-µs")
	}
	b.ReportMetric(float64(exits)/float64(b.N), "exits/request")
}

// poolBench serves requests from a pool of 16 prepared machines, one every
// `every` (back to back when 0), and reports the latency distribution and
// pool hit rate.
func poolBench(b *testing.B, im *Image, check func(*testing.B, machine.Result, []byte), every time.Duration) {
	pool := machine.NewPool(im, machine.PoolOptions{Size: 16})
	defer pool.Close()
	waitReady(pool, 16)
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	var out bytes.Buffer
	lat := make(latencies, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if tick != nil {
			<-tick
		}
		out.Reset()
		t0 := time.Now()
		res, err := pool.Do(context.Background(), &machine.Request{Env: helloEnv}, &out, io.Discard)
		lat = append(lat, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		check(b, res, out.Bytes())
	}
	b.StopTimer()
	lat.Report(b)
	st := pool.Stats()
	b.ReportMetric(float64(st.Hits)/float64(st.Hits+st.Misses)*100, "pool-hit-%")
}
