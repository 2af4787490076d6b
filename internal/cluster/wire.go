package cluster

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// A forwarded request travels as one message: a 4-byte big-endian length,
// the request head as JSON, and the first chunk of the body. The rest of
// a large body is pulled by the serving node chunk by chunk (see
// forward.go), so it never sits whole in a message or in memory.

// reqHead is a forwarded request's head.
type reqHead struct {
	Method string      `json:"m"`
	URI    string      `json:"u"` // the request target as the client sent it
	Proto  string      `json:"p"`
	Host   string      `json:"h"`
	Header http.Header `json:"hd"`
	Remote string      `json:"r"` // the client's address, as the first node saw it
	ID     string      `json:"id"`
	Len    int64       `json:"l"`    // Content-Length, -1 unknown
	More   bool        `json:"more"` // the body goes on past this message
	From   string      `json:"from"`
	// AcceptBy (unix ms) is when the forwarder stops waiting for an
	// accept: a node that finds the request later drops it, so a request
	// the forwarder sent elsewhere never runs twice.
	AcceptBy int64 `json:"ab"`
	// Deadline (unix ms) is when the client's request ends.
	Deadline int64 `json:"dl"`
}

// Limits on what a forwarded message may hold.
const (
	maxHead       = 256 << 10
	maxHeaderKeys = 256
	// chunkSize is one body or response chunk; with the head it stays
	// below NATS's default 1 MiB message limit, so an external cluster
	// needs no special settings.
	chunkSize = 256 << 10
	// maxForwardWait bounds the deadline a forwarded request may carry.
	maxForwardWait = 15 * time.Minute
)

func encodeRequest(h *reqHead, chunk []byte) ([]byte, error) {
	hb, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	if len(hb) > maxHead {
		return nil, fmt.Errorf("request head of %d bytes, at most %d forwarded", len(hb), maxHead)
	}
	out := make([]byte, 4, 4+len(hb)+len(chunk))
	binary.BigEndian.PutUint32(out, uint32(len(hb)))
	out = append(out, hb...)
	return append(out, chunk...), nil
}

// decodeRequest parses a forwarded request message and checks every field
// before anything is built from it.
func decodeRequest(b []byte) (*reqHead, []byte, error) {
	if len(b) < 4 {
		return nil, nil, fmt.Errorf("forwarded request: %d bytes, no head", len(b))
	}
	n := binary.BigEndian.Uint32(b)
	if n > maxHead || int(n) > len(b)-4 {
		return nil, nil, fmt.Errorf("forwarded request: head of %d bytes in a %d-byte message (at most %d)", n, len(b), maxHead)
	}
	var h reqHead
	if err := json.Unmarshal(b[4:4+n], &h); err != nil {
		return nil, nil, fmt.Errorf("forwarded request: head: %w", err)
	}
	chunk := b[4+n:]
	if len(chunk) > chunkSize {
		return nil, nil, fmt.Errorf("forwarded request: first chunk of %d bytes, at most %d", len(chunk), chunkSize)
	}
	if !validMethod(h.Method) {
		return nil, nil, fmt.Errorf("forwarded request: method %q", h.Method)
	}
	if !strings.HasPrefix(h.URI, "/") && h.URI != "*" {
		return nil, nil, fmt.Errorf("forwarded request: target %q does not start with /", h.URI)
	}
	if _, err := url.ParseRequestURI(h.URI); err != nil {
		return nil, nil, fmt.Errorf("forwarded request: target: %w", err)
	}
	if _, _, ok := http.ParseHTTPVersion(h.Proto); !ok {
		return nil, nil, fmt.Errorf("forwarded request: protocol %q", h.Proto)
	}
	if !validValue(h.Host) || len(h.Host) > 1024 {
		return nil, nil, fmt.Errorf("forwarded request: host %q", h.Host)
	}
	if len(h.Header) > maxHeaderKeys {
		return nil, nil, fmt.Errorf("forwarded request: %d header fields, at most %d", len(h.Header), maxHeaderKeys)
	}
	for k, vs := range h.Header {
		if !validToken(k, 256) {
			return nil, nil, fmt.Errorf("forwarded request: header name %q", k)
		}
		for _, v := range vs {
			if !validValue(v) {
				return nil, nil, fmt.Errorf("forwarded request: value of header %s", k)
			}
		}
	}
	if h.Len < -1 {
		return nil, nil, fmt.Errorf("forwarded request: body length %d", h.Len)
	}
	if h.Len >= 0 && int64(len(chunk)) > h.Len || !h.More && h.Len >= 0 && int64(len(chunk)) != h.Len {
		return nil, nil, fmt.Errorf("forwarded request: %d body bytes here for a body of %d", len(chunk), h.Len)
	}
	if len(h.ID) > 64 || len(h.Remote) > 256 || ValidName(h.From) != nil {
		return nil, nil, fmt.Errorf("forwarded request: bad id, remote address or origin node")
	}
	return &h, chunk, nil
}

func validMethod(m string) bool { return validToken(m, 32) }

// validToken checks an HTTP token (a method, a header name) of at most max bytes.
func validToken(m string, max int) bool {
	if m == "" || len(m) > max {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// respHead is the head of a forwarded response.
type respHead struct {
	Status int         `json:"s"`
	Header http.Header `json:"h"`
}

func decodeRespHead(b []byte) (respHead, error) {
	var h respHead
	if len(b) > maxHead {
		return h, fmt.Errorf("forwarded response head of %d bytes, at most %d", len(b), maxHead)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("forwarded response head: %w", err)
	}
	if h.Status < 100 || h.Status > 999 || len(h.Header) > maxHeaderKeys {
		return h, fmt.Errorf("forwarded response head: status %d with %d header fields", h.Status, len(h.Header))
	}
	for k, vs := range h.Header {
		if !validToken(k, 256) {
			return h, fmt.Errorf("forwarded response head: header name %q", k)
		}
		for _, v := range vs {
			if !validValue(v) {
				return h, fmt.Errorf("forwarded response head: value of header %s", k)
			}
		}
	}
	return h, nil
}

// validValue checks a header value: no control bytes but tab, which is
// what keeps a peer from splitting a response or a CGI variable.
func validValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
