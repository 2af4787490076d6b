// Package bench is `dust bench`: every way of serving one request that a
// user might pick instead of Dust (a process per request, CGI, QEMU, a
// wasm sandbox, no isolation at all) measured side by side with Dust's hvt
// and wasm machines, in one run, on the same program.
//
// Contenders run in alternating time slices (see Rounds), so that noise on
// these shared machines (other tenants, GC, a neighbour's pool refill) hits
// every contender alike; figures from one run are comparable, figures from
// different runs much less so. Besides the machine-layer table the run
// measures the gateway end to end under load, time to first byte of a
// large response, host memory per live machine and how latency grows with
// guest memory, body size and concurrency, and draws SVG charts.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Options configure a run.
type Options struct {
	Quick    bool          // CI smoke: about 30 s, no memory or scaling sections
	Duration time.Duration // machine-layer phase; other phases scale with it
	JSON     bool          // print the report as JSON instead of tables
	Out      string        // directory for SVG charts and report.json ("" = none)
	Baseline string        // contender the ratio column divides by
	Examples string        // examples directory (make examples wasm-examples)
	// Self is the dust executable, run as a child for the memory figure
	// (it is only faithful in a fresh process). Empty skips it.
	Self   string
	Stdout io.Writer
	Stderr io.Writer // progress lines
}

// budget is how long each phase runs.
type budget struct {
	slice      time.Duration // one contender's turn in a round
	machine    time.Duration
	loadSlice  time.Duration
	loadRounds int
	ttfb       int // samples per TTFB target
	restores   int // restores per point of the restore sweeps
	breakdown  int // requests of the restored-request breakdown
	scaling    bool
	memory     bool
}

func (o *Options) budget() budget {
	if o.Quick {
		d := o.Duration
		if d <= 0 {
			d = 8 * time.Second
		}
		return budget{slice: 100 * time.Millisecond, machine: d, loadSlice: min(500*time.Millisecond, max(100*time.Millisecond, d/16)), loadRounds: 2, ttfb: 20, restores: 30, breakdown: 300}
	}
	d := o.Duration
	if d <= 0 {
		d = 60 * time.Second
	}
	scale := float64(d) / float64(60*time.Second)
	return budget{
		slice: 250 * time.Millisecond, machine: d,
		loadSlice: time.Duration(scale * float64(time.Second)), loadRounds: 4,
		ttfb: max(20, int(200*scale)), restores: max(30, int(300*scale)), breakdown: max(300, int(3000*scale)),
		scaling: true, memory: true,
	}
}

// Run runs the benchmark and writes the report.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Baseline == "" {
		o.Baseline = "posix-spawn"
	}
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	t0 := time.Now()
	log := func(format string, args ...any) {
		fmt.Fprintf(o.Stderr, "bench %5.1fs: %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, args...))
	}
	b := o.budget()
	rep := &Report{Started: t0.UTC(), Host: hostInfo(), Quick: o.Quick, Baseline: o.Baseline}

	log("building and loading the programs (examples in %s)", o.Examples)
	a, err := buildArtifacts(o.Examples)
	if err != nil {
		return nil, err
	}
	defer a.close()

	cs, cleanup := machineContenders(a, log)
	rep.Machine = runMachine(ctx, cs, b, o.Baseline, log)
	cleanup()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Both before the gateway starts: the breakdown's phase hook is
	// global and must see no other machine.
	if rep.RestoreScaling, err = runRestoreScaling(ctx, a, b.restores, log); err != nil {
		rep.Skipped = append(rep.Skipped, "restore cost: "+err.Error())
		log("restore cost: %v", err)
	}
	if rep.Breakdown, err = runRestoreBreakdown(ctx, a, b.breakdown, log); err != nil {
		rep.Skipped = append(rep.Skipped, "breakdown: "+err.Error())
		log("breakdown: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	g, err := startGateway(a, log)
	if err != nil {
		rep.Skipped = append(rep.Skipped, "gateway: "+err.Error())
		log("skip gateway sections: %v", err)
	} else {
		rep.Gateway = runLoad(ctx, g.helloTargets(), 16, b.loadSlice, b.loadRounds, g.status, log)
		rep.TTFB = runTTFB(ctx, g.bigTargets(), b.ttfb, log)
		if b.scaling {
			rep.Concurrency = runConcurrency(ctx, g.helloTargets(), []int{1, 4, 16, 64, 256}, b.loadSlice, g.status, log)
		}
		g.close()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The cluster section: fewer samples in a quick run, as the others.
	forward, deploys := 1000, 10
	if o.Quick {
		forward, deploys = 100, 3
	}
	rep.Cluster = runCluster(ctx, a, forward, max(b.loadSlice, 500*time.Millisecond), deploys, log)
	if rep.Cluster.Skip != "" {
		rep.Skipped = append(rep.Skipped, "cluster: "+rep.Cluster.Skip)
	}
	if b.memory && o.Self != "" {
		rep.Memory, err = memoryInChild(ctx, o.Self, o.Examples, log)
		if err != nil {
			rep.Skipped = append(rep.Skipped, "memory per machine: "+err.Error())
			log("memory per machine: %v", err)
		}
	} else {
		rep.Skipped = append(rep.Skipped, "memory per machine: only in a full run (not --quick)")
	}
	if b.scaling {
		rep.GuestMemory = runGuestMemory(ctx, a, log)
		rep.BodySize = runBodySize(ctx, a, log)
	} else {
		rep.Skipped = append(rep.Skipped, "scaling: only in a full run (not --quick)")
	}
	rep.Targets = targets(rep)
	rep.Elapsed = time.Since(t0)

	if o.Out != "" {
		files, err := writeCharts(o.Out, rep)
		if err != nil {
			return rep, err
		}
		rep.Charts = files
		js, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(filepath.Join(o.Out, "report.json"), append(js, '\n'), 0o644); err != nil {
			return rep, err
		}
		log("wrote %d charts and report.json to %s", len(files), o.Out)
	}
	if o.JSON {
		enc := json.NewEncoder(o.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return rep, err
		}
	} else {
		rep.WriteText(o.Stdout)
	}
	return rep, rep.failures()
}

// ErrFailed is returned, after the report is written, when a contender
// that could run here failed (wrong answer, error status): a skipped one
// (no QEMU, no KVM) is not a failure.
var ErrFailed = errors.New("some contenders failed")

func (r *Report) failures() error {
	var failed []string
	for _, m := range r.Machine {
		if strings.HasPrefix(m.Skip, "failed: ") {
			failed = append(failed, m.Name)
		}
	}
	for _, t := range r.TTFB {
		if strings.HasPrefix(t.Skip, "failed: ") {
			failed = append(failed, t.Name)
		}
	}
	for _, rows := range [][]LoadRow{r.Gateway, r.Concurrency} {
		for _, l := range rows {
			if l.Errors > 0 {
				failed = append(failed, fmt.Sprintf("%s (%d clients)", l.Name, l.Concurrency))
			}
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: %s", ErrFailed, strings.Join(failed, ", "))
	}
	return nil
}

// cpuTime is user+system time of this process and its waited-for children
// (spawned programs, CGI children, QEMU).
func cpuTime() time.Duration {
	var self, kids syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(self.Utime) + tv(self.Stime) + tv(kids.Utime) + tv(kids.Stime)
}

// tally accumulates one contender's slices.
type tally struct {
	samples []time.Duration
	wall    time.Duration
	cpu     time.Duration
	err     error
}

// runSlice serves requests for about d (at least one), then lets the
// contender settle, all inside the CPU and wall accounting.
func runSlice(ctx context.Context, c *contender, d time.Duration, t *tally) {
	cpu0, w0 := cpuTime(), time.Now()
	end := w0.Add(d)
	var tick *time.Ticker
	if c.Pace > 0 {
		tick = time.NewTicker(c.Pace)
		defer tick.Stop()
	}
	for first := true; first || time.Now().Before(end); first = false {
		if tick != nil {
			<-tick.C
		}
		d, err := c.once(ctx)
		t.samples = append(t.samples, d)
		if err != nil {
			t.err = err
			break
		}
		if ctx.Err() != nil {
			break
		}
	}
	if c.settle != nil {
		c.settle()
	}
	t.wall += time.Since(w0)
	t.cpu += cpuTime() - cpu0
}

func runMachine(ctx context.Context, cs []*contender, b budget, baseline string, log func(string, ...any)) []Row {
	var live []int
	for i, c := range cs {
		if c.skip == "" {
			live = append(live, i)
		}
	}
	tallies := make([]tally, len(cs))
	rounds := 1
	if len(live) > 0 {
		rounds = max(2, int(b.machine/(b.slice*time.Duration(len(live)))))
	}
	log("machine layer: %d contenders, %d rounds of %v slices", len(live), rounds, b.slice)
	// Warm every contender once outside the figures: first-use costs
	// (page cache, JIT, lazy init) are not what a request pays.
	for _, i := range live {
		if _, err := cs[i].once(ctx); err != nil {
			cs[i].skip = "failed: " + err.Error()
			log("%s failed: %v", cs[i].Name, err)
		}
	}
	for r, order := range Rounds(len(live), rounds) {
		for _, k := range order {
			c := cs[live[k]]
			if c.skip != "" {
				continue
			}
			runSlice(ctx, c, b.slice, &tallies[live[k]])
			if err := tallies[live[k]].err; err != nil {
				c.skip = "failed: " + err.Error()
				log("%s failed: %v", c.Name, err)
			}
		}
		if ctx.Err() != nil {
			break
		}
		if (r+1)%max(1, rounds/5) == 0 {
			log("machine layer: round %d/%d", r+1, rounds)
		}
	}
	for _, c := range cs {
		if c.skip != "" || c.check == nil {
			continue
		}
		if err := c.check(); err != nil {
			c.skip = "failed: " + err.Error()
			log("%s failed: %v", c.Name, err)
		}
	}
	rows := make([]Row, len(cs))
	for i, c := range cs {
		t := tallies[i]
		rows[i] = Row{Name: c.Name, Isolation: c.Isolation, Note: c.Note, Skip: c.skip, Paced: c.Pace > 0}
		if c.extra != nil && c.skip == "" {
			rows[i].Note += c.extra()
		}
		if c.pool != nil && c.skip == "" {
			st := c.pool.Stats()
			rows[i].Pool = &st
		}
		if c.counts != nil && c.skip == "" {
			rows[i].Exits, rows[i].Syscalls = c.counts()
		}
		if len(t.samples) > 0 && c.skip == "" {
			rows[i].Summary = Summarize(t.samples)
			rows[i].Requests = len(t.samples)
			rows[i].RPS = float64(len(t.samples)) / t.wall.Seconds()
			rows[i].CPUPerReq = t.cpu / time.Duration(len(t.samples))
			rows[i].samples = t.samples
		}
	}
	var base time.Duration
	for _, r := range rows {
		if r.Name == baseline {
			base = r.P50
		}
	}
	if base == 0 {
		log("baseline %q was not measured: the ratio column stays empty", baseline)
	}
	for i := range rows {
		rows[i].VsBaseline = jsonFloat(Ratio(rows[i].P50, base))
	}
	runtime.GC()
	return rows
}
