package gateway

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dust-run/dust/internal/cgi"
	"github.com/dust-run/dust/internal/machine"
)

// requestID returns the client's X-Request-Id if it is a sane token,
// otherwise a fresh random one. It is echoed to the client and logged, so
// it must never carry markup or control characters.
func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" && len(id) <= 64 {
		ok := true
		for _, c := range []byte(id) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
				ok = false
				break
			}
		}
		if ok {
			return id
		}
	}
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// statusFor maps a machine outcome to the HTTP status the client gets when
// no response header was sent yet. docs/gateway.md has the table.
func statusFor(res machine.Result, parseErr error) (int, string) {
	switch res.Outcome {
	case machine.Served:
		if errors.Is(parseErr, errServerResponse) || errors.Is(parseErr, errServerStatus) {
			return http.StatusBadGateway, "the app's answer is not a valid HTTP response"
		}
		if parseErr != nil {
			return http.StatusBadGateway, "the app's output is not a valid CGI response"
		}
		return http.StatusBadGateway, fmt.Sprintf("the app failed: it exited with status %d", res.ExitStatus)
	case machine.DeadlineExceeded:
		return http.StatusGatewayTimeout, "the app did not answer in time"
	case machine.Refused:
		return http.StatusRequestHeaderFieldsTooLarge, "the request headers are too large for the app"
	case machine.Canceled:
		return 499, "client closed request"
	case machine.InternalError:
		return http.StatusInternalServerError, "internal error"
	}
	// Fault, bad hypercall, memory/output/log limit, bad output.
	return http.StatusBadGateway, "the app failed: " + res.Outcome.String()
}

func (s *Server) fail(w http.ResponseWriter, app, id string, status int, reason string, extra ...string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	for i := 0; i+1 < len(extra); i += 2 {
		h.Set(extra[i], extra[i+1])
	}
	if status == 499 {
		return // nobody is listening
	}
	// Whatever deadline the request had (it may have spent it queueing),
	// its answer gets its own short one.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(finishGrace))
	w.WriteHeader(status)
	fmt.Fprintf(w, "%d %s: %s (request %s)\n", status, http.StatusText(status), reason, id)
	if status >= 500 {
		s.noteError(recentError{Time: time.Now(), App: app, RequestID: id, Status: status, Reason: reason})
	}
}

// Deadlines around a request, past its app's timeout.
const (
	// ioGrace is added to the app's deadline for the connection's read
	// and write deadlines, so that a machine that is merely slow meets its
	// own deadline first (504), while a client that stalls a read or a
	// write still releases the machine within this margin of it.
	ioGrace = 250 * time.Millisecond
	// finishGrace is what the gateway's own last bytes (held output, an
	// error page) get once the machine is done.
	finishGrace = 2 * time.Second
	// noAppWrite bounds writing a response that needs no machine (404,
	// 429, 400...): a keep-alive connection otherwise keeps whatever write
	// deadline the previous request left.
	noAppWrite = 10 * time.Second
	// preReadMax is how much of a body is read before a machine is taken:
	// all of a small body, the first bytes of a large one. A client that
	// announces a body and sends none then holds a goroutine and the bytes
	// it sent, never a machine or an admission slot.
	preReadMax = 64 << 10
)

// serveApp serves one request on a brand-new machine.
func (s *Server) serveApp(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := requestID(r)
	w.Header().Set("X-Request-Id", id)
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(start.Add(noAppWrite))
	if !s.checkFraming(w, r, id) {
		s.met.requests.WithLabelValues("", "400").Inc()
		return
	}
	client := clientAddr(r)
	if !s.clients.enter(client) {
		s.met.requests.WithLabelValues("", "429").Inc()
		s.fail(w, "", id, http.StatusTooManyRequests, fmt.Sprintf("more than %d requests from one address at once", s.cfg.MaxPerClient), "Retry-After", "1")
		return
	}
	defer s.clients.leave(client)
	a := s.match(r.Host, r.URL.Path)
	if a == nil {
		if status, outcome, app, ok := s.clusterUnready(w, r, id); ok {
			s.log.Info("request", "request_id", id, "app", app, "method", r.Method, "path", r.URL.Path,
				"status", status, "outcome", outcome, "duration_ms", float64(time.Since(start).Microseconds())/1e3)
			return
		}
		s.met.requests.WithLabelValues("", "404").Inc()
		s.fail(w, "", id, http.StatusNotFound, "no app is deployed at "+strconvQuote(r.URL.Path))
		return
	}
	defer a.inflight.Done()
	a.window.Add(1)
	a.last.Store(start.UnixNano())
	var sv served
	status, outcome := s.serveOn(a, w, rc, r, id, start, &sv)
	elapsed := time.Since(start)
	s.met.observe(a.name, status, elapsed, sv)
	a.hist.observe(elapsed, sv.use)
	s.log.Info("request", "request_id", id, "app", a.name, "kind", a.kind, "version", a.version,
		"method", r.Method, "path", r.URL.Path, "status", status, "outcome", outcome,
		"duration_ms", float64(elapsed.Microseconds())/1e3, "machine", sv.use.String(), "memory_bytes", sv.memory)
}

// checkFraming refuses a request that carries both Content-Length and
// Transfer-Encoding (RFC 9112 §6.1: a smuggling attempt, to be refused or
// followed by closing the connection; we do both) and closes the
// connection after any request whose framing the head tap cannot vouch
// for. It reports whether the request may go on.
func (s *Server) checkFraming(w http.ResponseWriter, r *http.Request, id string) bool {
	chunked := len(r.TransferEncoding) > 0
	t := tapOf(r.Context())
	if t == nil {
		if chunked {
			w.Header().Set("Connection", "close")
		}
		return true
	}
	bodyLen := r.ContentLength
	if chunked {
		bodyLen = -1
	}
	head, ok := t.head(bodyLen)
	if ok {
		line, _, _ := strings.Cut(string(head), "\n")
		ok = strings.TrimSuffix(line, "\r") == r.Method+" "+r.RequestURI+" "+r.Proto
	}
	if !ok || chunked {
		// After a chunked body the tap no longer knows where the next
		// head starts; a fresh connection starts it over.
		w.Header().Set("Connection", "close")
	}
	// Go's parser refuses any Transfer-Encoding but chunked on HTTP/1.1 and
	// ignores it on HTTP/1.0, so only those two can hide the pair: the
	// head is searched for nothing else, and not on every request.
	suspect := chunked || r.ProtoMajor == 1 && r.ProtoMinor == 0
	if ok && suspect && hasField(head, "transfer-encoding") && hasField(head, "content-length") {
		s.fail(w, "", id, http.StatusBadRequest, "the request has both Content-Length and Transfer-Encoding")
		return false
	}
	if !ok && chunked {
		// A chunked request whose head the tap cannot vouch for may carry
		// a Content-Length that Go's parser removed: refuse it rather
		// than guess.
		s.fail(w, "", id, http.StatusBadRequest, "a chunked request on a connection whose framing cannot be verified; send it on a new connection")
		return false
	}
	return true
}

// clientAddr is the address a client's requests are counted under.
func clientAddr(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

func strconvQuote(p string) string {
	if len(p) > 100 {
		p = p[:100] + "..."
	}
	return strconv.Quote(p)
}

// errBodyTimeout is how a body that did not arrive in time is reported.
var errBodyTimeout = errors.New("the request body did not arrive in time")

// preread reads the start of the body (all of it when it is small) before
// the request may take a machine, under the request's read deadline.
func (s *Server) preread(w http.ResponseWriter, rc *http.ResponseController, r *http.Request, a *liveApp) (*countingReader, error) {
	if r.ContentLength == 0 {
		return &countingReader{}, nil // no body: reads as EOF
	}
	lim := http.MaxBytesReader(w, r.Body, a.set.MaxBody)
	want := int64(preReadMax)
	if r.ContentLength > 0 {
		want = min(want, r.ContentLength)
	}
	// A buffer that grows as bytes arrive: a client announcing 64 KiB and
	// sending 2 bytes makes the gateway hold about 2 bytes.
	var buf bytes.Buffer
	_, err := io.CopyN(&buf, lim, want)
	done := err == io.EOF || (err == nil && r.ContentLength > 0 && int64(buf.Len()) == r.ContentLength)
	if err != nil && err != io.EOF {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: %w", errBodyTimeout, err)
		}
		return nil, err
	}
	if done {
		// The whole body is here: nothing more to read from the client,
		// so no read deadline may now cancel the request (Go's server
		// watches the connection for a client that goes away).
		rc.SetReadDeadline(time.Time{})
		return &countingReader{r: bytes.NewReader(buf.Bytes())}, nil
	}
	return &countingReader{r: io.MultiReader(bytes.NewReader(buf.Bytes()), lim), clear: rc}, nil
}

func (s *Server) serveOn(a *liveApp, w http.ResponseWriter, rc *http.ResponseController, r *http.Request, id string, start time.Time, sv *served) (int, string) {
	if r.ContentLength > a.set.MaxBody {
		s.fail(w, a.name, id, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", a.set.MaxBody))
		s.logFailure(a, id, http.StatusRequestEntityTooLarge, "body too large", 0, 0, fmt.Errorf("Content-Length %d, max_body is %s", r.ContentLength, FormatSize(a.set.MaxBody)))
		return http.StatusRequestEntityTooLarge, "body too large"
	}
	// The app's deadline covers the whole request: reading the body,
	// running, writing the response. The body's first part must arrive
	// within it from the start; the machine gets it again from when it
	// starts (a request may wait up to queue_wait for admission, and that
	// wait is bounded on its own). A read deadline is set only while a
	// body is being read: once set, it also ends Go's watch for a vanished
	// client, which would cancel the request.
	timeout := a.img.Limits().Timeout
	if r.ContentLength != 0 {
		rc.SetReadDeadline(start.Add(timeout).Add(ioGrace))
	}
	in, err := s.preread(w, rc, r, a)
	if err != nil {
		return s.bodyFailed(w, rc, a, id, timeout, err)
	}
	if status, outcome, done := s.clusterServe(a, w, r, in, id); done {
		return status, outcome
	}
	// Admission: the app's own cap first, then the global one.
	releaseApp, err := s.acquireApp(r, a)
	if err != nil {
		return s.busy(w, a, id, err)
	}
	defer releaseApp()
	s.met.queue.WithLabelValues(a.name).Set(float64(a.gate.waiting.Load()))
	releaseGlobal, err := s.acquireGlobal(r, a)
	if err != nil {
		return s.busy(w, a, id, err)
	}
	defer releaseGlobal()

	m, hit, err := a.pool.Get()
	if err != nil {
		s.fail(w, a.name, id, http.StatusServiceUnavailable, "no machine could be created", "Retry-After", "1")
		s.log.Error("machine creation failed", "request_id", id, "app", a.name, "err", err)
		s.logFailure(a, id, http.StatusServiceUnavailable, "create failed", 0, 0, err)
		return http.StatusServiceUnavailable, "create failed"
	}
	sv.use = useOf(hit)
	if hit {
		s.met.poolHits.WithLabelValues(a.name).Inc()
	} else {
		s.met.poolMisses.WithLabelValues(a.name).Inc()
		s.met.coldStart.WithLabelValues(a.kind).Observe(time.Since(start).Seconds())
	}
	s.met.live.Inc()
	released := false
	var res machine.Result
	ran := false
	release := func() {
		if !released {
			released = true
			s.met.live.Dec()
			if ran {
				a.pool.Recycle(m, res) // restored for another request, or destroyed
			} else {
				a.pool.Release(m)
			}
		}
	}
	defer release()

	creq := cgi.FromHTTP(r, a.set.Route) // "/" becomes an empty SCRIPT_NAME
	creq.AppEnv = a.env()
	creq.PassAuthorization = a.set.PassAuthorization
	hold := &holdWriter{w: w, rc: rc, head: r.Method == http.MethodHead, wait: s.cfg.HoldTime}
	var req *machine.Request
	var parser interface {
		io.Writer
		Close() error
	}
	if a.isServer() {
		host, port, _ := net.SplitHostPort(r.RemoteAddr)
		req = &machine.Request{Env: []string{"REMOTE_ADDR=" + host, "REMOTE_PORT=" + port}, Body: rawRequest(r, creq, id, in), BodyLen: -1}
		parser = newHTTPRelay(r.Method, hold.start)
	} else {
		req = &machine.Request{Args: a.argv(creq), Env: creq.Env(), Body: in, BodyLen: r.ContentLength}
		parser = cgi.NewParser(0, hold.start)
	}
	logw := s.logs.writer(a.name, id)
	if se := a.secrets.Load(); se != nil {
		logw.redact = se.redact
	}
	runDeadline := time.Now().Add(timeout).Add(ioGrace)
	rc.SetWriteDeadline(runDeadline)
	hold.until = runDeadline
	if in.clear != nil { // the rest of the body streams in while the machine runs
		rc.SetReadDeadline(runDeadline)
	}
	res = m.Run(r.Context(), req, parser, logw)
	ran = true
	sv.memory = res.MemoryBytes
	// The machine is done: it goes back now, not after the gateway's own
	// last bytes reach a client that may be slow to take them.
	release()
	perr := parser.Close()
	logw.Flush()
	rc.SetWriteDeadline(time.Now().Add(finishGrace))
	s.met.run.WithLabelValues(a.name).Observe(res.RunTime.Seconds())
	s.met.exits.WithLabelValues(a.name).Add(float64(res.Exits))
	s.noteUnsupported(a, id, res.Unsupported)
	s.met.bytesIn.WithLabelValues(a.name).Add(float64(in.n))

	// A guest that exits non-zero has said its answer cannot be trusted,
	// even a complete-looking one: a program that crashes halfway
	// through its body (a Go panic exits 2) must not look like a short
	// but successful answer.
	ok := res.Outcome == machine.Served && res.ExitStatus == 0 && perr == nil
	committed := hold.finish(ok)
	s.met.bytesOut.WithLabelValues(a.name).Add(float64(hold.n))
	if committed {
		if !ok {
			// The response has started: the only honest signal left is to
			// cut the connection, so the client sees no final chunk.
			s.log.Warn("response cut", "request_id", id, "app", a.name, "outcome", res.Outcome.String(), "exit_status", res.ExitStatus, "err", a.redactErr(res.Err()))
			s.logFailure(a, id, hold.status(), res.Outcome.String()+" after the response began (connection cut)", res.ExitStatus, res.MemoryBytes, res.Err())
			panic(http.ErrAbortHandler)
		}
		return hold.status(), res.Outcome.String()
	}
	if res.Outcome == machine.Canceled && res.Cause != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(res.Cause, &tooLarge) || errors.Is(res.Cause, os.ErrDeadlineExceeded) {
			return s.bodyFailed(w, rc, a, id, timeout, res.Cause)
		}
	}
	code, reason := statusFor(res, perr)
	if hold.isLate() && code != 499 {
		code, reason = http.StatusGatewayTimeout, "the app did not answer in time"
	}
	detail := res.Err()
	if detail == nil {
		detail = perr
	}
	s.log.Warn("app failed", "request_id", id, "app", a.name, "status", code, "outcome", res.Outcome.String(), "exit_status", res.ExitStatus, "err", a.redactErr(detail))
	if code != 499 {
		s.logFailure(a, id, code, res.Outcome.String(), res.ExitStatus, res.MemoryBytes, detail)
	}
	s.fail(w, a.name, id, code, reason)
	return code, res.Outcome.String()
}

// bodyFailed answers a request whose body could not be read: too large
// (413), not sent in time (408), or the client went away.
func (s *Server) bodyFailed(w http.ResponseWriter, rc *http.ResponseController, a *liveApp, id string, timeout time.Duration, err error) (int, string) {
	rc.SetWriteDeadline(time.Now().Add(finishGrace))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		s.fail(w, a.name, id, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", a.set.MaxBody))
		s.logFailure(a, id, http.StatusRequestEntityTooLarge, "body too large", 0, 0, fmt.Errorf("max_body is %s", FormatSize(a.set.MaxBody)))
		return http.StatusRequestEntityTooLarge, "body too large"
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The connection's read side is spent: it cannot carry another
		// request.
		w.Header().Set("Connection", "close")
		s.log.Warn("request body timeout", "request_id", id, "app", a.name, "timeout", timeout)
		s.fail(w, a.name, id, http.StatusRequestTimeout, fmt.Sprintf("the request body did not arrive within the app's %v deadline", timeout))
		s.logFailure(a, id, http.StatusRequestTimeout, "body timeout", 0, 0, fmt.Errorf("the body did not arrive within the app's %v deadline", timeout))
		return http.StatusRequestTimeout, "body timeout"
	}
	s.fail(w, a.name, id, 499, "client closed request")
	return 499, "client gone while sending its body"
}

func (s *Server) busy(w http.ResponseWriter, a *liveApp, id string, err error) (int, string) {
	if errors.Is(err, errQueueFull) || errors.Is(err, errQueueTimeout) {
		s.fail(w, a.name, id, http.StatusServiceUnavailable, "the app is at capacity ("+err.Error()+")", "Retry-After", "1")
		s.logFailure(a, id, http.StatusServiceUnavailable, "at capacity", 0, 0, err)
		return http.StatusServiceUnavailable, err.Error()
	}
	return 499, "client gone while queued"
}

// holdWriter sits between the CGI parser and the client. It holds the
// response head and the first body bytes until holdBytes have accumulated,
// Config.HoldTime has passed since the head, or the machine ended well; only then
// does the client see a status. A machine that fails within that window
// therefore gets a clean 502/504 instead of a response cut short, which
// matters most for programs whose stdio flushes at every newline (wasi-libc).
// After it commits, every chunk is passed on and flushed at once, so long
// responses still stream.
type holdWriter struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	head bool
	wait time.Duration // holdTime
	// until is the connection's write deadline while the machine runs;
	// late says it passed before the response was committed.
	until time.Time

	mu        sync.Mutex
	resp      *cgi.Response
	buf       []byte
	committed bool
	dead      bool // finish ran: the timer must not commit any more
	late      bool // see pastDeadlineLocked
	timer     *time.Timer
	werr      error
	n         int64
}

// holdBytes is how much output is held back at most.
const holdBytes = 16 << 10

// start is the parser's onHeader callback.
func (h *holdWriter) start(resp *cgi.Response) (io.Writer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.resp = resp
	h.timer = time.AfterFunc(h.wait, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if !h.dead && !h.pastDeadlineLocked() {
			h.commitLocked()
		}
	})
	return h, nil
}

// pastDeadlineLocked reports, for a response not committed yet, whether
// the connection's write deadline has passed: a commit now would fail and
// cut the connection before the client saw a status. The response is then
// never committed (its machine overran the app's deadline, and is being
// stopped): the client gets the gateway's 504, written after the run with
// a fresh deadline.
func (h *holdWriter) pastDeadlineLocked() bool {
	if h.late {
		return true
	}
	if !h.until.IsZero() && !h.committed && time.Now().After(h.until) {
		h.late = true
	}
	return h.late
}

func (h *holdWriter) Write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.werr != nil {
		return 0, h.werr
	}
	if !h.committed {
		if h.pastDeadlineLocked() {
			return 0, errLateResponse
		}
		h.buf = append(h.buf, b...)
		if len(h.buf) >= holdBytes {
			h.commitLocked()
		}
		return len(b), h.werr
	}
	h.send(b)
	return len(b), h.werr
}

// commitLocked sends the head and the held bytes.
func (h *holdWriter) commitLocked() {
	if h.committed {
		return
	}
	h.committed = true
	hdr := h.w.Header()
	for k, vs := range h.resp.Header {
		hdr[k] = vs
	}
	h.w.WriteHeader(h.resp.Status)
	h.send(h.buf)
	h.buf = nil
}

func (h *holdWriter) send(b []byte) {
	if h.head || h.werr != nil {
		return
	}
	if len(b) > 0 {
		n, err := h.w.Write(b)
		h.n += int64(n)
		if err != nil {
			h.werr = err
			return
		}
	}
	if err := h.rc.Flush(); err != nil {
		h.werr = err
	}
}

// finish ends the hold when the machine is done: on success what was held
// goes out; on failure it is dropped if nothing was sent yet. It reports
// whether the client has received a status line.
func (h *holdWriter) finish(ok bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dead = true
	if h.timer != nil {
		h.timer.Stop()
	}
	if ok && h.resp != nil && !h.late {
		h.commitLocked()
	}
	return h.committed
}

// errLateResponse: the app's output came after the gateway gave up on it.
var errLateResponse = errors.New("the response came after the app's deadline")

func (h *holdWriter) status() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.resp == nil {
		return 0
	}
	return h.resp.Status
}

// countingReader is the body a machine reads. Once the client's part of
// it is exhausted it clears the connection's read deadline (clear), so
// that the deadline cannot later end Go's watch for a vanished client and
// cancel a request whose machine is merely still running.
type countingReader struct {
	r     io.Reader
	n     int64
	clear *http.ResponseController
}

func (c *countingReader) Read(b []byte) (int, error) {
	if c.r == nil {
		return 0, io.EOF
	}
	n, err := c.r.Read(b)
	c.n += int64(n)
	if err == io.EOF && c.clear != nil {
		c.clear.SetReadDeadline(time.Time{})
		c.clear = nil
	}
	return n, err
}

// lineWriter turns a machine's stderr into log lines tagged with the app
// and request id.
type lineWriter struct {
	hub    *logHub
	app    string
	id     string
	buf    bytes.Buffer
	full   bool
	redact *strings.Replacer // hides secret values; nil: none
}

func (l *lineWriter) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if l.buf.Len() < 16<<10 {
				l.buf.Write(b[:min(len(b), 16<<10-l.buf.Len())])
			}
			break
		}
		l.buf.Write(b[:i])
		l.emit()
		b = b[i+1:]
	}
	return n, nil
}

func (l *lineWriter) emit() {
	line := l.buf.String()
	if l.redact != nil {
		line = l.redact.Replace(line)
	}
	l.hub.add(l.app, l.id, sourceApp, line)
	l.buf.Reset()
}

// Flush emits a last line without a newline.
func (l *lineWriter) Flush() {
	if l.buf.Len() > 0 {
		l.emit()
	}
}

// noteUnsupported counts per app the system calls a Linux guest was
// refused and logs them once per request, in the server's log and the
// app's: the first thing to look at when a program that works elsewhere
// fails here. Names outside the table ("syscall_N") are counted as one
// label, so a guest cannot grow the metrics without bound.
func (s *Server) noteUnsupported(a *liveApp, id string, calls map[string]int) {
	if len(calls) == 0 {
		return
	}
	names := make([]string, 0, len(calls))
	for name, n := range calls {
		label := name
		if strings.HasPrefix(name, "syscall_") {
			label = "unknown"
		}
		s.met.unsupported.WithLabelValues(a.name, label).Add(float64(n))
		names = append(names, fmt.Sprintf("%s×%d", name, n))
	}
	sort.Strings(names)
	if len(names) > 32 {
		names = append(names[:32], fmt.Sprintf("and %d more", len(names)-32))
	}
	list := strings.Join(names, " ")
	s.log.Info("unsupported system calls", "request_id", id, "app", a.name, "calls", list)
	s.logs.add(a.name, id, sourceDust, "dust: system calls answered ENOSYS or EPERM: "+list)
}

func (h *holdWriter) isLate() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.late
}
