package gateway

import (
	"bytes"
	"context"
	"net"
	"sync"
)

// Go's HTTP server removes Content-Length from a request that also has
// Transfer-Encoding: chunked (it frames by the chunks, as RFC 9112 says),
// so a handler cannot tell such a request from an honest chunked one. But
// the pair is the classic request-smuggling vector against whatever sits in
// front of the gateway, and RFC 9112 §6.1 requires closing the connection
// after it at the least. So the app listener keeps a copy of each request's
// head as it crosses the connection, and the handler checks it.
//
// Tracking where each head starts needs the body length of the one before:
// Content-Length, or unknown for a chunked body, after which the handler
// closes the connection so the tap never has to guess.

// Listener wraps the app listener so that handlers can see each request's
// raw head. Serve the app server (HTTPServers) on it.
func Listener(l net.Listener) net.Listener { return tapListener{l} }

type tapListener struct{ net.Listener }

func (l tapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &tapConn{Conn: c}, nil
}

// tapMax is how much of a head is kept: Go's server reads at most
// MaxHeaderBytes plus 4 KiB of slack for a head; anything longer has been
// refused with 431 before a handler runs.
func tapMax(maxHeader int) int { return maxHeader + 4096 }

type tapConn struct {
	net.Conn
	max int

	mu   sync.Mutex
	pos  int64  // bytes read from the connection so far
	next int64  // stream offset where the current request's head starts
	lost bool   // next is unknown (after a chunked body): stop recording
	buf  []byte // bytes from next on, at most max
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.mu.Lock()
		c.record(p[:n])
		c.mu.Unlock()
	}
	return n, err
}

func (c *tapConn) record(b []byte) {
	start := c.pos
	c.pos += int64(len(b))
	if c.lost || c.pos <= c.next {
		return
	}
	if skip := c.next - start; skip > 0 {
		b = b[skip:]
	}
	if room := c.max - len(c.buf); room > 0 {
		c.buf = append(c.buf, b[:min(len(b), room)]...)
	}
}

// CloseWrite keeps Go's graceful close (half-close, then drain) working.
func (c *tapConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// head returns the raw head of the request being served, and moves the
// tap past it and its body: bodyLen bytes, or < 0 for a body whose length
// only its chunks tell. It reports false if the head is not known.
func (c *tapConn) head(bodyLen int64) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lost {
		return nil, false
	}
	// Go's server skips empty lines before a request line (after a POST,
	// clients may send a stray CRLF); so does the tap.
	lead := 0
	for lead < len(c.buf) && (c.buf[lead] == '\r' || c.buf[lead] == '\n') {
		lead++
	}
	c.next += int64(lead)
	c.buf = c.buf[lead:]
	end := headEnd(c.buf)
	if end < 0 {
		c.lost = true
		return nil, false
	}
	h := bytes.Clone(c.buf[:end])
	if bodyLen < 0 {
		c.lost, c.buf = true, nil
		return h, true
	}
	c.next += int64(end) + bodyLen
	if skip := int64(end) + bodyLen; skip < int64(len(c.buf)) {
		c.buf = append(c.buf[:0], c.buf[skip:]...)
	} else {
		c.buf = c.buf[:0]
	}
	return h, true
}

// headEnd finds the end of a head: the first empty line, where Go's
// reader accepts both CRLF and bare LF line ends.
func headEnd(b []byte) int {
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		line := b[i : i+j]
		i += j + 1
		if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
			return i
		}
	}
	return -1
}

// hasField reports whether a raw head has a header field called name
// (lower case), however it is spelled.
func hasField(head []byte, name string) bool {
	lines := bytes.Split(head, []byte("\n"))
	for _, l := range lines[min(1, len(lines)):] { // past the request line
		k, _, ok := bytes.Cut(l, []byte(":"))
		if ok && string(bytes.ToLower(bytes.TrimSpace(k))) == name {
			return true
		}
	}
	return false
}

type tapKey struct{}

// tapContext is the app server's ConnContext.
func tapContext(maxHeader int) func(context.Context, net.Conn) context.Context {
	return func(ctx context.Context, c net.Conn) context.Context {
		if t, ok := c.(*tapConn); ok {
			t.max = tapMax(maxHeader)
			return context.WithValue(ctx, tapKey{}, t)
		}
		return ctx
	}
}

func tapOf(ctx context.Context) *tapConn {
	t, _ := ctx.Value(tapKey{}).(*tapConn)
	return t
}
