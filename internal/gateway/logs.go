package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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
	l := LogLine{Time: time.Now().UTC(), RequestID: id, Source: source, Line: line}
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
