package gateway

import (
	"sync"
	"time"
)

// LogLine is one line an app wrote to stderr.
type LogLine struct {
	Time      time.Time `json:"time"`
	App       string    `json:"app"`
	RequestID string    `json:"request_id"`
	Line      string    `json:"line"`
}

// logHub keeps the last lines of every app and feeds followers.
type logHub struct {
	mu        sync.Mutex
	lines     map[string][]LogLine
	followers map[string]map[chan LogLine]struct{}
}

const logKeep = 1000

func newLogHub() *logHub {
	return &logHub{lines: map[string][]LogLine{}, followers: map[string]map[chan LogLine]struct{}{}}
}

func (h *logHub) writer(app, id string) *lineWriter { return &lineWriter{hub: h, app: app, id: id} }

func (h *logHub) add(app, id, line string) {
	l := LogLine{Time: time.Now(), App: app, RequestID: id, Line: line}
	h.mu.Lock()
	defer h.mu.Unlock()
	ls := append(h.lines[app], l)
	if len(ls) > logKeep {
		ls = ls[len(ls)-logKeep:]
	}
	h.lines[app] = ls
	for c := range h.followers[app] {
		select {
		case c <- l:
		default: // a slow follower loses lines rather than slowing the app
		}
	}
}

// recent returns the last lines of app.
func (h *logHub) recent(app string) []LogLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]LogLine(nil), h.lines[app]...)
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
