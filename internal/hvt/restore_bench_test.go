package hvt

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
)

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRestore is hello in restore mode, side by side with its floor:
//
//   - floor: one KVM_RUN round trip with a single exit on an existing,
//     warmed vCPU (three instructions ending in an OUT): the physical
//     limit of one request on this host;
//   - restore-seq: run hello, then restore the machine, on one machine;
//     p50 is the request (run only), reset-p50 the restore, cpu the
//     process CPU per request with the restore included;
//   - restore-pool: the production path, machine.Pool with Reuse, the
//     restore on its background worker;
//   - fresh-pool: the same pool without Reuse (a new VM per request, the
//     old one destroyed in the background), for comparison.
//
// Both with the vCPU seccomp filter on (the default).
func BenchmarkRestore(b *testing.B) {
	im := prepare(b, "hello", machine.Limits{Memory: 4 << 20})
	check := func(b *testing.B, res machine.Result, out []byte) {
		if res.Outcome != machine.Served || !bytes.HasSuffix(out, []byte("Hello, world!\n")) {
			b.Fatalf("%v %q", res.Err(), out)
		}
	}
	b.Run("floor", func(b *testing.B) {
		mm, err := im.newMachine()
		if err != nil {
			b.Fatal(err)
		}
		defer mm.Close()
		// The warm-up stub ends in mov $port,%edx; xor %eax,%eax; out.
		regs := kvm.Regs{RIP: warmAddr + uint64(bytes.Index(warmStub, []byte{0xba, 0xff, 0xd0})), RSP: im.lay.stackTop, RFLAGS: 0x3002}
		lat := make(latencies, 0, b.N)
		c0 := cpuTime()
		err = onWorker(func() {
			for i := 0; i < b.N; i++ {
				mm.run.Sync().Regs = regs
				*mm.run.DirtyRegs() = kvm.KVM_SYNC_X86_REGS
				t0 := time.Now()
				if err := kvm.RunVCPU(mm.vcpufd); err != nil && err != unix.EINTR {
					b.Error(err)
					return
				}
				lat = append(lat, time.Since(t0))
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64((cpuTime()-c0).Microseconds())/float64(b.N), "cpu-µs/req")
		lat.Report(b)
	})
	b.Run("restore-seq-no-seccomp", func(b *testing.B) {
		// Without the filter the vCPU runs on the caller's thread: what
		// the hop to a filtered worker thread costs a restored request.
		SetSeccomp(false)
		defer SetSeccomp(true)
		restoreSeq(b, im, check)
	})
	b.Run("restore-seq", func(b *testing.B) { restoreSeq(b, im, check) })
	for _, reuse := range []bool{true, false} {
		name := map[bool]string{true: "restore-pool", false: "fresh-pool"}[reuse]
		b.Run(name, func(b *testing.B) {
			pool := machine.NewPool(im, machine.PoolOptions{Size: 4, Reuse: reuse})
			defer pool.Close()
			waitReady(pool, 4)
			var out bytes.Buffer
			lat := make(latencies, 0, b.N)
			b.ResetTimer()
			c0 := cpuTime()
			for i := 0; i < b.N; i++ {
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
			b.ReportMetric(float64((cpuTime()-c0).Microseconds())/float64(b.N), "cpu-µs/req")
			st := pool.Stats()
			b.ReportMetric(float64(st.Hits)/float64(st.Hits+st.Misses)*100, "pool-hit-%")
			lat.Report(b)
		})
	}
}

// restoreSeq serves hello on one machine, restored after every request.
func restoreSeq(b *testing.B, im *Image, check func(*testing.B, machine.Result, []byte)) {
	mm, err := im.newMachine()
	if err != nil {
		b.Fatal(err)
	}
	defer mm.Close()
	var out bytes.Buffer
	lat := make(latencies, 0, b.N)
	reset := make(latencies, 0, b.N)
	b.ResetTimer()
	c0 := cpuTime()
	for i := 0; i < b.N; i++ {
		out.Reset()
		t0 := time.Now()
		res := mm.Run(context.Background(), &machine.Request{Env: helloEnv}, &out, io.Discard)
		t1 := time.Now()
		if err := mm.Reset(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, t1.Sub(t0))
		reset = append(reset, time.Since(t1))
		check(b, res, out.Bytes())
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-c0).Microseconds())/float64(b.N), "cpu-µs/req")
	slices.Sort(reset)
	b.ReportMetric(reset.Quantile(0.5), "reset-p50-µs")
	lat.Report(b)
}

// BenchmarkRestoreScaling shows what a restore costs against the pages a
// request dirtied and against the guest's memory size: it must grow with
// the pages written, not with the guest.
func BenchmarkRestoreScaling(b *testing.B) {
	src := `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void){
	const char *q = getenv("QUERY_STRING"); long n = q ? atol(q) : 0;
	static char *buf; if (!buf) buf = malloc((n + 1) * 4096);
	for (long i = 0; i < n; i++) buf[i * 4096] = (char)(i + 1);
	printf("Content-Type: text/plain\r\n\r\n%ld\n", n);
	return 0;
}`
	elf := cGuestELF(b, "dirty", src)
	run := func(b *testing.B, mem int64, pages int) {
		im := prepareELF(b, elf, machine.Limits{Memory: mem})
		mm, err := im.newMachine()
		if err != nil {
			b.Fatal(err)
		}
		defer mm.Close()
		req := func() *machine.Request {
			env := []string{fmt.Sprintf("QUERY_STRING=%d", pages)}
			for _, kv := range helloEnv {
				if !strings.HasPrefix(kv, "QUERY_STRING=") {
					env = append(env, kv)
				}
			}
			return &machine.Request{Env: env}
		}
		// Once outside the timing: the first run makes the pages private.
		mm.Run(context.Background(), req(), io.Discard, io.Discard)
		if err := mm.Reset(); err != nil {
			b.Fatal(err)
		}
		reset := make(latencies, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			res := mm.Run(context.Background(), req(), io.Discard, io.Discard)
			if res.Outcome != machine.Served {
				b.Fatal(res.Err())
			}
			t0 := time.Now()
			if err := mm.Reset(); err != nil {
				b.Fatal(err)
			}
			reset = append(reset, time.Since(t0))
		}
		b.StopTimer()
		_, copied := mm.LastRestore()
		b.ReportMetric(float64(copied), "pages-copied")
		reset.Report(b)
	}
	for _, pages := range []int{1, 16, 256, 4096} {
		b.Run(fmt.Sprintf("dirty-%d-pages-64MiB", pages), func(b *testing.B) { run(b, 64<<20, pages) })
	}
	for _, mem := range []int64{2 << 20, 16 << 20, 128 << 20, 1 << 30} {
		b.Run(fmt.Sprintf("dirty-16-pages-%dMiB", mem>>20), func(b *testing.B) { run(b, mem, 16) })
	}
}
