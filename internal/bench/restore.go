package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
)

// dirtySource is the guest of the restore sweeps: it writes one byte in
// each of N pages of fresh heap, N from the query string, so that the
// restore after it has N more pages to find, compare and copy back. The
// heap is part of what a restore resets, so every request writes the same
// N pages again.
const dirtySource = `#include <stdio.h>
#include <stdlib.h>

int main(void) {
	const char *q = getenv("QUERY_STRING");
	long n = q ? strtol(q, 0, 10) : 0;
	if (n < 0)
		n = 0;
	char *p = malloc((size_t)n * 4096 + 1);
	for (long i = 0; i < n; i++)
		p[i * 4096] = (char)(i | 1);
	printf("Content-Type: text/plain\r\n\r\n%ld\n", n);
	return 0;
}
`

// RestorePoint is the cost of one restore at one point of a sweep.
type RestorePoint struct {
	Series string `json:"series"` // "pages" (64 MiB guest) or "memory" (16 pages)
	Pages  int    `json:"dirtied_pages"`
	Memory int64  `json:"guest_memory_bytes"`
	// Reset is the restore (hvt.Machine.Reset) alone; Run the request
	// before it.
	Reset Summary       `json:"reset"`
	Run   time.Duration `json:"run_p50_ns"`
	// What the last restore did (hvt.Machine.LastRestore): pages the
	// page map listed as written and compared, and pages copied back.
	Compared int `json:"pages_compared"`
	Copied   int `json:"pages_copied"`
}

// Restore sweep points, as in internal/hvt's BenchmarkRestoreScaling.
var (
	restorePages     = []int{1, 16, 256, 4096}
	restoreMemories  = []int64{2 << 20, 16 << 20, 128 << 20, 1 << 30}
	restorePagesMem  = int64(64 << 20)
	restoreMemsPages = 16
)

// dirtyRequest asks the dirty guest to write n pages.
func dirtyRequest(n int) *machine.Request {
	env := []string{fmt.Sprintf("QUERY_STRING=%d", n)}
	for _, kv := range helloEnv {
		if !strings.HasPrefix(kv, "QUERY_STRING=") {
			env = append(env, kv)
		}
	}
	return &machine.Request{Env: env}
}

// runRestoreScaling times the restore after a request that dirtied 1 to
// 4096 pages of a 64 MiB guest, and after one that dirtied 16 pages of a
// 2 MiB to 1 GiB guest: it should follow the pages, not the guest. One
// machine per point, restored n times, points alternating request by
// request.
func runRestoreScaling(ctx context.Context, a *artifacts, n int, log func(string, ...any)) ([]RestorePoint, error) {
	if why := a.why("dirty.elf"); why != "" {
		return nil, fmt.Errorf("dirty guest: %s", why)
	}
	if err := kvm.Available(); err != nil {
		return nil, fmt.Errorf("no usable KVM: %w", err)
	}
	log("restore cost: %v pages of a %s guest, %d pages of %s to %s guests, %d restores each",
		restorePages, fmtBytes(restorePagesMem), restoreMemsPages, fmtBytes(restoreMemories[0]), fmtBytes(restoreMemories[len(restoreMemories)-1]), n)
	type point struct {
		RestorePoint
		m        *hvt.Machine
		req      *machine.Request
		run, rst []time.Duration
	}
	var pts []*point
	images := map[int64]*hvt.Image{}
	defer func() {
		for _, p := range pts {
			p.m.Close()
		}
		for _, im := range images {
			im.Close()
		}
	}()
	add := func(series string, pages int, mem int64) error {
		im := images[mem]
		if im == nil {
			var err error
			if im, err = hvt.Prepare(a.dirtyELF, machine.Limits{Memory: mem}); err != nil {
				return fmt.Errorf("preparing the dirty guest with %s: %w", fmtBytes(mem), err)
			}
			images[mem] = im
		}
		mm, err := im.NewMachine()
		if err != nil {
			return err
		}
		m := mm.(*hvt.Machine)
		pts = append(pts, &point{RestorePoint: RestorePoint{Series: series, Pages: pages, Memory: mem}, m: m, req: dirtyRequest(pages)})
		return nil
	}
	for _, p := range restorePages {
		if err := add("pages", p, restorePagesMem); err != nil {
			return nil, err
		}
	}
	for _, mem := range restoreMemories {
		if err := add("memory", restoreMemsPages, mem); err != nil {
			return nil, err
		}
	}
	// One request and restore per machine outside the figures: the first
	// run is what makes the pages private; every later one finds them so.
	for r, order := range Rounds(len(pts), n+1) {
		for _, k := range order {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			p := pts[k]
			t0 := time.Now()
			res := p.m.Run(ctx, p.req, io.Discard, io.Discard)
			t1 := time.Now()
			if err := res.Err(); err != nil {
				return nil, fmt.Errorf("dirty guest, %d pages of %s: %w", p.Pages, fmtBytes(p.Memory), err)
			}
			if err := p.m.Reset(); err != nil {
				return nil, fmt.Errorf("restoring after %d pages of %s: %w", p.Pages, fmtBytes(p.Memory), err)
			}
			if r > 0 {
				p.run = append(p.run, t1.Sub(t0))
				p.rst = append(p.rst, time.Since(t1))
			}
		}
	}
	out := make([]RestorePoint, len(pts))
	for i, p := range pts {
		out[i] = p.RestorePoint
		out[i].Reset = Summarize(p.rst)
		out[i].Run = Summarize(p.run).P50
		out[i].Compared, out[i].Copied = p.m.LastRestore()
	}
	return out, nil
}

// Phase is one step of a restored request, from hvt.PhaseHook.
type Phase struct {
	Name string        `json:"name"`
	P50  time.Duration `json:"p50_ns"`
	P99  time.Duration `json:"p99_ns"`
	N    int           `json:"n"`
}

// runRestoreBreakdown serves hello n times on one machine, restored after
// each request, with hvt.PhaseHook on: where the microseconds of a
// restored request and of its restore go. The hook is global; it is set
// only here, while no other machine runs.
func runRestoreBreakdown(ctx context.Context, a *artifacts, n int, log func(string, ...any)) ([]Phase, error) {
	if why := a.why("hello.elf"); why != "" {
		return nil, fmt.Errorf("hello: %s", why)
	}
	if err := kvm.Available(); err != nil {
		return nil, fmt.Errorf("no usable KVM: %w", err)
	}
	log("breakdown: %d restored hello requests on one machine, phase by phase", n)
	var mu sync.Mutex
	phases := map[string][]time.Duration{}
	var order []string
	hvt.PhaseHook = func(group, phase string, d time.Duration) {
		if group != "run" && group != "restore" {
			return
		}
		k := group + ": " + phase
		mu.Lock()
		if _, ok := phases[k]; !ok {
			order = append(order, k)
		}
		phases[k] = append(phases[k], d)
		mu.Unlock()
	}
	defer func() { hvt.PhaseHook = nil }()
	im, err := hvt.Prepare(a.helloELF, machine.Limits{Memory: 4 << 20})
	if err != nil {
		return nil, fmt.Errorf("preparing hello: %w", err)
	}
	defer im.Close()
	mm, err := im.NewMachine()
	if err != nil {
		return nil, err
	}
	defer mm.Close()
	m := mm.(*hvt.Machine)
	var total, reset []time.Duration
	for i := -1; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t0 := time.Now()
		res := m.Run(ctx, &machine.Request{Env: helloEnv}, io.Discard, io.Discard)
		t1 := time.Now()
		if err := res.Err(); err != nil {
			return nil, fmt.Errorf("hello: %w", err)
		}
		if err := m.Reset(); err != nil {
			return nil, fmt.Errorf("restoring hello: %w", err)
		}
		if i < 0 {
			// The first request warms what the others find warm; its
			// phases are not theirs.
			mu.Lock()
			clear(phases)
			order = order[:0]
			mu.Unlock()
			continue
		}
		total, reset = append(total, t1.Sub(t0)), append(reset, time.Since(t1))
	}
	mu.Lock()
	defer mu.Unlock()
	// The request's phases, then its restore's, each closed by its
	// total: the phases' medians need not add up to the median total.
	var out []Phase
	for _, g := range []struct {
		group string
		total []time.Duration
	}{{"run", total}, {"restore", reset}} {
		for _, k := range order {
			if strings.HasPrefix(k, g.group+": ") {
				s := Summarize(phases[k])
				out = append(out, Phase{Name: k, P50: s.P50, P99: s.P99, N: s.N})
			}
		}
		s := Summarize(g.total)
		out = append(out, Phase{Name: g.group + ": total", P50: s.P50, P99: s.P99, N: s.N})
	}
	return out, nil
}
