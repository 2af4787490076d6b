package dustgo

import (
	"errors"
	"io"
	"strings"
	"testing"
)

func TestServe(t *testing.T) {
	t.Setenv("REQUEST_METHOD", "POST")
	t.Setenv("PATH_INFO", "/p")
	t.Setenv("QUERY_STRING", "a=1")
	t.Setenv("CONTENT_LENGTH", "5")
	t.Setenv("HTTP_X_FOO", "bar")
	var got Request
	var body string
	var out strings.Builder
	status := Serve(func(w ResponseWriter, r *Request) {
		got = *r
		b, _ := io.ReadAll(r.Body)
		body = string(b)
		if r.Header("X-Foo") != "bar" {
			t.Errorf("header X-Foo = %q", r.Header("X-Foo"))
		}
		w.Header().Set("X-B", "two\r\nInjected: yes")
		w.Header().Add("X-A", "1")
		w.Header().Add("X-A", "2")
		w.WriteHeader(404)
		w.WriteHeader(500) // ignored: the header is gone
		w.Write([]byte("nope\n"))
	}, strings.NewReader("helloBEYOND"), &out)
	if status != 0 {
		t.Errorf("status %d", status)
	}
	if got.Method != "POST" || got.Path != "/p" || got.Query != "a=1" || got.ContentLength != 5 || body != "hello" {
		t.Errorf("request %+v with body %q", got, body)
	}
	want := "Status: 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-A: 1\r\nX-A: 2\r\nX-B: two  Injected: yes\r\n\r\nnope\n"
	if out.String() != want {
		t.Errorf("response\n%q\nwant\n%q", out.String(), want)
	}
}

func TestServeNothingWritten(t *testing.T) {
	t.Setenv("CONTENT_LENGTH", "")
	var out strings.Builder
	var length int64
	Serve(func(w ResponseWriter, r *Request) { length = r.ContentLength }, strings.NewReader(""), &out)
	if out.String() != "Content-Type: text/plain; charset=utf-8\r\n\r\n" || length != -1 {
		t.Errorf("%q, content length %d", out.String(), length)
	}
}

type brokenWriter struct{}

func (brokenWriter) Write([]byte) (int, error) { return 0, errors.New("gone") }

func TestServeWriteFails(t *testing.T) {
	if s := Serve(func(w ResponseWriter, r *Request) { w.Write([]byte("x")) }, strings.NewReader(""), brokenWriter{}); s != 1 {
		t.Errorf("status %d, want 1", s)
	}
}

func TestServeRecoversPanic(t *testing.T) {
	defer func() { serveCGI = nil }()
	HandleCGI(func() int { panic("boom") })
	if s := serve(); s != 2 {
		t.Errorf("status %d, want 2", s)
	}
	defer func() {
		if recover() == nil {
			t.Error("a second handler was accepted")
		}
	}()
	HandleCGI(func() int { return 0 })
}

// Tests register handlers themselves: on linux/amd64 HandleCGI would
// otherwise serve the test binary's own environment and exit.
func init() { autoServe = false }
