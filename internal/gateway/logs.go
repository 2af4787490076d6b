package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/dust-run/dust/internal/machine"
)

// LogLine is one line of an app's log: a line the app wrote to stderr
// (Source "app") or one the gateway wrote about a request (Source "dust",
// e.g. why it failed).
type LogLine struct {
	Time      time.Time `json:"time"`
	App       string    `json:"app,omitempty"`
	RequestID string    `json:"request_id"`
	Source    string    `json:"source,omitempty"`
	Line      string    `json:"line"`
	// Status and Outcome are set on the line the gateway writes for a
	// failed request: its HTTP status and how it ended, as the line says
	// them. They make the app's recent failures (Failure) a lookup in its
	// log, not a parse of the text.
	Status  int    `json:"status,omitempty"`
	Outcome string `json:"outcome,omitempty"`
}

// Log sources.
const (
	sourceApp  = "app"
	sourceDust = "dust"
)

// logHub keeps every app's log on disk, in bounded space, and feeds
// followers. Each app has two segments, DIR/NAME.log and DIR/NAME.log.1,
// of at most half the cap each: when the current one is full it replaces
// the older one, so the oldest half is dropped and the newest lines always
// survive, also across restarts.
type logHub struct {
	dir string
	cap int64 // bytes per app, both segments together
	log *slog.Logger

	mu        sync.Mutex
	apps      map[string]*appLog
	followers map[string]map[chan LogLine]struct{}

	// Lines reach the disk through one writer goroutine: add runs on
	// whatever thread the machine writes its stderr from, and an hvt vCPU
	// thread's seccomp filter does not allow opening or renaming files
	// (nor should a request wait for the disk).
	queue   chan logItem
	dropped atomic.Int64
	stop    chan struct{}
	stopped chan struct{}
}

// logItem is a line to write, an app log to remove, or (done only) a
// barrier: closed once everything queued before it is on disk.
type logItem struct {
	app    string
	line   LogLine
	remove bool
	done   chan struct{}
}

type appLog struct {
	mu     sync.Mutex // orders writing, rotating, reading and removing
	warned bool
}

// DefaultLogCap is the disk an app's log may take unless Config.LogCap
// says otherwise.
const DefaultLogCap = 4 << 20

// logKeep is how many lines a logs request returns without since=.
const logKeep = 1000

func newLogHub(dir string, cap int64, log *slog.Logger) (*logHub, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	h := &logHub{dir: dir, cap: cap, log: log, apps: map[string]*appLog{}, followers: map[string]map[chan LogLine]struct{}{},
		queue: make(chan logItem, logQueue), stop: make(chan struct{}), stopped: make(chan struct{})}
	go h.run()
	return h, nil
}

// logQueue is how many lines may wait for the disk writer; beyond it
// lines are dropped, and the log says how many.
const logQueue = 8192

// run writes queued lines in batches: all lines waiting for one app go
// out through one open, write and close, so that no descriptor stays open
// per app between bursts (a gateway with hundreds of apps would otherwise
// hold hundreds of files).
func (h *logHub) run() {
	defer close(h.stopped)
	for {
		var it logItem
		select {
		case it = <-h.queue:
		case <-h.stop:
			h.batch(logItem{})
			return
		}
		h.batch(it)
	}
}

// batch handles first and whatever else is queued right now.
func (h *logHub) batch(first logItem) {
	lines := map[string][]LogLine{}
	var order []string
	flush := func() {
		for _, app := range order {
			h.write(app, lines[app])
		}
		clear(lines)
		order = order[:0]
	}
	handle := func(it logItem) {
		switch {
		case it.done != nil:
			flush()
			close(it.done)
		case it.remove:
			flush()
			h.removeNow(it.app)
		case it.app != "":
			if n := h.dropped.Swap(0); n > 0 {
				note := LogLine{Time: it.line.Time, Source: sourceDust, Line: fmt.Sprintf("dust: %d log lines dropped: the gateway could not write them out fast enough", n)}
				lines[it.app] = append(lines[it.app], note)
			}
			if lines[it.app] == nil {
				order = append(order, it.app)
			}
			lines[it.app] = append(lines[it.app], it.line)
		}
	}
	handle(first)
	for n := 0; n < logQueue; n++ {
		select {
		case it := <-h.queue:
			handle(it)
			continue
		default:
		}
		break
	}
	flush()
}

func (h *logHub) write(app string, ls []LogLine) {
	if err := h.persist(app, ls); err != nil {
		al := h.appLog(app)
		al.mu.Lock()
		if !al.warned {
			al.warned = true
			h.log.Warn("app log not written", "app", app, "err", err)
		}
		al.mu.Unlock()
	}
}

// sync waits until every line queued so far is on disk.
func (h *logHub) sync() {
	done := make(chan struct{})
	select {
	case h.queue <- logItem{done: done}:
	case <-h.stopped:
		return
	}
	select {
	case <-done:
	case <-h.stopped:
	}
}

func (h *logHub) writer(app, id string) *lineWriter { return &lineWriter{hub: h, app: app, id: id} }

func (h *logHub) path(app string) string { return filepath.Join(h.dir, app+".log") }

func (h *logHub) appLog(app string) *appLog {
	h.mu.Lock()
	defer h.mu.Unlock()
	al := h.apps[app]
	if al == nil {
		al = &appLog{}
		h.apps[app] = al
	}
	return al
}

func (h *logHub) add(app, id, source, line string) {
	h.addLine(app, LogLine{Time: time.Now().UTC(), RequestID: id, Source: source, Line: line})
}

func (h *logHub) addLine(app string, l LogLine) {
	select {
	case h.queue <- logItem{app: app, line: l}:
	default:
		h.dropped.Add(1) // the app must not wait for the disk
	}
	l.App = app
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.followers[app] {
		select {
		case c <- l:
		default: // a slow follower loses lines rather than slowing the app
		}
	}
}

func (h *logHub) persist(app string, ls []LogLine) error {
	al := h.appLog(app)
	al.mu.Lock()
	defer al.mu.Unlock()
	f, err := os.OpenFile(h.path(app), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	var buf []byte
	for _, l := range ls {
		b, err := json.Marshal(l)
		if err != nil {
			return err
		}
		b = append(b, '\n')
		if size+int64(len(buf)+len(b)) > h.cap/2 && size+int64(len(buf)) > 0 {
			if _, err := f.Write(buf); err != nil {
				return err
			}
			f.Close()
			f = nil
			if err := os.Rename(h.path(app), h.path(app)+".1"); err != nil {
				return err
			}
			if f, err = os.OpenFile(h.path(app), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600); err != nil {
				return err
			}
			size, buf = 0, buf[:0]
		}
		buf = append(buf, b...)
	}
	// Written whole, once: a crash loses at most this batch's tail, and a
	// torn last line is skipped when reading.
	_, err = f.Write(buf)
	return err
}

// recent returns app's lines at or after since (the zero time: the last
// logKeep lines), oldest first.
func (h *logHub) recent(app string, since time.Time) ([]LogLine, error) {
	h.sync()
	al := h.appLog(app)
	al.mu.Lock()
	defer al.mu.Unlock()
	var out []LogLine
	for _, p := range []string{h.path(app) + ".1", h.path(app)} {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var l LogLine
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue // a line torn by a crash
			}
			if !l.Time.Before(since) {
				l.App = app
				out = append(out, l)
			}
		}
	}
	if since.IsZero() && len(out) > logKeep {
		out = out[len(out)-logKeep:]
	}
	return out, nil
}

// Failure is a failed request as the app's log recorded it.
type Failure struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id"`
	Status    int       `json:"status"`
	Outcome   string    `json:"outcome"`
	// Detail is the rest of the log line: exit status, memory, and why
	// (the fault and its RIP, the limit hit), at most maxFailureDetail
	// bytes of it.
	Detail string `json:"detail,omitempty"`
}

const (
	// recentFailures is how many failures an app's view shows.
	recentFailures = 10
	// failureTail is how much of an app's log, newest first, is read to
	// find them: showing an app costs the same whatever its log holds.
	failureTail      = 256 << 10
	maxFailureDetail = 512
)

// failures returns app's last n failed requests, newest first, from the
// last failureTail bytes of its log (both segments). They are read from
// disk, so they survive restarts as the log does, and they are the app's
// own: every status the gateway logged a failure for, 4xx included.
// Lines written before the log carried a status are not found.
func (h *logHub) failures(app string, n int) ([]Failure, error) {
	h.sync()
	al := h.appLog(app)
	al.mu.Lock()
	defer al.mu.Unlock()
	var out []Failure
	budget := int64(failureTail)
	for _, p := range []string{h.path(app), h.path(app) + ".1"} {
		if budget <= 0 || len(out) >= n {
			break
		}
		b, whole, err := readTail(p, budget)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return out, err
		}
		budget -= int64(len(b))
		lines := bytes.Split(b, []byte{'\n'})
		if !whole {
			lines = lines[1:] // begins mid-line
		}
		for i := len(lines) - 1; i >= 0 && len(out) < n; i-- {
			var l LogLine
			if len(lines[i]) == 0 || json.Unmarshal(lines[i], &l) != nil {
				continue // the end of the file, or a line torn by a crash
			}
			if l.Source != sourceDust || l.Status == 0 {
				continue
			}
			out = append(out, Failure{Time: l.Time, RequestID: l.RequestID, Status: l.Status, Outcome: l.Outcome, Detail: failureDetail(l)})
		}
	}
	return out, nil
}

// failureDetail is what l says beyond its status and outcome.
func failureDetail(l LogLine) string {
	d, ok := strings.CutPrefix(l.Line, failurePrefix+failureHead(l.Status, l.Outcome))
	if ok {
		d = strings.TrimPrefix(strings.TrimPrefix(d, ", "), ": ")
	}
	// One line of text wherever it is shown: an error may quote output.
	d = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, d)
	if len(d) > maxFailureDetail {
		cut := maxFailureDetail
		for cut > 0 && !utf8.RuneStart(d[cut]) {
			cut--
		}
		d = d[:cut] + "…"
	}
	return d
}

// readTail reads the last limit bytes of the file at path; whole says
// whether that is all of it.
func readTail(path string, limit int64) (b []byte, whole bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	off := st.Size() - min(st.Size(), limit)
	b = make([]byte, st.Size()-off)
	n, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, err
	}
	return b[:n], off == 0, nil
}

// remove deletes app's log: a removed app's disk is given back. It is
// queued behind the app's last lines, so they cannot bring the file back.
func (h *logHub) remove(app string) {
	select {
	case h.queue <- logItem{app: app, remove: true}:
	case <-h.stopped:
	}
}

func (h *logHub) removeNow(app string) {
	al := h.appLog(app)
	al.mu.Lock()
	for _, p := range []string{h.path(app), h.path(app) + ".1"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			h.log.Warn("removing app log", "app", app, "err", err)
		}
	}
	al.mu.Unlock()
	// Nor does its entry stay: a gateway that sees many apps come and go
	// would otherwise keep one per name ever deployed.
	h.mu.Lock()
	if h.apps[app] == al {
		delete(h.apps, app)
	}
	h.mu.Unlock()
}

func (h *logHub) close() {
	close(h.stop)
	<-h.stopped
}

// follow subscribes to app's new lines; call the returned function to stop.
func (h *logHub) follow(app string) (<-chan LogLine, func()) {
	c := make(chan LogLine, 256)
	h.mu.Lock()
	if h.followers[app] == nil {
		h.followers[app] = map[chan LogLine]struct{}{}
	}
	h.followers[app][c] = struct{}{}
	h.mu.Unlock()
	return c, func() {
		h.mu.Lock()
		delete(h.followers[app], c)
		h.mu.Unlock()
	}
}

// redactor hides secret values in log lines an app writes. Values shorter
// than minRedact are left alone: hiding every "a" would ruin the log and
// protect nothing worth a secret.
func redactor(secrets map[string]string) *strings.Replacer {
	var pairs []string
	for k, v := range secrets {
		if len(v) >= minRedact {
			pairs = append(pairs, v, "[secret "+k+"]")
		}
	}
	if len(pairs) == 0 {
		return nil
	}
	return strings.NewReplacer(pairs...)
}

const minRedact = 4

// logFailure puts why a request failed into the app's own log, where
// `dust logs` finds it: the server's stderr is out of most users' reach.
func (s *Server) logFailure(a *liveApp, id string, status int, outcome string, exitStatus int, memory int64, detail error) {
	line := failureLine(status, outcome, exitStatus, memory, detail, a.img.Limits().Timeout)
	s.logs.addLine(a.name, LogLine{Time: time.Now().UTC(), RequestID: id, Source: sourceDust, Line: failurePrefix + a.redact(line),
		Status: status, Outcome: shownOutcome(outcome, exitStatus, detail)})
}

// failurePrefix starts every failed request's line in an app's log.
const failurePrefix = "dust: "

// failureLine says what a failed request's line says: its status, the
// outcome, the exit status and the memory the machine touched when there
// are some, then the detail (the fault and its RIP, the limit that was
// hit), each said once.
func failureLine(status int, outcome string, exitStatus int, memory int64, detail error, timeout time.Duration) string {
	var why []string
	var oe *machine.OutcomeError
	switch {
	case errors.As(detail, &oe):
		// Its Error() starts with the outcome, which the line has said.
		r := oe.Result
		d := r.Detail
		if r.HasRIP {
			d = strings.TrimSpace(d + fmt.Sprintf(" (rip=%#x)", r.RIP))
		}
		if d != "" {
			why = append(why, d)
		}
		if r.Outcome == machine.DeadlineExceeded {
			why = append(why, "no answer within the app's timeout of "+timeout.String())
		}
		if r.Cause != nil {
			why = append(why, r.Cause.Error())
		}
	case detail != nil:
		why = append(why, detail.Error())
	}
	shown := shownOutcome(outcome, exitStatus, detail)
	if outcome == machine.Served.String() && detail == nil {
		exitStatus = 0 // the outcome says it
	}
	line := failureHead(status, shown)
	if exitStatus != 0 {
		line += fmt.Sprintf(", exit status %d", exitStatus)
	}
	if memory > 0 {
		line += ", memory " + HumanSize(memory)
	}
	if len(why) > 0 {
		line += ": " + strings.Join(why, "; ")
	}
	return line
}

// shownOutcome is the outcome a failed request's line names: when the
// machine ended on its own, what failed is what it answered.
func shownOutcome(outcome string, exitStatus int, detail error) string {
	if outcome != machine.Served.String() {
		return outcome
	}
	if detail == nil {
		return fmt.Sprintf("exit status %d", exitStatus)
	}
	return "bad output"
}

func failureHead(status int, outcome string) string {
	return fmt.Sprintf("request failed: status %d, outcome %s", status, outcome)
}

// redact hides the values of a's secrets in s: whatever a guest made
// (its stderr, output quoted in an error) may carry them.
func (a *liveApp) redact(s string) string {
	if se := a.secrets.Load(); se != nil && se.redact != nil {
		return se.redact.Replace(s)
	}
	return s
}

// redactErr is err's text, redacted; "" for nil.
func (a *liveApp) redactErr(err error) string {
	if err == nil {
		return ""
	}
	return a.redact(err.Error())
}
