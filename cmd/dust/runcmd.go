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
	}
	return nil, fmt.Errorf("%w: neither an ELF (hvt) nor a WebAssembly image (magic %q)", machine.ErrBadImage, image[:min(4, len(image))])
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dust run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: dust run [flags] IMAGE\n\nRuns one request through one brand-new machine and prints the HTTP response.\n\nflags:\n")
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
	verbose := fs.Bool("v", false, "print the outcome, VM exits and timings to stderr")

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
	req := &machine.Request{Args: creq.Args(), Env: creq.Env(), Body: body, BodyLen: creq.ContentLength}

	m, err := img.NewMachine()
	if err != nil {
		return fail(err)
	}
	defer m.Close()

	out := bufio.NewWriterSize(stdout, 64<<10)
	head := *method == http.MethodHead
	parser := cgi.NewParser(0, func(r *cgi.Response) (io.Writer, error) {
		if err := r.WriteHTTP(out); err != nil {
			return nil, err
		}
		if head {
			return io.Discard, nil
		}
		return out, nil
	})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	res := m.Run(ctx, req, parser, stderr)
	perr := parser.Close()
	out.Flush()
	if *verbose {
		fmt.Fprintf(stderr, "dust run: %s, exit status %d, %d VM exits, %d bytes out, %d bytes log, run %v, total %v\n",
			res.Outcome, res.ExitStatus, res.Exits, res.StdoutBytes, res.StderrBytes, res.RunTime, time.Since(start))
	}
	if err := res.Err(); err != nil {
		// A CGI parse error surfaces as BadOutput with the parser's error as
		// its cause: report the CGI problem, which is the useful part.
		if res.Outcome == machine.BadOutput && errors.Is(err, cgi.ErrBadOutput) {
			return fail(res.Cause)
		}
		return fail(err)
	}
	if perr != nil {
		return fail(fmt.Errorf("the app exited (status %d) without a complete CGI response: %w", res.ExitStatus, perr))
	}
	if res.ExitStatus != 0 {
		fmt.Fprintf(stderr, "dust run: note: the app exited with status %d after its response\n", res.ExitStatus)
	}
	return exitOK
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
