package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/textproto"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dust-run/dust/internal/cgi"
	"github.com/dust-run/dust/internal/gateway"
	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
	"github.com/dust-run/dust/internal/wasm"
)

// sizeFlag is a byte size such as 32MiB, 512KiB, 1GiB or 4096, for
// commands on the flag package's own usage (serve).
type sizeFlag int64

func (s *sizeFlag) String() string { return gateway.FormatSize(int64(*s)) }
func (s *sizeFlag) Set(v string) error {
	n, err := gateway.ParseSize(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
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

const runAbout = `Runs one request through one brand-new machine and prints the HTTP
response (status line, headers, body) on stdout; if the request failed,
one line on stderr says why, and the exit code says how (docs/cli.md).

The machine is given what a deployed app's would be: argv[0] is the
request path, then the --arg values, then the query's items only with
--query-args; --files DIR is packed and mounted read-only at /app, and
refused exactly when dust deploy --files would refuse it. With --requests
N the same request is served N times, on one machine restored between
requests (--isolation restore) or on N new machines (--isolation fresh).`

const runExample = `  dust run examples/hello/hello.elf
  dust run app.wasm -X POST --path '/greet?name=ann' -d 'hi there' -v
  dust run lua.wasm --files ./site --arg /app/main.lua --path /hello
  dust run app.elf --requests 100 --isolation restore -v`

func cmdRun(args []string, stdout, stderr io.Writer) int {
	f := newCmdFlags("run", "IMAGE [flags]", runAbout, runExample)
	method := f.str("method", "METHOD", "request method (default GET)")
	f.alias("X", "method")
	path := f.str("path", "PATH", "request path with an optional ?query (default /)")
	headers := f.strs("header", "NAME: VALUE", "a request header (repeatable)")
	f.alias("H", "header")
	data := f.str("data", "BODY", "the request body: text, or @FILE to send a file")
	f.alias("d", "data")
	env := f.kvs("env", false, "set an environment variable for the app (repeatable)")
	f.alias("e", "env")
	memory := f.size("memory", "guest memory (default 16MiB; hvt: a multiple of 2MiB)")
	timeout := f.duration("timeout", "wall-clock deadline of each request (default 10s)")
	maxOut := f.size("max-output", "largest response (default 64MiB)")
	maxLog := f.size("max-log", "largest log, what the app writes to stderr (default 1MiB)")
	fixed := f.strs("arg", "ARG", "a fixed argument after argv[0], such as a script (repeatable, in order)")
	noArgs := f.boolean("no-args", "no fixed arguments (the default; as dust deploy --no-args)")
	queryArgs := f.boolean("query-args", "also pass the query's items as arguments, after the fixed ones (WAGI's convention; default false)")
	files := f.str("files", "DIR", "pack DIR as the app's read-only files and mount them at /app, as dust deploy --files does")
	verbose := f.Bool("v", false, "print each request's outcome, VM exits, memory and timings to stderr (and a summary with --requests)")
	isolation := f.str("isolation", "MODE", "between --requests: restore (reset one machine) or fresh (a new machine each) (default restore)")
	requests := f.Int("requests", 1, "serve the same request `N` times; the last response is printed (default 1)")

	pos, code, ok := f.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return f.usageErr(stderr, "want IMAGE, got %d argument(s)", len(pos))
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "dust run: %v\n", err)
		return exitCode(err)
	}
	// "" is the default, as for dust deploy --isolation.
	mode := strings.ToLower(isolation.v)
	if !machine.ValidIsolation(mode) {
		return fail(badUsage("--isolation %q: want %s or %s", isolation.v, machine.IsolationRestore, machine.IsolationFresh))
	}
	if mode == "" {
		mode = machine.IsolationRestore
	}
	n := *requests
	if n < 1 {
		return fail(badUsage("--requests %d: want at least 1", n))
	}
	if fixed.given && noArgs.given && noArgs.v {
		return fail(badUsage("--arg and --no-args: give the arguments or remove them, not both"))
	}
	if err := checkArgs(fixed.v); err != nil {
		return fail(err)
	}
	reqMethod, reqPath := http.MethodGet, "/"
	if method.given && method.v != "" {
		reqMethod = strings.ToUpper(method.v)
	}
	if path.given {
		reqPath = path.v
	}

	image, err := readImage(pos[0])
	if err != nil {
		return fail(err)
	}
	kind, err := kindFor(image)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", pos[0], err))
	}
	var mount fs.FS
	if files.given {
		if mount, err = filesLayer(files.v); err != nil {
			return fail(err)
		}
	}
	limits := machine.Limits{Memory: memory.v, Timeout: timeout.v, MaxOutput: maxOut.v, MaxLog: maxLog.v}
	img, err := machine.Prepare(kind, image, limits, mount)
	if err != nil {
		if errors.Is(err, machine.ErrBadLimits) {
			return fail(memoryError(kind, memory, err))
		}
		return fail(fmt.Errorf("%s: %w", pos[0], err))
	}
	defer img.Close()

	creq, body, err := buildRequest(reqMethod, reqPath, headers.v, data.v, env.v)
	if err != nil {
		return fail(err)
	}
	if c, ok := body.(io.Closer); ok {
		defer c.Close()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := &runner{
		img: img, creq: creq, argv: creq.Argv(fixed.v, queryArgs.v), body: body, head: reqMethod == http.MethodHead,
		n: n, restore: mode == machine.IsolationRestore,
		stdout: stdout, stderr: stderr, verbose: *verbose,
	}
	if err := r.run(ctx); err != nil {
		return fail(err)
	}
	return exitOK
}

// readImage reads IMAGE as deploy opens it: - is stdin, and a directory
// or an empty file is refused with what to give instead.
func readImage(path string) ([]byte, error) {
	r, closeImage, err := openImage(path)
	if err != nil {
		return nil, err
	}
	defer closeImage()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("IMAGE %s: %w", path, err)
	}
	return b, nil
}

// filesLayer is --files DIR as a deploy would mount it: packed by the
// client's code (packFiles, which refuses what dust deploy --files
// refuses, in the same words) and read back through the store's
// validator into the read-only layer the gateway gives a machine.
func filesLayer(dir string) (fs.FS, error) {
	packed, err := packFiles(dir)
	if err != nil {
		return nil, err
	}
	l, err := store.LayerFrom(bytes.NewReader(packed))
	if err != nil {
		return nil, badUsage("--files %s: %v", dir, err)
	}
	return l, nil
}

// memoryError says why the kind refused the memory size, naming the flag,
// the value as typed and, for hvt, the sizes allowed. Memory is the only
// limit a kind checks against the image.
func memoryError(kind machine.Kind, memory *value[int64], err error) error {
	typed := memory.raw
	if !memory.given {
		typed = gateway.FormatSize(machine.DefaultMemory) + " (the default)"
	}
	n := memory.v
	if !memory.given {
		n = machine.DefaultMemory
	}
	// hvt's rule (layout.go): whole 2MiB pages, its identity map's unit.
	const hvtPage = 2 << 20
	if kind.Name() == "hvt" && (n < hvt.MinMemory || n > hvt.MaxMemory || n%hvtPage != 0) {
		return badUsage("--memory %s: want a multiple of 2MiB from %dMiB to %dMiB for an hvt image", typed, hvt.MinMemory>>20, hvt.MaxMemory>>20)
	}
	why, _ := strings.CutPrefix(err.Error(), machine.ErrBadLimits.Error()+": ")
	return badUsage("--memory %s: %s", typed, why)
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
	argv    []string // creq's, with the fixed arguments (cgi.Request.Argv)
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
	req := &machine.Request{Args: r.argv, Env: r.creq.Env(), Body: r.body, BodyLen: r.creq.ContentLength}
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
		fmt.Fprintf(r.stderr, "dust run: %s%s, exit status %d, %d VM exits, memory %s, %d bytes out, %d bytes log, run %v, total %v\n",
			which, res.Outcome, res.ExitStatus, res.Exits, memoryText(r.img.Kind(), res.MemoryBytes), res.StdoutBytes, res.StderrBytes, res.RunTime, time.Since(start))
	}
	if res.Cause != nil && res.Detail == res.Cause.Error() {
		res.Detail = "" // said once, by the cause
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

// memoryText is the memory a machine touched, as -v says it, whatever
// the outcome. The hvt kind does not measure it (Result.MemoryBytes is
// "where known"): saying 0 would be a figure, and a wrong one.
func memoryText(kind string, n int64) string {
	if n == 0 && kind == "hvt" {
		return "not measured (hvt)"
	}
	return gateway.HumanSize(n)
}

func (r *runner) prefixText(i int) string {
	if r.n == 1 {
		return ""
	}
	return fmt.Sprintf("request %d/%d: ", i, r.n)
}

// buildRequest turns the command line into a CGI request and its body.
// env is already KEY=VALUE with a valid KEY (the --env flag checks it).
func buildRequest(method, path string, headers []string, data string, env []string) (*cgi.Request, io.Reader, error) {
	if !strings.HasPrefix(path, "/") {
		return nil, nil, badUsage("--path %q: want a path starting with /, such as /hello?name=ann", path)
	}
	p, q, _ := strings.Cut(path, "?")
	h := http.Header{}
	for _, kv := range headers {
		k, v, ok := strings.Cut(kv, ":")
		if k = strings.TrimSpace(k); !ok || k == "" {
			return nil, nil, badUsage("--header %q: want \"Name: value\", such as \"Accept: text/plain\"", kv)
		}
		h.Add(textproto.CanonicalMIMEHeaderKey(k), strings.TrimSpace(v))
	}
	var body io.Reader = strings.NewReader(data)
	n := int64(len(data))
	if f, ok := strings.CutPrefix(data, "@"); ok {
		file, err := os.Open(f)
		if err != nil {
			return nil, nil, fmt.Errorf("--data @%s: %w", f, err)
		}
		st, err := file.Stat()
		if err != nil || !st.Mode().IsRegular() {
			file.Close()
			return nil, nil, badUsage("--data @%s: not a regular file", f)
		}
		body, n = file, st.Size()
	}
	if n > 0 && h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/octet-stream")
	}
	r := &cgi.Request{
		Method: method, PathInfo: p, RawQuery: q, Header: h,
		Host: "localhost", ContentLength: n, RemoteAddr: "127.0.0.1:0",
		ServerName: "localhost", ServerPort: "80", AppEnv: env,
	}
	return r, body, nil
}
