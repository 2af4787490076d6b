package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dust-run/dust/internal/cgi"
	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/wasm"
)

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ", ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// sizeFlag is a byte size such as 32MiB, 512KiB, 1GiB or 4096.
type sizeFlag int64

func (s *sizeFlag) String() string { return fmt.Sprint(int64(*s)) }
func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

func parseSize(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := int64(1)
	num := strings.TrimSpace(v)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	var n int64
	if _, err := fmt.Sscanf(num, "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != num {
		return 0, fmt.Errorf("size %q: want a non-negative integer with an optional unit (KiB, MiB, GiB)", v)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q is too large", v)
	}
	return n * mult, nil
}

// kindFor picks the machine kind from the image's magic bytes.
func kindFor(image []byte) (machine.Kind, error) {
	switch {
	case len(image) >= 4 && string(image[:4]) == "\x7fELF":
		return hvt.Kind{}, nil
	case len(image) >= 4 && string(image[:4]) == "\x00asm":
		return wasm.Kind{}, nil
	case len(image) == 0:
		return nil, fmt.Errorf("%w: the image is empty (0 bytes); want an ELF built for Dust (hvt) or a WebAssembly module", machine.ErrBadImage)
	}
	return nil, fmt.Errorf("%w: neither an ELF (hvt) nor a WebAssembly image (magic %q)", machine.ErrBadImage, image[:min(4, len(image))])
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dust run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: dust run [flags] IMAGE\n\nRuns one request through one brand-new machine and prints the HTTP response.\nWith -requests N the same request is served N times, on one machine restored\nbetween requests (-isolation restore) or on N new machines (-isolation fresh).\n\nflags:\n")
		fs.PrintDefaults()
	}
	var (
		headers, env listFlag
		memory       = sizeFlag(0)
		maxOut       = sizeFlag(0)
		maxLog       = sizeFlag(0)
	)
	method := fs.String("method", "GET", "request `method`")
	fs.StringVar(method, "X", "GET", "request `method` (short for -method)")
	path := fs.String("path", "/", "request `path` with optional ?query")
	fs.Var(&headers, "H", "request header `Name: value` (repeatable)")
	fs.Var(&headers, "header", "request header `Name: value` (repeatable)")
	data := fs.String("data", "", "request body: a `STRING`, or @FILE to read a file")
	fs.StringVar(data, "d", "", "request body (short for -data)")
	fs.Var(&env, "env", "app environment variable `KEY=VALUE` (repeatable)")
	fs.Var(&env, "e", "app environment variable `KEY=VALUE` (short for -env)")
	fs.Var(&memory, "memory", "guest memory `size` (e.g. 16MiB; default 16MiB)")
	timeout := fs.Duration("timeout", 0, "wall-clock `deadline` (default 10s)")
	fs.Var(&maxOut, "max-output", "largest response in bytes (`size`, default 64MiB)")
	fs.Var(&maxLog, "max-log", "largest log (stderr) output (`size`, default 1MiB)")
	verbose := fs.Bool("v", false, "print the outcome, VM exits and timings to stderr (per request with -requests)")
	isolation := fs.String("isolation", machine.IsolationRestore, "isolation `mode` between -requests: restore (reset one machine) or fresh (a new machine each)")
	requests := fs.Int("requests", 1, "serve the same request `N` times; the last response is printed")

	// Flags may come before or after the image.
	pos, code, ok := parseInterleaved(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "dust run: want exactly one IMAGE, got %d arguments\n", len(pos))
		fs.Usage()
		return exitUsage
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "dust run: %v\n", err)
		return exitCode(err)
	}
	mode := strings.ToLower(*isolation)
	if mode == "" || !machine.ValidIsolation(mode) {
		return fail(fmt.Errorf("%w: -isolation %q: want %s or %s", errUsage, *isolation, machine.IsolationRestore, machine.IsolationFresh))
	}
	if *requests < 1 {
		return fail(fmt.Errorf("%w: -requests %d: want at least 1", errUsage, *requests))
	}

	image, err := os.ReadFile(pos[0])
	if err != nil {
		return fail(err)
	}
	kind, err := kindFor(image)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", pos[0], err))
	}
	limits := machine.Limits{Memory: int64(memory), Timeout: *timeout, MaxOutput: int64(maxOut), MaxLog: int64(maxLog)}
	img, err := kind.Prepare(image, limits)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", pos[0], err))
	}
	defer img.Close()

	creq, body, err := buildRequest(*method, *path, headers, *data, env)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", errUsage, err))
	}
	if c, ok := body.(io.Closer); ok {
		defer c.Close()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := &runner{
		img: img, creq: creq, body: body, head: *method == http.MethodHead,
		n: *requests, restore: mode == machine.IsolationRestore,
		stdout: stdout, stderr: stderr, verbose: *verbose,
	}
	if err := r.run(ctx); err != nil {
		return fail(err)
	}
	return exitOK
}

// runner serves one request -requests times. In restore mode the machine
// that served a request is reset and serves the next, under the rule the
// gateway's pools apply (machine.Reusable, machine.Resetter); otherwise,
// and whenever that rule says no, the next request gets a new machine.
//
// It does not go through a machine.Pool: a pool keeps its target of ready
// machines topped up while one is out serving, and then destroys the
// restored machine as surplus, so a sequence of requests would not stay
// on one machine, which is what -requests in restore mode is meant to show.
type runner struct {
	img     machine.Image
	creq    *cgi.Request
	body    io.Reader
	head    bool
	n       int
	restore bool
	stdout  io.Writer
	stderr  io.Writer
	verbose bool

	created, restored, restoreErrs int
}

func (r *runner) run(ctx context.Context) error {
	var m machine.Machine
	defer func() {
		if m != nil {
			m.Close()
		}
	}()
	resets := false // whether the kind's machines can be reset
	for i := 1; i <= r.n; i++ {
		reused := m != nil
		if m == nil {
			var err error
			if m, err = r.img.NewMachine(); err != nil {
				return r.prefix(i, err)
			}
			r.created++
			_, resets = m.(machine.Resetter)
		}
		res, err := r.serve(ctx, i, m, reused)
		if err != nil {
			return r.prefix(i, err)
		}
		if i == r.n {
			break
		}
		if r.restore && resets && machine.Reusable(res) {
			if err := m.(machine.Resetter).Reset(); err == nil {
				r.restored++
				continue
			} else if r.verbose {
				fmt.Fprintf(r.stderr, "dust run: request %d/%d: restore failed, the next request gets a new machine: %v\n", i, r.n, err)
			}
			r.restoreErrs++
		}
		m.Close()
		m = nil
	}
	if r.verbose && r.n > 1 {
		effective := machine.IsolationFresh
		if r.restore && resets {
			effective = machine.IsolationRestore
		}
		asked := machine.IsolationFresh
		if r.restore {
			asked = machine.IsolationRestore
		}
		note := ""
		if asked != effective {
			note = fmt.Sprintf(" (%s asked; %s machines cannot be reset)", asked, r.img.Kind())
		}
		fmt.Fprintf(r.stderr, "dust run: %d requests, isolation %s%s: %d machines created, %d restored, %d restore errors\n",
			r.n, effective, note, r.created, r.restored, r.restoreErrs)
	}
	return nil
}

// prefix names the request an error happened in, when there are several.
func (r *runner) prefix(i int, err error) error {
	if r.n == 1 {
		return err
	}
	return fmt.Errorf("request %d/%d: %w", i, r.n, err)
}

// serve runs request i on m. Only the last request's response reaches
// stdout; every request's log reaches stderr.
func (r *runner) serve(ctx context.Context, i int, m machine.Machine, reused bool) (machine.Result, error) {
	if i > 1 {
		// The same request again: its body from the start.
		if sk, ok := r.body.(io.Seeker); ok {
			if _, err := sk.Seek(0, io.SeekStart); err != nil {
				return machine.Result{}, fmt.Errorf("rewinding the request body: %w", err)
			}
		}
	}
	req := &machine.Request{Args: r.creq.Args(), Env: r.creq.Env(), Body: r.body, BodyLen: r.creq.ContentLength}
	var sink io.Writer = io.Discard
	var out *bufio.Writer
	if i == r.n {
		out = bufio.NewWriterSize(r.stdout, 64<<10)
		sink = out
	}
	parser := cgi.NewParser(0, func(resp *cgi.Response) (io.Writer, error) {
		if err := resp.WriteHTTP(sink); err != nil {
			return nil, err
		}
		if r.head {
			return io.Discard, nil
		}
		return sink, nil
	})
	start := time.Now()
	res := m.Run(ctx, req, parser, r.stderr)
	perr := parser.Close()
	if out != nil {
		out.Flush()
	}
	if r.verbose {
		which := ""
		if r.n > 1 {
			which = fmt.Sprintf("request %d/%d on a new machine: ", i, r.n)
			if reused {
				which = fmt.Sprintf("request %d/%d on a restored machine: ", i, r.n)
			}
		}
		fmt.Fprintf(r.stderr, "dust run: %s%s, exit status %d, %d VM exits, %d bytes out, %d bytes log, run %v, total %v\n",
			which, res.Outcome, res.ExitStatus, res.Exits, res.StdoutBytes, res.StderrBytes, res.RunTime, time.Since(start))
	}
	if err := res.Err(); err != nil {
		// A CGI parse error surfaces as BadOutput with the parser's error as
		// its cause: report the CGI problem, which is the useful part.
		if res.Outcome == machine.BadOutput && errors.Is(err, cgi.ErrBadOutput) {
			return res, res.Cause
		}
		return res, err
	}
	if perr != nil {
		return res, fmt.Errorf("the app exited (status %d) without a complete CGI response: %w", res.ExitStatus, perr)
	}
	if res.ExitStatus != 0 {
		fmt.Fprintf(r.stderr, "dust run: note: %sthe app exited with status %d after its response\n", r.prefixText(i), res.ExitStatus)
	}
	return res, nil
}

func (r *runner) prefixText(i int) string {
	if r.n == 1 {
		return ""
	}
	return fmt.Sprintf("request %d/%d: ", i, r.n)
}

// buildRequest turns the command line into a CGI request and its body.
func buildRequest(method, path string, headers []string, data string, env []string) (*cgi.Request, io.Reader, error) {
	if !strings.HasPrefix(path, "/") {
		return nil, nil, fmt.Errorf("path %q must start with /", path)
	}
	p, q, _ := strings.Cut(path, "?")
	h := http.Header{}
	for _, kv := range headers {
		k, v, ok := strings.Cut(kv, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, nil, fmt.Errorf("header %q: want \"Name: value\"", kv)
		}
		h.Add(textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(k)), strings.TrimSpace(v))
	}
	for _, kv := range env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, nil, fmt.Errorf("env %q: want KEY=VALUE", kv)
		}
	}
	var body io.Reader = strings.NewReader(data)
	n := int64(len(data))
	if f, ok := strings.CutPrefix(data, "@"); ok {
		file, err := os.Open(f)
		if err != nil {
			return nil, nil, err
		}
		st, err := file.Stat()
		if err != nil || !st.Mode().IsRegular() {
			file.Close()
			return nil, nil, fmt.Errorf("--data @%s: not a regular file", f)
		}
		body, n = file, st.Size()
	}
	if n > 0 && h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/octet-stream")
	}
	r := &cgi.Request{
		Method: strings.ToUpper(method), PathInfo: p, RawQuery: q, Header: h,
		Host: "localhost", ContentLength: n, RemoteAddr: "127.0.0.1:0",
		ServerName: "localhost", ServerPort: "80", AppEnv: env,
	}
	if method == "" {
		r.Method = http.MethodGet
	}
	return r, body, nil
}

// parseInterleaved parses flags that may stand before, between or after
// positional arguments, and returns the positional ones. When ok is false,
// the command should exit with code (help was shown, or a flag was bad).
func parseInterleaved(fs *flag.FlagSet, args []string) (pos []string, code int, ok bool) {
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, false
			}
			return nil, exitUsage, false
		}
		if fs.NArg() == 0 {
			return pos, 0, true
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
}
