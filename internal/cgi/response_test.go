package cgi

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// parseAll feeds out to a Parser in pieces of at most step bytes (all at
// once if step <= 0) and returns the response, the body and the first error.
func parseAll(out string, step, maxHeader int) (*Response, string, error) {
	var resp *Response
	var body bytes.Buffer
	p := NewParser(maxHeader, func(r *Response) (io.Writer, error) {
		if resp != nil {
			panic("onHeader called twice")
		}
		resp = r
		return &body, nil
	})
	b := []byte(out)
	for len(b) > 0 {
		n := len(b)
		if step > 0 && n > step {
			n = step
		}
		w, err := p.Write(b[:n])
		if err != nil {
			return resp, body.String(), err
		}
		if w != n {
			return resp, body.String(), io.ErrShortWrite
		}
		b = b[n:]
	}
	if err := p.Close(); err != nil {
		return resp, body.String(), err
	}
	if resp != nil != p.HeaderDone() {
		panic("HeaderDone disagrees with onHeader")
	}
	return resp, body.String(), nil
}

func TestParser(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		status  int
		header  http.Header
		body    string
		wantErr error
		errText string // substring of the error message
	}{
		{
			name:   "LF",
			out:    "Content-Type: text/plain\n\nhello\n",
			status: 200,
			header: http.Header{"Content-Type": {"text/plain"}},
			body:   "hello\n",
		},
		{
			name:   "CRLF",
			out:    "Content-Type: text/plain\r\nX-A: 1\r\n\r\nhello\r\n\r\n",
			status: 200,
			header: http.Header{"Content-Type": {"text/plain"}, "X-A": {"1"}},
			body:   "hello\r\n\r\n",
		},
		{
			name:   "mixed line endings",
			out:    "Content-Type: a\r\nX-B:b\n\r\nbody",
			status: 200,
			header: http.Header{"Content-Type": {"a"}, "X-B": {"b"}},
			body:   "body",
		},
		{
			name:   "status with reason",
			out:    "Status: 404 Not Found\nContent-Type: text/plain\n\nnope",
			status: 404,
			header: http.Header{"Content-Type": {"text/plain"}},
			body:   "nope",
		},
		{
			name:   "status without reason, lower-case name",
			out:    "status: 204\n\n",
			status: 204,
			header: http.Header{},
		},
		{
			name:   "status with odd reason",
			out:    "Status: 599 Something   Else\n\n",
			status: 599,
			header: http.Header{},
		},
		{name: "status abc", out: "Status: abc\n\n", wantErr: ErrBadStatus, errText: `line 1 "Status: abc"`},
		{name: "status 99", out: "Content-Type: x\nStatus: 99\n\n", wantErr: ErrBadStatus, errText: "line 2"},
		{name: "status 1000", out: "Status: 1000\n\n", wantErr: ErrBadStatus},
		{name: "status 999", out: "Status: 999 Odd\n\n", wantErr: ErrBadStatus, errText: "above 599"},
		{name: "status 600", out: "Content-Type: x\nStatus: 600\n\n", wantErr: ErrBadStatus, errText: "above 599"},
		{
			name:   "gateway-owned headers dropped",
			out:    "Content-Type: a\nX-Request-Id: forged\nDate: Mon, 01 Jan 1990 00:00:00 GMT\nServer: evil\nTE: trailers\nX-Other: kept\n\n",
			status: 200,
			header: http.Header{"Content-Type": {"a"}, "X-Other": {"kept"}},
		},
		{name: "status 099", out: "Status: 099 x\n\n", wantErr: ErrBadStatus, errText: "below 100"},
		{name: "status 101", out: "Status: 101 Switching Protocols\n\n", wantErr: ErrBadStatus, errText: "informational"},
		{name: "status empty", out: "Status:\n\n", wantErr: ErrBadStatus},
		{name: "status tab", out: "Status: 200\tOK\n\n", wantErr: ErrBadStatus},
		{name: "status repeated", out: "Status: 200\nStatus: 404\n\n", wantErr: ErrBadStatus, errText: "repeated"},
		{
			name:   "location absolute",
			out:    "Location: https://example.com/\n\n",
			status: 302,
			header: http.Header{"Location": {"https://example.com/"}},
		},
		{
			name:   "location local",
			out:    "Location: /elsewhere?x=1\n\n",
			status: 302,
			header: http.Header{"Location": {"/elsewhere?x=1"}},
		},
		{
			name:   "location with status",
			out:    "Status: 301 Moved Permanently\nLocation: /new\n\n",
			status: 301,
			header: http.Header{"Location": {"/new"}},
		},
		{name: "location empty", out: "Location:\n\n", wantErr: ErrMalformedHeader, errText: "empty Location"},
		{name: "location repeated", out: "Location: /a\nLocation: /b\n\n", wantErr: ErrMalformedHeader},
		{name: "missing required", out: "X-Foo: bar\n\nbody", wantErr: ErrMissingHeader},
		{name: "empty header block", out: "\r\nbody", wantErr: ErrMissingHeader},
		{
			name:   "repeated Set-Cookie kept in order",
			out:    "Content-Type: text/html\nSet-Cookie: a=1\nX-Other: o\nset-cookie: b=2\nSet-Cookie: c=3\n\n",
			status: 200,
			header: http.Header{"Content-Type": {"text/html"}, "Set-Cookie": {"a=1", "b=2", "c=3"}, "X-Other": {"o"}},
		},
		{
			name:   "hop-by-hop dropped",
			out:    "Content-Type: a\nConnection: close\nTransfer-Encoding: chunked\nKeep-Alive: 5\nUpgrade: h2c\nTrailer: X\nProxy-Connection: x\n\n",
			status: 200,
			header: http.Header{"Content-Type": {"a"}},
		},
		{
			name:   "content-length kept",
			out:    "Content-Type: a\nContent-Length: 5\nContent-Length: 5\n\nhello",
			status: 200,
			header: http.Header{"Content-Type": {"a"}, "Content-Length": {"5"}},
			body:   "hello",
		},
		{name: "content-length negative", out: "Content-Type: a\nContent-Length: -1\n\n", wantErr: ErrMalformedHeader, errText: "Content-Length"},
		{name: "content-length junk", out: "Content-Type: a\nContent-Length: 5x\n\n", wantErr: ErrMalformedHeader},
		{name: "content-length overflow", out: "Content-Type: a\nContent-Length: 99999999999999999999\n\n", wantErr: ErrMalformedHeader},
		{name: "content-length conflict", out: "Content-Type: a\nContent-Length: 1\nContent-Length: 2\n\n", wantErr: ErrMalformedHeader, errText: "conflicting"},
		{
			name:   "value whitespace trimmed, empty value kept",
			out:    "Content-Type: \t text/plain \t\nX-Empty:\n\n",
			status: 200,
			header: http.Header{"Content-Type": {"text/plain"}, "X-Empty": {""}},
		},
		{name: "missing colon", out: "Content-Type: a\nX-A: 1\nFoo bar\n\n", wantErr: ErrMalformedHeader, errText: `cgi: malformed header line 3 "Foo bar": missing colon`},
		{name: "space before colon", out: "Content-Type : a\n\n", wantErr: ErrMalformedHeader, errText: "invalid header name"},
		{name: "empty name", out: ": a\n\n", wantErr: ErrMalformedHeader, errText: "invalid header name"},
		{name: "non-token name", out: "Content-Type: a\nX(y): 1\n\n", wantErr: ErrMalformedHeader},
		{name: "obs-fold", out: "Content-Type: a\nX-Long: one\n  two\n\n", wantErr: ErrMalformedHeader, errText: "obs-fold"},
		{name: "leading space first line", out: " Content-Type: a\n\n", wantErr: ErrMalformedHeader},
		{name: "bare CR in value", out: "Content-Type: a\rInjected: b\n\n", wantErr: ErrMalformedHeader, errText: "control character"},
		{name: "NUL in value", out: "Content-Type: a\x00\n\n", wantErr: ErrMalformedHeader},
		{name: "NPH status line", out: "HTTP/1.1 200 OK\nContent-Type: a\n\n", wantErr: ErrMalformedHeader, errText: "line 1"},
		{name: "no output", out: "", wantErr: ErrIncompleteHeader, errText: "no output"},
		{name: "ends mid line", out: "Content-Type: text/pl", wantErr: ErrIncompleteHeader, errText: `line 1 "Content-Type: text/pl"`},
		{name: "ends before blank line", out: "Content-Type: text/plain\r\n", wantErr: ErrIncompleteHeader, errText: "after header line 1"},
		{name: "ends on CR", out: "Content-Type: text/plain\n\r", wantErr: ErrIncompleteHeader},
		{
			name:    "garbage truncated in message",
			out:     strings.Repeat("x", 500) + "\n\n",
			wantErr: ErrMalformedHeader,
			errText: `"...: missing colon`,
		},
	}
	for _, tt := range tests {
		for _, step := range []int{0, 1, 2, 7} {
			resp, body, err := parseAll(tt.out, step, 0)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !errors.Is(err, ErrBadOutput) {
					t.Errorf("%s (step %d): err = %v, want %v wrapping ErrBadOutput", tt.name, step, err, tt.wantErr)
				} else if !strings.Contains(err.Error(), tt.errText) {
					t.Errorf("%s (step %d): err = %q, want it to contain %q", tt.name, step, err, tt.errText)
				}
				if resp != nil {
					t.Errorf("%s (step %d): onHeader called despite error", tt.name, step)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s (step %d): %v", tt.name, step, err)
				continue
			}
			if resp.Status != tt.status {
				t.Errorf("%s (step %d): status %d, want %d", tt.name, step, resp.Status, tt.status)
			}
			if !reflect.DeepEqual(resp.Header, tt.header) {
				t.Errorf("%s (step %d): header %v, want %v", tt.name, step, resp.Header, tt.header)
			}
			if body != tt.body {
				t.Errorf("%s (step %d): body %q, want %q", tt.name, step, body, tt.body)
			}
		}
	}
}

func TestParserBodyInSameWrite(t *testing.T) {
	var got []string
	var body bytes.Buffer
	p := NewParser(0, func(r *Response) (io.Writer, error) {
		got = append(got, "header")
		return &body, nil
	})
	out := "Content-Type: text/plain\n\nfirst body bytes"
	n, err := p.Write([]byte(out))
	if err != nil || n != len(out) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if body.String() != "first body bytes" || !p.HeaderDone() {
		t.Fatalf("body %q, done %v", body.String(), p.HeaderDone())
	}
	if _, err := p.Write([]byte(" and more")); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if body.String() != "first body bytes and more" || len(got) != 1 {
		t.Fatalf("body %q, onHeader calls %d", body.String(), len(got))
	}
	if _, err := p.Write([]byte("late")); err == nil {
		t.Error("Write after Close succeeded")
	}
}

func TestParserHeaderLimit(t *testing.T) {
	head := "Content-Type: text/plain\n\n" // 26 bytes
	for _, step := range []int{0, 1, 5} {
		if _, body, err := parseAll(head+"body", step, len(head)); err != nil || body != "body" {
			t.Errorf("step %d: header of exactly the limit: body %q, err %v", step, body, err)
		}
		_, _, err := parseAll(head+"body", step, len(head)-1)
		if !errors.Is(err, ErrHeaderTooLarge) || !errors.Is(err, ErrBadOutput) {
			t.Errorf("step %d: header one over the limit: err %v", step, err)
		}
	}
	// The default limit applies, and an endless header line is refused
	// without waiting for its end.
	p := NewParser(0, func(*Response) (io.Writer, error) { t.Fatal("onHeader called"); return nil, nil })
	line := []byte("X-Big: " + strings.Repeat("a", 1000))
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = p.Write(line)
	}
	if !errors.Is(err, ErrHeaderTooLarge) {
		t.Fatalf("err = %v, want ErrHeaderTooLarge", err)
	}
	if _, err2 := p.Write([]byte("\n\n")); err2 != err {
		t.Errorf("later Write returned %v, want the sticky %v", err2, err)
	}
	if err2 := p.Close(); err2 != err {
		t.Errorf("Close returned %v, want the sticky %v", err2, err)
	}
}

func TestParserErrorsAreSticky(t *testing.T) {
	p := NewParser(0, func(*Response) (io.Writer, error) { return io.Discard, nil })
	_, err := p.Write([]byte("bogus\n"))
	if !errors.Is(err, ErrMalformedHeader) {
		t.Fatalf("err = %v", err)
	}
	if _, err2 := p.Write([]byte("Content-Type: a\n\n")); err2 != err {
		t.Errorf("second Write: %v", err2)
	}
	if p.HeaderDone() {
		t.Error("HeaderDone after failure")
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestParserCallbackAndWriterErrors(t *testing.T) {
	boom := errors.New("boom")
	p := NewParser(0, func(*Response) (io.Writer, error) { return nil, boom })
	if _, err := p.Write([]byte("Content-Type: a\n\nbody")); err != boom {
		t.Errorf("onHeader error: got %v", err)
	}
	if !p.HeaderDone() {
		t.Error("HeaderDone false after onHeader was called")
	}

	p = NewParser(0, func(*Response) (io.Writer, error) { return failWriter{boom}, nil })
	n, err := p.Write([]byte("Content-Type: a\n\nbody"))
	if err != boom || n != len("Content-Type: a\n\n") {
		t.Errorf("body writer error: got %d, %v", n, err)
	}
	if err := p.Close(); err != boom {
		t.Errorf("Close: %v", err)
	}

	// A nil writer discards the body.
	p = NewParser(0, func(*Response) (io.Writer, error) { return nil, nil })
	if _, err := p.Write([]byte("Content-Type: a\n\nbody")); err != nil {
		t.Errorf("nil writer: %v", err)
	}
}

// countingWriter counts bytes and keeps none of them.
type countingWriter struct{ n int64 }

func (w *countingWriter) Write(b []byte) (int, error) {
	w.n += int64(len(b))
	return len(b), nil
}

func TestParserStreamsLargeBody(t *testing.T) {
	const size = 8 << 20
	cw := &countingWriter{}
	p := NewParser(0, func(*Response) (io.Writer, error) { return cw, nil })
	if _, err := p.Write([]byte("Content-Type: application/octet-stream\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 32<<10)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for written := 0; written < size; written += len(chunk) {
		if _, err := p.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if cw.n != size {
		t.Fatalf("body bytes %d, want %d", cw.n, size)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
		t.Errorf("parser allocated %d bytes while streaming an 8 MiB body", grew)
	}
	if len(p.partial) != 0 || cap(p.partial) != 0 {
		t.Errorf("parser still holds %d bytes of header buffer", cap(p.partial))
	}
}

func TestParserLargeBodyInFirstWrite(t *testing.T) {
	// The header end and a huge body arrive together: the body must go
	// straight to the writer, not through the header buffer.
	out := append([]byte("Content-Type: a\n\n"), make([]byte, 8<<20)...)
	cw := &countingWriter{}
	p := NewParser(1024, func(*Response) (io.Writer, error) { return cw, nil })
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n, err := p.Write(out)
	runtime.ReadMemStats(&after)
	if err != nil || n != len(out) || cw.n != 8<<20 {
		t.Fatalf("Write = %d, %v; body %d", n, err, cw.n)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
		t.Errorf("parser allocated %d bytes", grew)
	}
}

func TestWriteHTTP(t *testing.T) {
	r := &Response{Status: 404, Header: http.Header{
		"Content-Type": {"text/plain"},
		"Set-Cookie":   {"a=1", "b=2"},
	}}
	var b bytes.Buffer
	if err := r.WriteHTTP(&b); err != nil {
		t.Fatal(err)
	}
	want := "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}

	b.Reset()
	r = &Response{Status: 599, Header: http.Header{"X-Evil": {"a\r\nInjected: 1"}}}
	if err := r.WriteHTTP(&b); err != nil {
		t.Fatal(err)
	}
	if want := "HTTP/1.1 599 \r\nX-Evil: a  Injected: 1\r\n\r\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}

	if err := (&Response{Status: 0}).WriteHTTP(&b); err == nil {
		t.Error("status 0 accepted")
	}

	// Round trip: what the parser produces, WriteHTTP writes.
	resp, _, err := parseAll("Status: 302 Found\nLocation: /x\nSet-Cookie: s=1\n\n", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if err := resp.WriteHTTP(&b); err != nil {
		t.Fatal(err)
	}
	if want := "HTTP/1.1 302 Found\r\nLocation: /x\r\nSet-Cookie: s=1\r\n\r\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func BenchmarkParserSmall(b *testing.B) {
	out := []byte("Content-Type: text/plain; charset=utf-8\r\nX-Powered-By: dust\r\n\r\nHello, world!\n")
	b.ReportAllocs()
	b.SetBytes(int64(len(out)))
	for b.Loop() {
		p := NewParser(0, func(*Response) (io.Writer, error) { return io.Discard, nil })
		if _, err := p.Write(out); err != nil {
			b.Fatal(err)
		}
		if err := p.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
