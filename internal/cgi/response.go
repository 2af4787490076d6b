package cgi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// DefaultMaxHeader is the header block limit used when NewParser is given
// a limit <= 0.
const DefaultMaxHeader = 64 << 10

// ErrBadOutput is wrapped by every error that blames the machine's output,
// so the gateway can answer 502 with a single errors.Is.
var ErrBadOutput = errors.New("cgi: bad output")

// Sentinel errors for specific kinds of bad output; each wraps ErrBadOutput.
var (
	ErrHeaderTooLarge   error = &kindError{"cgi: header block too large"}
	ErrIncompleteHeader error = &kindError{"cgi: incomplete header block"}
	ErrBadStatus        error = &kindError{"cgi: bad Status header"}
	ErrMissingHeader    error = &kindError{"cgi: missing Content-Type, Location or Status"}
	ErrMalformedHeader  error = &kindError{"cgi: malformed header"}
)

type kindError struct{ msg string }

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return ErrBadOutput }

// outputError carries a message that says where the output went wrong while
// still matching its kind with errors.Is.
type outputError struct {
	kind error
	msg  string
}

func (e *outputError) Error() string { return e.msg }
func (e *outputError) Unwrap() error { return e.kind }

var errWriteAfterClose = errors.New("cgi: write after Close")

// Response is the parsed CGI header block.
type Response struct {
	Status int
	Header http.Header
}

// WriteHTTP writes an HTTP/1.1 response head (status line, headers, blank
// line) for the CLI's `dust run` output. It adds no framing headers: the
// head describes what the app said, not how a connection would carry it.
func (r *Response) WriteHTTP(w io.Writer) error {
	if r.Status < 100 || r.Status > 999 {
		return fmt.Errorf("cgi: cannot write status %d", r.Status)
	}
	var b bytes.Buffer
	// RFC 9112 allows an empty reason phrase but not a missing space.
	fmt.Fprintf(&b, "HTTP/1.1 %03d %s\r\n", r.Status, http.StatusText(r.Status))
	// Header.Write sorts names, keeps repeats in order, skips invalid names
	// and turns CR/LF in values into spaces, so a hand-built Response cannot
	// split the head either.
	if err := r.Header.Write(&b); err != nil {
		return err
	}
	b.WriteString("\r\n")
	_, err := w.Write(b.Bytes())
	return err
}

// Parser is an io.Writer that machine stdout is written into. It buffers
// until the header block is complete, parses it, calls onHeader once, and
// writes every later byte (including bytes that came in the same Write as
// the end of the header) to the io.Writer that onHeader returned. Writes
// after an error return that error. Body bytes are never accumulated.
//
// A Parser is not safe for concurrent use.
type Parser struct {
	max      int
	onHeader func(*Response) (io.Writer, error)

	partial []byte // the header line received so far, without its '\n'
	n       int    // header bytes consumed, for the size limit
	line    int    // number of the line being received, from 1

	resp           *Response
	statusSeen     bool
	contentLength  string
	hasContentType bool

	body   io.Writer
	done   bool // onHeader has been called
	closed bool
	err    error // sticky
}

// NewParser returns a Parser that accepts a header block of at most
// maxHeader bytes, blank line included (DefaultMaxHeader if maxHeader <=
// 0). onHeader may return a nil Writer to discard the body.
func NewParser(maxHeader int, onHeader func(*Response) (io.Writer, error)) *Parser {
	if maxHeader <= 0 {
		maxHeader = DefaultMaxHeader
	}
	return &Parser{
		max:      maxHeader,
		onHeader: onHeader,
		line:     1,
		resp:     &Response{Header: http.Header{}},
	}
}

// HeaderDone reports whether onHeader has been called: before that, a
// failure can still become a 502; after it, the response is on its way.
func (p *Parser) HeaderDone() bool { return p.done }

// Write consumes machine output.
func (p *Parser) Write(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	if p.closed {
		return 0, errWriteAfterClose
	}
	if p.done {
		return p.writeBody(b)
	}
	// Never look past the limit: whatever lies beyond it is either body
	// (and then the header ended within it) or an oversized header.
	chunk := b
	if room := p.max - p.n; len(chunk) > room {
		chunk = chunk[:room]
	}
	start := 0
	for {
		i := bytes.IndexByte(chunk[start:], '\n')
		if i < 0 {
			break
		}
		i += start
		line := chunk[start:i]
		if len(p.partial) > 0 {
			p.partial = append(p.partial, line...)
			line = p.partial
		}
		start = i + 1
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if len(line) == 0 {
			p.n += start
			p.partial = nil
			if err := p.finish(); err != nil {
				return 0, err
			}
			n, err := p.writeBody(b[start:])
			return start + n, err
		}
		if err := p.parseLine(line); err != nil {
			return 0, p.fail(err)
		}
		p.partial = p.partial[:0]
		p.line++
	}
	p.partial = append(p.partial, chunk[start:]...)
	p.n += len(chunk)
	if p.n >= p.max {
		return 0, p.fail(&outputError{ErrHeaderTooLarge, fmt.Sprintf(
			"cgi: header block exceeds %d bytes (no blank line by header line %d)", p.max, p.line)})
	}
	return len(b), nil
}

// Close reports ErrIncompleteHeader if the header block never completed,
// or the error that stopped an earlier Write.
func (p *Parser) Close() error {
	if p.closed {
		return p.err
	}
	p.closed = true
	if p.err != nil || p.done {
		return p.err
	}
	var msg string
	switch {
	case p.n == 0:
		msg = "cgi: incomplete header block: no output"
	case len(p.partial) > 0:
		msg = fmt.Sprintf("cgi: incomplete header block: output ended in header line %d %s",
			p.line, quote(p.partial))
	default:
		msg = fmt.Sprintf("cgi: incomplete header block: output ended after header line %d, before the blank line",
			p.line-1)
	}
	return p.fail(&outputError{ErrIncompleteHeader, msg})
}

func (p *Parser) fail(err error) error {
	p.err = err
	p.partial = nil
	return err
}

func (p *Parser) writeBody(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, err := p.body.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		p.err = err
	}
	return n, err
}

// hopByHop are response headers that describe a connection or its framing.
// They belong to the gateway's own HTTP server; an app sending them could
// only desynchronise it.
var hopByHop = map[string]bool{
	"Connection":        true,
	"Keep-Alive":        true,
	"Proxy-Connection":  true,
	"Transfer-Encoding": true,
	"Upgrade":           true,
	"Trailer":           true,
	"Te":                true,
}

// gatewayOwned are response headers whose values the gateway vouches for:
// the request id a client quotes in a bug report, the date and server of
// the response. An app that could set them could make its logs lie or
// impersonate the gateway, so they are dropped like hop-by-hop headers.
var gatewayOwned = map[string]bool{
	"X-Request-Id": true,
	"Date":         true,
	"Server":       true,
}

// AppHeader reports whether an app may send response header key
// (canonical form): not a hop-by-hop header, not one the gateway vouches
// for. A server app's response is filtered with it as a CGI program's is.
func AppHeader(key string) bool { return !hopByHop[key] && !gatewayOwned[key] }

func (p *Parser) parseLine(line []byte) error {
	bad := func(kind error, why string) error {
		what := "malformed header"
		if kind == ErrBadStatus {
			what = "bad status on header"
		}
		return &outputError{kind, fmt.Sprintf("cgi: %s line %d %s: %s", what, p.line, quote(line), why)}
	}
	if line[0] == ' ' || line[0] == '\t' {
		return bad(ErrMalformedHeader, "continuation line (obs-fold) not allowed")
	}
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		return bad(ErrMalformedHeader, "missing colon")
	}
	name := line[:colon]
	if !isToken(name) {
		return bad(ErrMalformedHeader, "invalid header name")
	}
	value := trimOWS(line[colon+1:])
	for _, c := range value {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return bad(ErrMalformedHeader, "control character in value")
		}
	}
	key := http.CanonicalHeaderKey(string(name))
	h := p.resp.Header
	switch key {
	case "Status":
		if p.statusSeen {
			return bad(ErrBadStatus, "repeated Status")
		}
		code, why := parseStatus(value)
		if why != "" {
			return bad(ErrBadStatus, why)
		}
		p.statusSeen = true
		p.resp.Status = code
	case "Location":
		if _, ok := h["Location"]; ok {
			return bad(ErrMalformedHeader, "repeated Location")
		}
		if len(value) == 0 {
			return bad(ErrMalformedHeader, "empty Location")
		}
		h.Add(key, string(value))
	case "Content-Length":
		if !isDecimal(value) {
			return bad(ErrMalformedHeader, "Content-Length is not a non-negative integer")
		}
		v := string(value)
		if p.contentLength != "" {
			if v != p.contentLength {
				return bad(ErrMalformedHeader, "conflicting Content-Length")
			}
			return nil
		}
		p.contentLength = v
		h.Add(key, v)
	default:
		if hopByHop[key] || gatewayOwned[key] {
			return nil
		}
		if key == "Content-Type" {
			p.hasContentType = true
		}
		h.Add(key, string(value))
	}
	return nil
}

func (p *Parser) finish() error {
	r := p.resp
	_, hasLocation := r.Header["Location"]
	if !p.statusSeen && !hasLocation && !p.hasContentType {
		return p.fail(&outputError{ErrMissingHeader, fmt.Sprintf(
			"cgi: header block (%d lines) has none of Content-Type, Location or Status", p.line-1)})
	}
	if !p.statusSeen {
		r.Status = http.StatusOK
		if hasLocation {
			r.Status = http.StatusFound
		}
	}
	p.done = true
	w, err := p.onHeader(r)
	if err != nil {
		p.err = err
		return err
	}
	if w == nil {
		w = io.Discard
	}
	p.body = w
	return nil
}

// parseStatus parses a Status value, returning why it is bad if it is.
func parseStatus(v []byte) (int, string) {
	if len(v) < 3 || !isDigit(v[0]) || !isDigit(v[1]) || !isDigit(v[2]) {
		return 0, "want a three-digit status code"
	}
	if len(v) > 3 && v[3] != ' ' {
		return 0, "want a three-digit status code, optionally followed by a space and a reason"
	}
	code := int(v[0]-'0')*100 + int(v[1]-'0')*10 + int(v[2]-'0')
	switch {
	case code < 100:
		return 0, "status code below 100"
	case code < 200:
		return 0, "informational (1xx) status not allowed in a CGI response"
	case code > 599:
		// RFC 9110 defines 100..599; a client's behaviour on anything
		// else is undefined, so it never leaves the gateway.
		return 0, "status code above 599"
	}
	return code, ""
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isDecimal(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for _, c := range v {
		if !isDigit(c) {
			return false
		}
	}
	// Digits only, so the sole possible error is overflow.
	_, err := strconv.ParseInt(string(v), 10, 64)
	return err == nil
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// isToken reports whether b is an RFC 9110 token, the only legal field name.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !isTchar(c) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// quote quotes garbage for an error message, cut short so that a machine
// writing a huge line cannot blow up logs.
func quote(b []byte) string {
	const limit = 40
	if len(b) > limit {
		return strconv.Quote(string(b[:limit])) + "..."
	}
	return strconv.Quote(string(b))
}
