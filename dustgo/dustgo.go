// Package dustgo turns a Go program into a Dust app that starts fast on the
// wasm machine kind.
//
// An ordinary Go program built with GOOS=wasip1 runs the Go runtime's
// start-up (heap, scheduler, every package's init) for each request,
// because Dust gives every request a fresh instance. With dustgo the
// program is built as a WASI reactor instead:
//
//	package main
//
//	import "github.com/dust-run/dust/dustgo"
//
//	func main() {} // required by the toolchain, never run
//
//	func init() {
//		dustgo.Handle(func(w dustgo.ResponseWriter, r *dustgo.Request) {
//			w.Header().Set("Content-Type", "text/plain")
//			w.Write([]byte("Hello, world!\n"))
//		})
//	}
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o app.wasm .
//
// At deploy, Dust runs the start-up once (the module's _initialize, which
// runs the package inits and so the Handle call), keeps the memory and
// globals it leaves as a snapshot, and starts every request's fresh
// instance from that snapshot by calling the exported function dust_serve.
//
// What that means for the app: code in init (and package-level variable
// initialisers) runs once per deploy, not per request; anything it
// computes is shared, read-only in effect, by all requests, and anything a
// request changes is gone afterwards. Environment variables and os.Args
// are the request's: dustgo reloads them from the instance before calling
// the handler. The Go runtime's random state is reseeded by Dust in every
// request (math/rand's and math/rand/v2's top-level functions and the
// seeds of maps made in the request are fresh), but anything drawn or
// built in init, maps included, is the same in every request of one
// deploy. See docs/wasm-go.md.
//
// The same program also builds for Dust's hvt kind as a static Linux binary
// (CGO_ENABLED=0 GOOS=linux go build): there Handle makes Dust's ready
// call, the start-up up to it runs once per deploy, and every request
// resumes a copy of that state with its own environment, arguments and
// body; Handle then serves the request and exits the process, so nothing
// after it runs. Outside Dust the ready call gets ENOSYS and the binary is
// an ordinary CGI program. See docs/linux-abi.md.
//
// For an http.Handler, see package dusthttp.
package dustgo

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// Request is one CGI request. Its environment (os.Getenv, os.Environ) holds
// all CGI meta-variables, HTTP headers as HTTP_* among them.
type Request struct {
	Method string // REQUEST_METHOD
	Path   string // PATH_INFO: the path below the app's mount point
	Query  string // QUERY_STRING, still URL-encoded
	// ContentLength is CONTENT_LENGTH, or -1 if the request has no body
	// length.
	ContentLength int64
	// Body is the request body, read from stdin as it arrives.
	Body io.Reader
}

// Header returns the request header name (e.g. "X-Foo"), from the HTTP_*
// meta-variable the gateway made of it.
func (r *Request) Header(name string) string {
	return os.Getenv("HTTP_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")))
}

// Header is a response's header fields. Keys are used as given; one key
// with several values gives several header lines.
type Header map[string][]string

// Set replaces the values of key.
func (h Header) Set(key, value string) { h[key] = []string{value} }

// Add appends a value to key.
func (h Header) Add(key, value string) { h[key] = append(h[key], value) }

// Get returns the first value of key.
func (h Header) Get(key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// ResponseWriter builds the CGI response. The header is sent with the
// first Write or WriteHeader; the body is buffered in pieces and streamed.
type ResponseWriter interface {
	Header() Header
	// WriteHeader sends the header with status code. Without it the
	// status is 200.
	WriteHeader(status int)
	Write(p []byte) (int, error)
}

// HandlerFunc serves one request.
type HandlerFunc func(w ResponseWriter, r *Request)

// A CGIFunc serves one request by speaking CGI itself: the request is in the
// environment and on os.Stdin, the response goes to os.Stdout. It returns
// the exit status, 0 for success.
type CGIFunc func() int

var serveCGI CGIFunc

// Handle makes h the app's handler. Call it once, from an init function,
// so that it is part of the snapshot. On Linux it serves the request and
// exits (see the package documentation).
func Handle(h HandlerFunc) {
	HandleCGI(func() int { return Serve(h, os.Stdin, os.Stdout) })
}

// HandleCGI makes f the app's request handler, for adapters that speak
// CGI themselves (package dusthttp does). Call it once, from an init
// function.
func HandleCGI(f CGIFunc) {
	if serveCGI != nil {
		panic("dustgo: a handler is already registered")
	}
	serveCGI = f
	afterHandle()
}

// Serve serves the request described by the environment, with its body
// read from stdin, writing the CGI response to stdout. It returns 0, or 1
// if the response could not be written. Apps do not call it: Dust does,
// through dust_serve; it is exported for tests.
func Serve(h HandlerFunc, stdin io.Reader, stdout io.Writer) int {
	r := &Request{
		Method:        os.Getenv("REQUEST_METHOD"),
		Path:          os.Getenv("PATH_INFO"),
		Query:         os.Getenv("QUERY_STRING"),
		ContentLength: -1,
		Body:          stdin,
	}
	if n, err := strconv.ParseInt(os.Getenv("CONTENT_LENGTH"), 10, 64); err == nil && n >= 0 {
		r.ContentLength = n
		r.Body = io.LimitReader(stdin, n)
	}
	w := &response{out: bufio.NewWriterSize(stdout, 32<<10), header: Header{}}
	h(w, r)
	if !w.wrote {
		w.WriteHeader(200)
	}
	if err := w.out.Flush(); err != nil {
		return 1
	}
	return 0
}

type response struct {
	out    *bufio.Writer
	header Header
	wrote  bool
}

func (w *response) Header() Header { return w.header }

func (w *response) WriteHeader(status int) {
	if w.wrote {
		return
	}
	w.wrote = true
	if w.header.Get("Content-Type") == "" && w.header.Get("Location") == "" {
		w.header.Set("Content-Type", "text/plain; charset=utf-8")
	}
	if status != 200 {
		fmt.Fprintf(w.out, "Status: %03d %s\r\n", status, statusText(status))
	}
	// Sorted, so that a response is the same bytes every time.
	for _, k := range slices.Sorted(maps.Keys(w.header)) {
		for _, v := range w.header[k] {
			// A line break in a value would start a header of the
			// client's choosing.
			v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
			fmt.Fprintf(w.out, "%s: %s\r\n", k, v)
		}
	}
	w.out.WriteString("\r\n")
}

func (w *response) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(200)
	}
	return w.out.Write(p)
}

// statusText gives the reason phrase of the common codes; an empty phrase
// is valid CGI, so the rest go without.
func statusText(code int) string {
	switch code {
	case 201:
		return "Created"
	case 204:
		return "No Content"
	case 301:
		return "Moved Permanently"
	case 302:
		return "Found"
	case 304:
		return "Not Modified"
	case 400:
		return "Bad Request"
	case 401:
		return "Unauthorized"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 500:
		return "Internal Server Error"
	case 503:
		return "Service Unavailable"
	}
	return ""
}

// serve is dust_serve's body: the request's environment and arguments
// replace the snapshot's before the handler runs. A panic ends the
// request as it ends a command: its trace on stderr, exit status 2. A
// panic left to the runtime would trap the instance instead.
func serve() (status int32) {
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(os.Stderr, "panic: %v\n\n%s", p, debug.Stack())
			status = 2
		}
	}()
	if serveCGI == nil {
		os.Stderr.WriteString("dustgo: no handler: call dustgo.Handle from an init function\n")
		return 1
	}
	env, err := environ()
	if err != nil {
		fmt.Fprintf(os.Stderr, "dustgo: reading the environment: %v\n", err)
		return 1
	}
	os.Clearenv()
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		// An entry Setenv refuses (an empty name) is one no getenv
		// could find either.
		os.Setenv(k, v)
	}
	if os.Args, err = args(); err != nil {
		fmt.Fprintf(os.Stderr, "dustgo: reading the arguments: %v\n", err)
		return 1
	}
	return int32(serveCGI())
}
