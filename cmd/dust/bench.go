package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
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
	fs := flag.NewFlagSet("dust bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: dust bench [--quick] [--duration D] [--json] [--out DIR] [--baseline NAME]

Runs every contender (Dust hvt restored and fresh, its KVM_RUN floor, wasm,
posix_spawn, a container per request (namespaces, runc), net/http/cgi, QEMU
microvm, plain net/http) on the same hello program, alternating them in
rounds, and prints latency, throughput, CPU per request, ratios, the cost of
a restore against pages dirtied and guest size, and the targets. Run it
from the repository root after `+"`make build examples wasm-examples`"+`
(or use `+"`make bench`"+`). Progress goes to stderr.

`)
		fs.PrintDefaults()
	}
	quick := fs.Bool("quick", false, "short run (about 15 s) for CI: no memory or scaling sections")
	dur := fs.Duration("duration", 0, "machine-layer phase length; other phases scale with it (default 60s, 8s with --quick)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	out := fs.String("out", "docs/bench", "`directory` for the SVG charts and report.json (\"\" for none)")
	baseline := fs.String("baseline", "posix-spawn", "contender the p50 ratio column compares with")
	examples := fs.String("examples", "examples", "examples `directory` (make examples wasm-examples)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dust bench: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	self, err := os.Executable()
	if err != nil {
		self = ""
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *dur < 0 || *dur > 24*time.Hour {
		fmt.Fprintf(stderr, "dust bench: --duration %v out of range\n", *dur)
		return exitUsage
	}
	_, err = bench.Run(ctx, bench.Options{
		Quick: *quick, Duration: *dur, JSON: *asJSON, Out: *out, Baseline: *baseline,
		Examples: *examples, Self: self, Stdout: stdout, Stderr: stderr,
	})
	if err != nil {
		fmt.Fprintf(stderr, "dust bench: %v\n", err)
		return exitError
	}
	return exitOK
}
