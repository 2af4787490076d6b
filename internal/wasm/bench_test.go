package wasm

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/tetratelabs/wazero/experimental"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// Benchmarks report medians and tails as custom metrics (p50-µs, p99-µs),
// as internal/hvt's do: these machines are shared and noisy, so compare
// figures from one run.

type latencies = machinetest.Latencies

var helloEnv = machinetest.HelloEnv

// BenchmarkHello is one request per iteration, instantiation and closing
// of the instance included: NewMachine, Run, Close.
func BenchmarkHello(b *testing.B) {
	for _, name := range []string{"hello", "go-hello", "go-fast-hello"} {
		b.Run(name, func(b *testing.B) {
			im := prepare(b, name, machine.Limits{})
			benchFresh(b, im, &machine.Request{Args: []string{"/hello"}, Env: helloEnv}, helloOK)
		})
	}
}

// BenchmarkSustained is fresh instances per second from as many
// goroutines as GOMAXPROCS.
func BenchmarkSustained(b *testing.B) {
	machinetest.Sustained(b, prepare(b, "hello", machine.Limits{}))
}

// BenchmarkReseed is BenchmarkHello's go-fast-hello with and without the
// per-request reseed of the Go runtime's random state (RandStateExport),
// side by side; "write" is the reseed alone, on one live instance.
func BenchmarkReseed(b *testing.B) {
	im := prepare(b, "go-fast-hello", machine.Limits{})
	regions := im.randRegions
	if len(regions) == 0 {
		b.Fatal("go-fast-hello reports no random state")
	}
	for _, c := range []struct {
		name    string
		regions []randRegion
	}{{"plain", nil}, {"reseed", regions}} {
		b.Run(c.name, func(b *testing.B) {
			im.randRegions = c.regions
			defer func() { im.randRegions = regions }()
			benchFresh(b, im, &machine.Request{Args: []string{"/hello"}, Env: helloEnv}, helloOK)
		})
	}
	b.Run("write", func(b *testing.B) {
		ctx := experimental.WithMemoryAllocator(context.Background(), &linearMemory{limit: im.maxBytes})
		mod, err := im.rt.InstantiateModule(ctx, im.compiled, im.base)
		if err != nil {
			b.Fatal(err)
		}
		defer mod.Close(ctx)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := reseed(mod, regions); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// benchFresh serves req on a new instance per iteration (NewMachine, Run,
// Close, all timed) and reports the latency; ok checks every answer.
func benchFresh(b *testing.B, im *Image, req *machine.Request, ok func(machine.Result, []byte) bool) {
	var out bytes.Buffer
	lat := make(latencies, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out.Reset()
		t0 := time.Now()
		m, err := im.NewMachine()
		if err != nil {
			b.Fatal(err)
		}
		res := m.Run(context.Background(), req, &out, io.Discard)
		m.Close()
		lat = append(lat, time.Since(t0))
		if !ok(res, out.Bytes()) {
			b.Fatalf("%v status %d %q", res.Err(), res.ExitStatus, out.Bytes())
		}
	}
	b.StopTimer()
	lat.Report(b)
}

func helloOK(res machine.Result, out []byte) bool {
	return res.Outcome == machine.Served && bytes.HasSuffix(out, []byte("Hello, world!\n"))
}
