package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/dust-run/dust/internal/cgi"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
)

// Server apps (serve = "http"): an ordinary HTTP server program, started
// once per deploy and snapshotted when it first waits for a connection
// (internal/hvt/server.go). For each request the gateway writes the
// client's request as HTTP/1.1 onto the one connection the machine hands
// the program, and reads the program's HTTP response back, streaming both
// ways. Routing, admission, limits, deadlines, metrics, logs and the
// status mapping are the CGI path's: only the encoding differs.
//
// Towards the program the gateway is a reverse proxy: the path below the
// app's route (the route in X-Forwarded-Prefix), the client's headers
// except hop-by-hop ones (Authorization included: the program is the
// app's own server, not a CGI script), X-Forwarded-For/-Proto/-Host,
// the request id, and Connection: close, so the program closes the
// connection after its answer, which ends the request.

func (a *liveApp) isServer() bool { return a.set.Serve == store.ServeHTTP }

// serverStart is a server app's start-up: its fixed args after a program
// name, its environment and secrets (PORT is the monitor's).
func serverStart(set store.Settings, secrets map[string]string) *machine.Server {
	srv := &machine.Server{Env: append([]string(nil), set.Env...)}
	if len(set.Args) > 0 {
		srv.Args = append([]string{"/app/main"}, set.Args...)
	}
	for k, v := range secrets {
		srv.Env = append(srv.Env, k+"="+v)
	}
	return srv
}

// requestHop are request headers that describe the client's connection
// to the gateway, or that the gateway sets itself for the program: among
// them every header that names the client's address (a program's
// middleware may trust X-Real-Ip or Forwarded before X-Forwarded-For, so
// a client must not be able to set any of them).
var requestHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Expect": true,
	"Content-Length": true, "Host": true,
	"X-Forwarded-For": true, "X-Forwarded-Proto": true, "X-Forwarded-Host": true, "X-Forwarded-Prefix": true,
	"X-Real-Ip": true, "True-Client-Ip": true, "Forwarded": true, "X-Client-Ip": true, "Cf-Connecting-Ip": true,
	"X-Request-Id": true,
}

// connectionListed are the headers the client's Connection header names:
// hop-by-hop too (RFC 9110 §7.6.1).
func connectionListed(h http.Header) map[string]bool {
	var m map[string]bool
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				if m == nil {
					m = map[string]bool{}
				}
				m[http.CanonicalHeaderKey(name)] = true
			}
		}
	}
	return m
}

// belowPrefix is the escaped path with the first n decoded bytes (the
// route, which was matched on the decoded path) cut off: a client may
// percent-encode characters of the route itself.
func belowPrefix(escaped string, n int) string {
	i := 0
	for n > 0 && i < len(escaped) {
		if escaped[i] == '%' && i+2 < len(escaped) {
			i += 3
		} else {
			i++
		}
		n--
	}
	return escaped[i:]
}

// rawRequest is r as the program reads it: the head, then the body as it
// arrives (chunked when its length is unknown).
func rawRequest(r *http.Request, creq *cgi.Request, id string, body io.Reader) io.Reader {
	target := r.URL.EscapedPath()
	if creq.ScriptName != "" {
		target = belowPrefix(target, len(creq.ScriptName))
	}
	if !strings.HasPrefix(target, "/") {
		target = "/" + target
	}
	if r.URL.RawQuery != "" {
		target += "?" + r.URL.RawQuery
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.Method, target, r.Host)
	listed := connectionListed(r.Header)
	for k, vs := range r.Header {
		if requestHop[k] || listed[k] {
			continue
		}
		for _, v := range vs {
			// net/http has already refused CR, LF and NUL in values.
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	client, _, _ := net.SplitHostPort(r.RemoteAddr)
	fmt.Fprintf(&b, "X-Forwarded-For: %s\r\nX-Real-Ip: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\nX-Request-Id: %s\r\n", client, client, creq.Scheme, r.Host, id)
	if creq.ScriptName != "" {
		b.WriteString("X-Forwarded-Prefix: " + creq.ScriptName + "\r\n")
	}
	b.WriteString("Connection: close\r\n")
	switch {
	case r.ContentLength > 0:
		b.WriteString("Content-Length: " + strconv.FormatInt(r.ContentLength, 10) + "\r\n\r\n")
		return io.MultiReader(strings.NewReader(b.String()), io.LimitReader(body, r.ContentLength))
	case r.ContentLength < 0:
		b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		return io.MultiReader(strings.NewReader(b.String()), &chunker{r: body})
	}
	if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("\r\n")
	return strings.NewReader(b.String())
}

// chunker chunk-encodes a body of unknown length as it is read.
type chunker struct {
	r    io.Reader
	out  []byte
	buf  [32 << 10]byte
	done bool
}

func (c *chunker) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.done {
			return 0, io.EOF
		}
		n, err := c.r.Read(c.buf[:])
		if n > 0 {
			c.out = append(c.out[:0], strconv.FormatInt(int64(n), 16)+"\r\n"...)
			c.out = append(c.out, c.buf[:n]...)
			c.out = append(c.out, "\r\n"...)
		}
		if err == io.EOF {
			c.out = append(c.out, "0\r\n\r\n"...)
			c.done = true
		} else if err != nil {
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// Errors of a server app's response, which the status mapping treats as
// a CGI program's bad output (502).
var (
	errServerResponse = errors.New("the server app's response is not valid HTTP/1.1")
	errServerStatus   = errors.New("the server app answered a status the gateway does not pass on")
)

// httpRelay parses the program's HTTP response as the machine writes it
// and hands it to start (the holdWriter), streaming the body. It is the
// server app's counterpart of cgi.Parser.
type httpRelay struct {
	pw   *io.PipeWriter
	done chan error
}

// maxServerHead bounds the status line and headers a program may send.
const maxServerHead = 1 << 20

func newHTTPRelay(method string, start func(*cgi.Response) (io.Writer, error)) *httpRelay {
	pr, pw := io.Pipe()
	rl := &httpRelay{pw: pw, done: make(chan error, 1)}
	go func() {
		err := relayResponse(pr, method, start)
		// Whatever is left is not the client's: take it so the machine's
		// writes do not block, but fail them if the response was bad.
		if err != nil {
			pr.CloseWithError(err)
		} else {
			io.Copy(io.Discard, pr)
		}
		rl.done <- err
	}()
	return rl
}

func relayResponse(pr io.Reader, method string, start func(*cgi.Response) (io.Writer, error)) error {
	head := &io.LimitedReader{R: pr, N: maxServerHead}
	br := bufio.NewReaderSize(head, 32<<10)
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			if head.N <= 0 {
				return fmt.Errorf("%w: its head exceeds %d bytes", errServerResponse, maxServerHead)
			}
			return fmt.Errorf("%w: %v", errServerResponse, err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		resp.Body.Close() // 100 Continue, 103 Early Hints: informational, not passed on
	}
	if resp.StatusCode < 200 || resp.StatusCode > 599 {
		return fmt.Errorf("%w: %d", errServerStatus, resp.StatusCode)
	}
	// The head is read; the body is bounded by the machine's output limit.
	head.N = 1 << 62
	out := &cgi.Response{Status: resp.StatusCode, Header: http.Header{}}
	for k, vs := range resp.Header {
		if cgi.AppHeader(k) {
			out.Header[k] = vs
		}
	}
	if resp.ContentLength >= 0 {
		out.Header.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w, err := start(out)
	if err != nil {
		return err
	}
	cw := &clientWriter{w: w}
	if _, err := io.Copy(cw, resp.Body); err != nil {
		if cw.err != nil {
			return cw.err // the client went away: not the app's fault
		}
		return fmt.Errorf("%w: its body: %v", errServerResponse, err)
	}
	return nil
}

// clientWriter tells a failure to write to the client apart from a body
// the app cut short.
type clientWriter struct {
	w   io.Writer
	err error
}

func (c *clientWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	if err != nil {
		c.err = err
	}
	return n, err
}

func (r *httpRelay) Write(b []byte) (int, error) { return r.pw.Write(b) }

// Close ends the response: the machine is done writing. It reports a
// response that was malformed, cut short or never came.
func (r *httpRelay) Close() error {
	r.pw.Close()
	return <-r.done
}
