package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// The forwarding protocol, on top of NATS core request/reply. The
// forwarder (the node the client reached) subscribes to a fresh inbox and
// publishes the request message (wire.go) to the app's subject with that
// inbox as reply; NATS hands it to one node of the app's queue group.
// Every message back carries a Dust-T header saying what it is:
//
//	busy      the node had no free slot after all: ask again
//	accepted  the node took a slot and runs the request (Dust-Node: who)
//	ping      the request is still running (every pingEvery)
//	pull      (a request) the node wants the next body chunk; the answer
//	          is the chunk, Dust-More: 1 if more follows
//	head      (a request) the response head, JSON; answered once written
//	data      (a request) response bytes; answered once written
//	end       the response is complete, or with Dust-Cut: 1 it was cut
//
// Pull and the acknowledged head and data are the flow control: a slow
// client slows the machine's output, a slow uploader its input, and
// neither side holds more than a chunk.
const (
	hdrType = "Dust-T"
	hdrNode = "Dust-Node"
	hdrMore = "Dust-More"
	hdrCut  = "Dust-Cut"
	hdrErr  = "Dust-Err"
)

// Timing of a forwarded request.
const (
	// acceptWait is how long a forwarder waits for a node to accept.
	acceptWait = time.Second
	// pingEvery and lostAfter: a serving node that sends nothing for
	// lostAfter is taken for dead, and its request fails with 502.
	pingEvery = 500 * time.Millisecond
	lostAfter = 2 * time.Second
	// ackWait bounds one acknowledged message either way.
	ackWait = 5 * time.Second
	// maxAttempts is how many nodes a request is offered to.
	maxAttempts = 3
)

// Forwarded says how a forwarded request went.
type Forwarded struct {
	Node      string // the node that served it ("" if none accepted)
	Committed bool   // the response head reached the client
	Status    int
	// Cut: the response was cut after its head (the serving machine
	// failed, or its node was lost); the caller must cut the client's
	// connection too.
	Cut      bool
	Attempts int
	// BodyErr is why reading the client's body failed, if it did.
	BodyErr error
	// Unread holds the body bytes read from the caller's body when the
	// request was not forwarded (ErrNoCapacity): they are the caller's
	// to serve it with.
	Unread []byte
}

// idempotent methods may be sent again after a node was lost before it
// answered (RFC 9110 §9.2.2).
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// Forward offers request r for app to another node with a free slot and
// writes that node's response to w. body is r's body (read from here,
// not from r.Body). It fails with ErrNoCapacity, having written nothing,
// when no node could take it: the caller serves it itself. ctx's
// deadline is the request's.
func (n *Node) Forward(ctx context.Context, app string, r *http.Request, id string, body io.Reader, w http.ResponseWriter) (Forwarded, error) {
	var res Forwarded
	first := make([]byte, chunkSize)
	k, err := io.ReadFull(body, first)
	first = first[:k]
	more := true
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		more, err = false, nil
	case err != nil:
		res.BodyErr = err
		return res, err
	}
	if r.ContentLength >= 0 && int64(k) == r.ContentLength {
		more = false
	}
	deadline, ok := ctx.Deadline()
	if !ok || time.Until(deadline) > maxForwardWait {
		deadline = time.Now().Add(maxForwardWait)
	}
	h := &reqHead{Method: r.Method, URI: r.RequestURI, Proto: r.Proto, Host: r.Host, Header: r.Header,
		Remote: r.RemoteAddr, ID: id, Len: r.ContentLength, More: more, From: n.cfg.Name,
		Deadline: deadline.UnixMilli()}
	if h.URI == "" {
		h.URI = r.URL.RequestURI()
	}
	if h.Len < 0 {
		h.Len = -1
	}
	for res.Attempts < maxAttempts {
		res.Attempts++
		h.AcceptBy = time.Now().Add(acceptWait).UnixMilli()
		data, err := encodeRequest(h, first)
		if err != nil {
			res.Unread = first
			return res, fmt.Errorf("%w: %v", ErrNoCapacity, err)
		}
		pulled := false
		err = n.attempt(ctx, app, data, body, &pulled, w, &res)
		switch {
		case errors.Is(err, errBusy):
			continue
		case errors.Is(err, ErrNodeLost) && !res.Committed && !pulled && !more && idempotent(r.Method) && res.Attempts < maxAttempts:
			// Nothing reached the client and the whole request is still
			// here: an idempotent request may run again elsewhere.
			n.log.Warn("forwarded request lost with its node; offering it again", "request_id", id, "app", app, "node", res.Node)
			res.Node = ""
			continue
		}
		if errors.Is(err, ErrNoCapacity) {
			res.Unread = first
		}
		return res, err
	}
	res.Unread = first
	return res, fmt.Errorf("%w: %d nodes were offered the request and none had a free slot", ErrNoCapacity, res.Attempts)
}

var errBusy = errors.New("node busy")

func (n *Node) attempt(ctx context.Context, app string, data []byte, body io.Reader, pulled *bool, w http.ResponseWriter, res *Forwarded) error {
	inbox := n.nc.NewInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := n.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoCapacity, err)
	}
	defer sub.Unsubscribe()
	if err := n.nc.PublishMsg(&nats.Msg{Subject: subjectPrefix + app, Reply: inbox, Data: data}); err != nil {
		return fmt.Errorf("%w: %v", ErrNoCapacity, err)
	}
	// Phase 1: someone accepts, says busy, or nobody is there.
	accept := time.NewTimer(acceptWait + 250*time.Millisecond)
	defer accept.Stop()
	for accepted := false; !accepted; {
		select {
		case m := <-ch:
			if m.Header.Get("Status") == "503" { // NATS: no responders
				return fmt.Errorf("%w: no node is serving the app with a free slot", ErrNoCapacity)
			}
			switch m.Header.Get(hdrType) {
			case "busy":
				return errBusy
			case "accepted":
				res.Node = m.Header.Get(hdrNode)
				accepted = true
			}
		case <-accept.C:
			// Past AcceptBy a node drops the request, so it runs nowhere.
			return errBusy
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Phase 2: the node runs it; everything it sends resets the watch.
	idle := time.NewTimer(lostAfter)
	defer idle.Stop()
	rc := http.NewResponseController(w)
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%w: node %s did not finish in time", ErrForwardTimeout, res.Node)
			}
			return ctx.Err()
		case <-idle.C:
			if res.Committed {
				res.Cut = true
			}
			return fmt.Errorf("%w: node %s sent nothing for %v", ErrNodeLost, res.Node, lostAfter)
		case m := <-ch:
			switch m.Header.Get(hdrType) {
			case "ping":
			case "pull":
				*pulled = true
				reply := nats.NewMsg(m.Reply)
				buf := make([]byte, chunkSize)
				k, err := io.ReadFull(body, buf)
				reply.Data = buf[:k]
				switch {
				case err == nil:
					reply.Header.Set(hdrMore, "1")
				case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				default:
					res.BodyErr = err
					reply.Header.Set(hdrErr, "the client's body failed")
				}
				m.RespondMsg(reply)
			case "head":
				rh, err := decodeRespHead(m.Data)
				if err != nil {
					m.RespondMsg(goneMsg(m.Reply))
					res.Cut = true
					return fmt.Errorf("%w: node %s: %v", ErrNodeLost, res.Node, err)
				}
				hdr := w.Header()
				for k, vs := range rh.Header {
					hdr[k] = vs
				}
				w.WriteHeader(rh.Status)
				res.Committed, res.Status = true, rh.Status
				if err := rc.Flush(); err != nil {
					m.RespondMsg(goneMsg(m.Reply))
					return err
				}
				m.Respond(nil)
			case "data":
				if _, err := w.Write(m.Data); err != nil {
					m.RespondMsg(goneMsg(m.Reply))
					return err
				}
				if err := rc.Flush(); err != nil {
					m.RespondMsg(goneMsg(m.Reply))
					return err
				}
				m.Respond(nil)
			case "end":
				res.Cut = m.Header.Get(hdrCut) != ""
				return nil
			}
			if !idle.Stop() {
				select {
				case <-idle.C:
				default:
				}
			}
			idle.Reset(lostAfter)
		}
	}
}

func goneMsg(subject string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Header.Set(hdrType, "gone")
	return m
}

// respond is the queue subscription's handler: it admits a forwarded
// request or says busy, fast, on NATS's delivery goroutine, and runs the
// admitted one on its own.
func (n *Node) respond(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	app := strings.TrimPrefix(m.Subject, subjectPrefix)
	h, chunk, err := decodeRequest(m.Data)
	if err != nil {
		n.log.Warn("forwarded request refused", "app", app, "err", err)
		n.send(m.Reply, "busy", nil, nil)
		return
	}
	if time.Now().UnixMilli() > h.AcceptBy {
		return // the forwarder has moved on
	}
	n.mu.Lock()
	local := n.local
	n.mu.Unlock()
	if local == nil {
		n.send(m.Reply, "busy", nil, nil)
		return
	}
	serve, ok := local.Admit(app)
	if !ok {
		n.send(m.Reply, "busy", nil, nil)
		return
	}
	n.inflight.Add(1)
	n.servingN.Add(1)
	go func() {
		defer n.inflight.Done()
		defer n.servingN.Add(-1)
		n.serveForwarded(m.Reply, h, chunk, serve)
	}()
}

func (n *Node) send(subject, typ string, hdr map[string]string, data []byte) error {
	msg := nats.NewMsg(subject)
	msg.Header.Set(hdrType, typ)
	for k, v := range hdr {
		msg.Header.Set(k, v)
	}
	msg.Data = data
	return n.nc.PublishMsg(msg)
}

func (n *Node) serveForwarded(inbox string, h *reqHead, chunk []byte, serve func(http.ResponseWriter, *http.Request)) {
	if err := n.send(inbox, "accepted", map[string]string{hdrNode: n.cfg.Name}, nil); err != nil {
		n.log.Warn("accepting a forwarded request", "err", err)
	}
	deadline := time.UnixMilli(h.Deadline)
	if d := time.Until(deadline); d <= 0 || d > maxForwardWait {
		deadline = time.Now().Add(maxForwardWait)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(pingEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				n.send(inbox, "ping", nil, nil)
			}
		}
	}()
	fw := &fwdWriter{n: n, inbox: inbox, hdr: http.Header{}, cancel: cancel, deadline: deadline}
	r := &http.Request{Method: h.Method, RequestURI: h.URI, Proto: h.Proto, Host: h.Host, Header: h.Header,
		RemoteAddr: h.Remote, ContentLength: h.Len}
	r.ProtoMajor, r.ProtoMinor, _ = http.ParseHTTPVersion(h.Proto)
	if r.Header == nil {
		r.Header = http.Header{}
	}
	r.URL, _ = url.ParseRequestURI(h.URI) // checked by decodeRequest
	if h.Len == 0 {
		r.Body = http.NoBody
	} else {
		r.Body = &pullReader{n: n, inbox: inbox, buf: chunk, more: h.More, fw: fw, left: h.Len, got: int64(len(chunk))}
	}
	r = r.WithContext(ctx)
	cut := func() (cut bool) {
		defer func() {
			if p := recover(); p != nil {
				if p != http.ErrAbortHandler {
					n.log.Error("forwarded request panicked", "request_id", h.ID, "panic", fmt.Sprint(p))
				}
				cut = true
			}
		}()
		serve(fw, r)
		return false
	}()
	if !cut {
		if !fw.wrote {
			fw.WriteHeader(http.StatusOK)
		}
		cut = fw.FlushError() != nil
	}
	close(done)
	end := map[string]string{}
	if cut || fw.err != nil {
		end[hdrCut] = "1"
	}
	n.send(inbox, "end", end, nil)
}

// fwdWriter is the http.ResponseWriter a forwarded request is served
// into: it sends the response back to the forwarder in acknowledged
// chunks.
type fwdWriter struct {
	n        *Node
	inbox    string
	hdr      http.Header
	wrote    bool
	buf      []byte
	err      error
	cancel   context.CancelFunc
	mu       sync.Mutex
	deadline time.Time
}

func (w *fwdWriter) Header() http.Header { return w.hdr }

func (w *fwdWriter) WriteHeader(code int) {
	if w.wrote {
		return
	}
	w.wrote = true
	b, _ := json.Marshal(respHead{Status: code, Header: w.hdr})
	w.request("head", b)
}

func (w *fwdWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	n := len(b)
	for len(b) > 0 {
		k := min(len(b), chunkSize-len(w.buf))
		w.buf = append(w.buf, b[:k]...)
		b = b[k:]
		if len(w.buf) >= chunkSize {
			if err := w.FlushError(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// FlushError sends what is buffered; http.ResponseController uses it.
func (w *fwdWriter) FlushError() error {
	if w.err != nil || len(w.buf) == 0 {
		return w.err
	}
	w.request("data", w.buf)
	w.buf = w.buf[:0]
	return w.err
}

// SetWriteDeadline bounds the acknowledgements, as a connection's write
// deadline bounds its writes.
func (w *fwdWriter) SetWriteDeadline(t time.Time) error {
	w.mu.Lock()
	w.deadline = t
	w.mu.Unlock()
	return nil
}

// SetReadDeadline is accepted and ignored: every pull has its own bound.
func (w *fwdWriter) SetReadDeadline(time.Time) error { return nil }

func (w *fwdWriter) request(typ string, data []byte) {
	if w.err != nil {
		return
	}
	w.mu.Lock()
	wait := min(time.Until(w.deadline), ackWait)
	w.mu.Unlock()
	wait = max(wait, 100*time.Millisecond)
	msg := nats.NewMsg(w.inbox)
	msg.Header.Set(hdrType, typ)
	msg.Data = data
	resp, err := w.n.nc.RequestMsg(msg, wait)
	if err == nil && resp.Header.Get(hdrType) == "gone" {
		err = errors.New("the client is gone")
	}
	if err != nil {
		w.err = fmt.Errorf("forwarding the response: %w", err)
		w.cancel() // the machine's work is for nobody now
	}
}

// pullReader is a forwarded request's body: the first chunk came with
// the request, the rest is pulled from the forwarder.
type pullReader struct {
	n     *Node
	inbox string
	buf   []byte
	more  bool
	fw    *fwdWriter
	err   error
	// left is the declared length (-1: none); got what arrived so far.
	left, got int64
}

func (p *pullReader) Read(b []byte) (int, error) {
	for len(p.buf) == 0 {
		if p.err != nil {
			return 0, p.err
		}
		if !p.more {
			return 0, io.EOF
		}
		p.fw.mu.Lock()
		wait := min(time.Until(p.fw.deadline), ackWait)
		p.fw.mu.Unlock()
		msg := nats.NewMsg(p.inbox)
		msg.Header.Set(hdrType, "pull")
		resp, err := p.n.nc.RequestMsg(msg, max(wait, 100*time.Millisecond))
		if err != nil {
			p.err = fmt.Errorf("pulling the body: %w", err)
			return 0, p.err
		}
		if e := resp.Header.Get(hdrErr); e != "" {
			p.err = errors.New(e)
			return 0, p.err
		}
		if len(resp.Data) > chunkSize {
			p.err = fmt.Errorf("pulling the body: a chunk of %d bytes, at most %d", len(resp.Data), chunkSize)
			return 0, p.err
		}
		p.buf, p.more = resp.Data, resp.Header.Get(hdrMore) == "1"
		p.got += int64(len(p.buf))
		if p.left >= 0 && p.got > p.left {
			p.err = fmt.Errorf("pulling the body: more than its Content-Length of %d bytes", p.left)
			return 0, p.err
		}
	}
	k := copy(b, p.buf)
	p.buf = p.buf[k:]
	return k, nil
}

func (p *pullReader) Close() error { return nil }
