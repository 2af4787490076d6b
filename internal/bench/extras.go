package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/wasm"
)

// memoryMachines is how many hello machines the memory figure keeps alive:
// the "2,000 per GiB" target, measured at that count because the
// kernel's per-VM cost grows with the number of VMs.
const memoryMachines = 2000

// MemoryChildFlag makes `dust bench` measure memory per machine and print
// the result as JSON (see memoryInChild).
const MemoryChildFlag = "--memory-child"

// memoryInChild runs the memory measurement in a fresh child process:
// MemAvailable is only faithful there, since kernel objects freed by
// earlier machines stay in slab caches and are reused.
func memoryInChild(ctx context.Context, self, examples string, log func(string, ...any)) (*MemoryResult, error) {
	log("memory: %d live hvt machines in a child process", memoryMachines)
	cmd := exec.CommandContext(ctx, self, "bench", MemoryChildFlag, "--examples", examples)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%v: %s", err, strings.TrimSpace(errb.String()))
	}
	var m MemoryResult
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		return nil, fmt.Errorf("child output %q: %w", out.Bytes(), err)
	}
	return &m, nil
}

// MemoryChild keeps memoryMachines hello machines (2 MiB guests) alive
// after they served their request and writes what each costs the host as
// JSON: the private pages this process touched for it, and the drop in
// MemAvailable (which also counts KVM's structures, shadow page tables and
// the kernel thread each VM that ran gets).
func MemoryChild(examples string, w io.Writer) error {
	if err := kvm.Available(); err != nil {
		return err
	}
	img, err := os.ReadFile(filepath.Join(examples, "hello", "hello.elf"))
	if err != nil {
		return err
	}
	im, err := hvt.Prepare(img, machine.Limits{Memory: 2 << 20})
	if err != nil {
		return err
	}
	defer im.Close()
	runtime.GC()
	priv0, err := privateKiB()
	if err != nil {
		return err
	}
	avail0, err := procField("/proc/meminfo", "MemAvailable:")
	if err != nil {
		return err
	}
	t0 := time.Now()
	ms := make([]machine.Machine, 0, memoryMachines)
	defer func() {
		for _, m := range ms {
			m.Close()
		}
	}()
	for range memoryMachines {
		m, err := im.NewMachine()
		if err != nil {
			return fmt.Errorf("machine %d: %w", len(ms), err)
		}
		ms = append(ms, m)
		if res := m.Run(context.Background(), &machine.Request{Env: helloEnv}, io.Discard, io.Discard); res.Outcome != machine.Served {
			return res.Err()
		}
	}
	took := time.Since(t0)
	priv1, err := privateKiB()
	if err != nil {
		return err
	}
	avail1, err := procField("/proc/meminfo", "MemAvailable:")
	if err != nil {
		return err
	}
	threads, err := procField("/proc/self/status", "Threads:")
	if err != nil {
		return err
	}
	host := float64(avail0-avail1) / memoryMachines
	res := MemoryResult{
		Machines: memoryMachines, GuestMiB: 2,
		PrivateKiB: float64(priv1-priv0) / memoryMachines, HostKiB: host,
		ThreadsWhileLive: int(threads), CreateAllDuration: took.Round(time.Millisecond).String(),
	}
	if host > 0 {
		res.MachinesPerGiB = int(float64(1<<20) / host)
	}
	return json.NewEncoder(w).Encode(res)
}

func privateKiB() (int64, error) {
	d, err := procField("/proc/self/smaps_rollup", "Private_Dirty:")
	if err != nil {
		return 0, err
	}
	c, err := procField("/proc/self/smaps_rollup", "Private_Clean:")
	return d + c, err
}

func procField(file, key string) (int64, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			var n int64
			if _, err := fmt.Sscan(v, &n); err != nil {
				return 0, fmt.Errorf("%s %s: %w", file, key, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s: no %s", file, key)
}

// runGuestMemory times a cold hello machine (create, run, close) for guest
// sizes from 2 MiB to 1 GiB, sizes alternating machine by machine.
func runGuestMemory(ctx context.Context, a *artifacts, log func(string, ...any)) []ScalePoint {
	if a.why("hello.elf") != "" || kvm.Available() != nil {
		return nil
	}
	sizes := []int64{2 << 20, 8 << 20, 32 << 20, 128 << 20, 512 << 20, 1 << 30}
	const n = 60
	log("scaling: guest memory %s to %s, %d machines each", fmtBytes(sizes[0]), fmtBytes(sizes[len(sizes)-1]), n)
	imgs := make([]machine.Image, len(sizes))
	for i, s := range sizes {
		im, err := hvt.Kind{}.Prepare(a.helloELF, machine.Limits{Memory: s})
		if err != nil {
			log("guest memory %s: %v", fmtBytes(s), err)
			return nil
		}
		defer im.Close()
		imgs[i] = im
	}
	parts := make([]map[string][]time.Duration, len(sizes))
	for i := range parts {
		parts[i] = map[string][]time.Duration{}
	}
	for _, order := range Rounds(len(sizes), n) {
		for _, i := range order {
			if ctx.Err() != nil {
				break
			}
			t0 := time.Now()
			m, err := imgs[i].NewMachine()
			if err != nil {
				log("guest memory %s: %v", fmtBytes(sizes[i]), err)
				return nil
			}
			t1 := time.Now()
			res := m.Run(ctx, &machine.Request{Env: helloEnv}, io.Discard, io.Discard)
			t2 := time.Now()
			m.Close()
			t3 := time.Now()
			if err := res.Err(); err != nil {
				log("guest memory %s: %v", fmtBytes(sizes[i]), err)
				return nil
			}
			p := parts[i]
			p["create"] = append(p["create"], t1.Sub(t0))
			p["run"] = append(p["run"], t2.Sub(t1))
			p["close"] = append(p["close"], t3.Sub(t2))
			p["total"] = append(p["total"], t3.Sub(t0))
		}
	}
	var pts []ScalePoint
	for i, s := range sizes {
		tot := Summarize(parts[i]["total"])
		pt := ScalePoint{Series: "hvt hello", X: s, P50: tot.P50, P99: tot.P99, N: tot.N, Parts: map[string]time.Duration{}}
		for _, k := range []string{"create", "run", "close"} {
			pt.Parts[k] = Summarize(parts[i][k]).P50
		}
		pts = append(pts, pt)
	}
	return pts
}

// runBodySize times echo with bodies from 1 KiB to 64 MiB on hvt and wasm:
// the run only (the machine is made before the clock starts and closed
// after it stops), since creation does not depend on the body.
func runBodySize(ctx context.Context, a *artifacts, log func(string, ...any)) []ScalePoint {
	sizes := []int64{1 << 10, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20}
	lim := machine.Limits{MaxOutput: 128 << 20, Timeout: time.Minute}
	type kind struct {
		series string
		im     machine.Image
	}
	var ks []kind
	if a.why("echo.elf") == "" && kvm.Available() == nil {
		if im, err := (hvt.Kind{}).Prepare(a.echoELF, lim); err == nil {
			defer im.Close()
			ks = append(ks, kind{"hvt echo", im})
		}
	}
	if a.why("echo.wasm") == "" {
		if im, err := (wasm.Kind{}).Prepare(a.echoWasm, lim); err == nil {
			defer im.Close()
			ks = append(ks, kind{"wasm echo", im})
		}
	}
	if len(ks) == 0 {
		return nil
	}
	body := bytes.Repeat([]byte("0123456789abcdef"), int(sizes[len(sizes)-1]/16))
	log("scaling: request body %s to %s through echo", fmtBytes(sizes[0]), fmtBytes(sizes[len(sizes)-1]))
	var pts []ScalePoint
	for _, s := range sizes {
		// Fewer samples for big bodies: 64 MiB takes a while, and its
		// spread is small relative to its median.
		n := int(max(3, min(40, (64<<20)/s/4)))
		samples := make([][]time.Duration, len(ks))
		for _, order := range Rounds(len(ks), n) {
			for _, i := range order {
				if ctx.Err() != nil {
					return pts
				}
				m, err := ks[i].im.NewMachine()
				if err != nil {
					log("body %s: %v", fmtBytes(s), err)
					return pts
				}
				var cw countWriter
				t0 := time.Now()
				res := m.Run(ctx, &machine.Request{
					Env:  []string{"REQUEST_METHOD=PUT", fmt.Sprintf("CONTENT_LENGTH=%d", s)},
					Body: bytes.NewReader(body[:s]), BodyLen: s,
				}, &cw, io.Discard)
				samples[i] = append(samples[i], time.Since(t0))
				m.Close()
				if err := res.Err(); err != nil || cw.n < s {
					log("body %s on %s: %v (%d bytes out)", fmtBytes(s), ks[i].series, err, cw.n)
					return pts
				}
			}
		}
		for i, k := range ks {
			sum := Summarize(samples[i])
			pts = append(pts, ScalePoint{Series: k.series, X: s, P50: sum.P50, P99: sum.P99, N: sum.N})
		}
	}
	return pts
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
