package gateway

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
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
		if parseErr != nil {
			return http.StatusBadGateway, "the app's output is not a valid CGI response"
		}
		return http.StatusBadGateway, fmt.Sprintf("the app exited (status %d) without a response", res.ExitStatus)
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
	w.WriteHeader(status)
	fmt.Fprintf(w, "%d %s: %s (request %s)\n", status, http.StatusText(status), reason, id)
	if status >= 500 {
		s.noteError(recentError{Time: time.Now(), App: app, RequestID: id, Status: status, Reason: reason})
	}
}

// serveApp serves one request on a brand-new machine.
func (s *Server) serveApp(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := requestID(r)
	w.Header().Set("X-Request-Id", id)
	a := s.match(r.Host, r.URL.Path)
	if a == nil {
		s.met.requests.WithLabelValues("", "404").Inc()
		s.fail(w, "", id, http.StatusNotFound, "no app is deployed at "+strconvQuote(r.URL.Path))
		return
	}
	defer a.inflight.Done()
	a.window.Add(1)
	a.last.Store(start.UnixNano())
	status, outcome := s.serveOn(a, w, r, id, start)
	elapsed := time.Since(start)
	s.met.requests.WithLabelValues(a.name, strconv.Itoa(status)).Inc()
	s.met.latency.WithLabelValues(a.name).Observe(elapsed.Seconds())
	a.hist.observe(elapsed)
	s.log.Info("request", "request_id", id, "app", a.name, "kind", a.kind, "version", a.version,
		"method", r.Method, "path", r.URL.Path, "status", status, "outcome", outcome,
		"duration_ms", float64(elapsed.Microseconds())/1e3)
}

func strconvQuote(p string) string {
	if len(p) > 100 {
		p = p[:100] + "..."
	}
	return strconv.Quote(p)
}

func (s *Server) serveOn(a *liveApp, w http.ResponseWriter, r *http.Request, id string, start time.Time) (int, string) {
	if r.ContentLength > a.set.MaxBody {
		s.fail(w, a.name, id, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", a.set.MaxBody))
		return http.StatusRequestEntityTooLarge, "body too large"
	}
	// Admission: the app's own cap first, then the global one.
	releaseApp, err := a.gate.acquire(r.Context(), a.set.QueueWait)
	if err != nil {
		return s.busy(w, a, id, err)
	}
	defer releaseApp()
	s.met.queue.WithLabelValues(a.name).Set(float64(a.gate.waiting.Load()))
	releaseGlobal, err := s.global.acquire(r.Context(), a.set.QueueWait)
	if err != nil {
		return s.busy(w, a, id, err)
	}
	defer releaseGlobal()

	m, hit, err := a.pool.Get()
	if err != nil {
		s.fail(w, a.name, id, http.StatusServiceUnavailable, "no machine could be created", "Retry-After", "1")
		s.log.Error("machine creation failed", "request_id", id, "app", a.name, "err", err)
		return http.StatusServiceUnavailable, "create failed"
	}
	if hit {
		s.met.poolHits.WithLabelValues(a.name).Inc()
	} else {
		s.met.poolMisses.WithLabelValues(a.name).Inc()
		s.met.coldStart.WithLabelValues(a.kind).Observe(time.Since(start).Seconds())
	}
	s.met.live.Inc()
	defer func() {
		s.met.live.Dec()
		a.pool.Release(m)
	}()

	creq := cgi.FromHTTP(r, a.set.Route) // "/" becomes an empty SCRIPT_NAME
	creq.AppEnv = a.set.Env
	creq.PassAuthorization = a.set.PassAuthorization
	in := &countingReader{} // no body: reads as EOF
	if r.ContentLength != 0 {
		in.r = http.MaxBytesReader(w, r.Body, a.set.MaxBody)
	}
	req := &machine.Request{Args: creq.Args(), Env: creq.Env(), Body: in, BodyLen: r.ContentLength}

	hold := &holdWriter{w: w, rc: http.NewResponseController(w), head: r.Method == http.MethodHead, wait: s.cfg.HoldTime}
	parser := cgi.NewParser(0, hold.start)
	logw := s.logs.writer(a.name, id)
	res := m.Run(r.Context(), req, parser, logw)
	perr := parser.Close()
	logw.Flush()
	s.met.run.WithLabelValues(a.name).Observe(res.RunTime.Seconds())
	s.met.exits.WithLabelValues(a.name).Add(float64(res.Exits))
	s.met.bytesIn.WithLabelValues(a.name).Add(float64(in.n))

	ok := res.Outcome == machine.Served && perr == nil
	committed := hold.finish(ok)
	s.met.bytesOut.WithLabelValues(a.name).Add(float64(hold.n))
	if committed {
		if !ok {
			// The response has started: the only honest signal left is to
			// cut the connection.
			s.log.Warn("response cut", "request_id", id, "app", a.name, "outcome", res.Outcome.String(), "err", res.Err())
			panic(http.ErrAbortHandler)
		}
		return hold.status(), res.Outcome.String()
	}
	var tooLarge *http.MaxBytesError
	if res.Outcome == machine.Canceled && errors.As(res.Cause, &tooLarge) {
		s.fail(w, a.name, id, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", a.set.MaxBody))
		return http.StatusRequestEntityTooLarge, "body too large"
	}
	code, reason := statusFor(res, perr)
	detail := res.Err()
	if detail == nil {
		detail = perr
	}
	s.log.Warn("app failed", "request_id", id, "app", a.name, "status", code, "outcome", res.Outcome.String(), "err", detail)
	s.fail(w, a.name, id, code, reason)
	return code, res.Outcome.String()
}

func (s *Server) busy(w http.ResponseWriter, a *liveApp, id string, err error) (int, string) {
	if errors.Is(err, errQueueFull) || errors.Is(err, errQueueTimeout) {
		s.fail(w, a.name, id, http.StatusServiceUnavailable, "the app is at capacity ("+err.Error()+")", "Retry-After", "1")
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

	mu        sync.Mutex
	resp      *cgi.Response
	buf       []byte
	committed bool
	dead      bool // finish ran: the timer must not commit any more
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
		if !h.dead {
			h.commitLocked()
		}
	})
	return h, nil
}

func (h *holdWriter) Write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.werr != nil {
		return 0, h.werr
	}
	if !h.committed {
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
	if ok && h.resp != nil {
		h.commitLocked()
	}
	return h.committed
}

func (h *holdWriter) status() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.resp == nil {
		return 0
	}
	return h.resp.Status
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	if c.r == nil {
		return 0, io.EOF
	}
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// lineWriter turns a machine's stderr into log lines tagged with the app
// and request id.
type lineWriter struct {
	hub  *logHub
	app  string
	id   string
	buf  bytes.Buffer
	full bool
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
	l.hub.add(l.app, l.id, l.buf.String())
	l.buf.Reset()
}

// Flush emits a last line without a newline.
func (l *lineWriter) Flush() {
	if l.buf.Len() > 0 {
		l.emit()
	}
}
