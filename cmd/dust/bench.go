package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dust-run/dust/internal/bench"
)

func cmdBench(args []string, stdout, stderr io.Writer) int {
	// The memory figure needs a fresh process (see bench.MemoryChild): the
	// parent re-runs this binary with this flag.
	if len(args) > 0 && args[0] == bench.MemoryChildFlag {
		examples := "examples"
		if len(args) == 3 && args[1] == "--examples" {
			examples = args[2]
		}
		if err := bench.MemoryChild(examples, stdout); err != nil {
			fmt.Fprintf(stderr, "dust bench: memory: %v\n", err)
			return exitError
		}
		return exitOK
	}
	f := newCmdFlags("bench", "[flags]", `Runs every contender (Dust hvt restored and fresh, its KVM_RUN floor, wasm,
posix_spawn, a container per request (namespaces, runc), net/http/cgi, QEMU
microvm, plain net/http) on the same hello program, alternating them in
rounds, and prints latency, throughput, CPU per request, ratios, the cost of
a restore against pages dirtied and guest size, and the targets. Run it
from the repository root after `+"`make build examples wasm-examples`"+`
(or use `+"`make bench`"+`). Progress goes to stderr.

A full run writes its SVG charts and report.json to --out (default
docs/bench, the figures the docs show); --quick writes nothing unless
--out is given, so a try-out leaves the checkout as it was.`, `  dust bench --quick                     # about 15 s, writes no files
  dust bench                             # full run; charts to docs/bench
  dust bench --duration 2m --out /tmp/b  # longer, charts elsewhere
  dust bench --quick --json > report.json`)
	quick := f.Bool("quick", false, "short run (about 15 s) for CI: no memory or scaling sections, no files written unless --out is given")
	dur := f.duration("duration", "machine-layer phase length; other phases scale with it (default 60s, 8s with --quick; at most 24h)")
	asJSON := f.Bool("json", false, "print the report as JSON")
	out := f.str("out", "DIR", `directory for the SVG charts and report.json (default docs/bench; with --quick none; "" for none)`)
	baseline := f.str("baseline", "NAME", "contender the p50 ratio column compares with (default posix-spawn)")
	examples := f.str("examples", "DIR", "examples directory, built by make examples wasm-examples (default examples)")
	pos, code, ok := f.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		return f.usageErr(stderr, "want no arguments, got %s", strings.Join(pos, " "))
	}
	if dur.v > 24*time.Hour {
		fmt.Fprintf(stderr, "dust bench: --duration %v: want at most 24h\n", dur.v)
		return exitUsage
	}
	outDir := benchOut(*quick, out)
	base, exDir := "posix-spawn", "examples"
	if baseline.given {
		base = baseline.v
	}
	if examples.given {
		exDir = examples.v
	}
	self, err := os.Executable()
	if err != nil {
		self = ""
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	_, err = bench.Run(ctx, bench.Options{
		Quick: *quick, Duration: dur.v, JSON: *asJSON, Out: outDir, Baseline: base,
		Examples: exDir, Self: self, Stdout: stdout, Stderr: stderr,
	})
	if err != nil {
		fmt.Fprintf(stderr, "dust bench: %v\n", err)
		return exitError
	}
	return exitOK
}

// benchOut is where a run writes its charts and report.json: --out if
// given (even ""), else docs/bench for a full run, whose figures the docs
// show, and nowhere for --quick, whose figures are not the ones to keep
// (and which the README suggests to try: it must not rewrite tracked
// files).
func benchOut(quick bool, out *strValue) string {
	switch {
	case out.given:
		return out.v
	case quick:
		return ""
	}
	return "docs/bench"
}
