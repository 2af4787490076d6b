package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/cgi"
)

// relayOnce runs relayResponse over a guest's raw response and returns
// the head the gateway would commit and the body it would stream.
func relayOnce(t *testing.T, method, raw string) (*cgi.Response, string, error) {
	t.Helper()
	var got *cgi.Response
	var body strings.Builder
	err := relayResponse(strings.NewReader(raw), method, func(r *cgi.Response) (io.Writer, error) {
		got = r
		return &body, nil
	})
	return got, body.String(), err
}

// control bytes in a server app's response header values
// are refused by net/http's parser (as cgi.Parser refuses them), so they
// never reach the client: the response is a 502.
func TestServerProxyRelayControlBytesInHeader(t *testing.T) {
	for _, v := range []string{"a\x01b", "a\x00b", "a\x7fb", "a\rb"} {
		raw := "HTTP/1.1 200 OK\r\nX-A: " + v + "\r\nContent-Length: 0\r\n\r\n"
		resp, _, err := relayOnce(t, "GET", raw)
		if err == nil || !errors.Is(err, errServerResponse) {
			t.Errorf("value %q: relayed (%v), err %v", v, resp, err)
		}
	}
}

// Client headers that name the client's address never reach the program:
// common middleware (chi's RealIP, many frameworks) reads them before
// X-Forwarded-For, so the gateway sets X-Real-Ip itself.
func TestServerProxyRawRequestClientAddressSpoof(t *testing.T) {
	r := httptest.NewRequest("GET", "http://x/", nil)
	r.Header.Set("X-Real-Ip", "6.6.6.6")
	r.Header.Set("True-Client-Ip", "6.6.6.6")
	r.Header.Set("Forwarded", "for=6.6.6.6")
	b, _ := io.ReadAll(rawRequest(r, &cgi.Request{Scheme: "http"}, "id1", nil))
	if strings.Contains(string(b), "6.6.6.6") || !strings.Contains(string(b), "X-Real-Ip: 192.0.2.1\r\n") {
		t.Errorf("the client's own address headers reached the program, or the gateway's did not:\n%s", b)
	}
}

// The route is cut from the request target however the client spelt it:
// the route matches the decoded path, the target keeps the raw one.
func TestServerProxyRawRequestEncodedPrefix(t *testing.T) {
	r := httptest.NewRequest("GET", "http://x/%61pi/items", nil)
	creq := &cgi.Request{ScriptName: "/api", Scheme: "http"}
	b, _ := io.ReadAll(rawRequest(r, creq, "id1", nil))
	line, _, _ := strings.Cut(string(b), "\r\n")
	t.Logf("route /api, client path /%%61pi/items: program reads %q", line)
	if !routeMatches("/api", r.URL.Path) {
		t.Fatal("route does not match: the premise is wrong")
	}
	if line != "GET /items HTTP/1.1" {
		t.Errorf("target not stripped of its route: %q", line)
	}
}

// Headers the client names in Connection are hop-by-hop (RFC 9110 §7.6.1):
// they do not reach the program.
func TestServerProxyRawRequestConnectionOptions(t *testing.T) {
	r := httptest.NewRequest("GET", "http://x/", nil)
	r.Header.Set("Connection", "X-Hop")
	r.Header.Set("X-Hop", "secret-for-the-proxy")
	b, _ := io.ReadAll(rawRequest(r, &cgi.Request{Scheme: "http"}, "id1", nil))
	if strings.Contains(string(b), "X-Hop:") {
		t.Errorf("a header the client listed in Connection reached the program:\n%s", b)
	}
}

// informational responses count towards the 1 MiB head
// bound, a body cut short of its Content-Length is an error, and a second
// response after the first is not the client's.
func TestServerProxyRelayBounds(t *testing.T) {
	flood := strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", (maxServerHead/25)+10) + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
	if _, _, err := relayOnce(t, "GET", flood); !errors.Is(err, errServerResponse) {
		t.Errorf("1xx flood: %v", err)
	}
	if _, _, err := relayOnce(t, "GET", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"); !errors.Is(err, errServerResponse) {
		t.Errorf("short body: %v", err)
	}
	resp, body, err := relayOnce(t, "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-Request-Id: forged\r\n\r\nhiHTTP/1.1 200 OK\r\nSet-Cookie: smuggled=1\r\n\r\n")
	if err != nil || body != "hi" || resp.Header.Get("Connection") != "" || resp.Header.Get("X-Request-Id") != "" || resp.Header.Get("Content-Length") != "2" {
		t.Errorf("pipelined second response: %v %q %v", err, body, resp.Header)
	}
}

// FuzzRelayResponse feeds a server app's response parser arbitrary bytes:
// it must never panic, and whatever it passes on has a status the gateway
// allows and none of the headers it owns.
func FuzzRelayResponse(f *testing.F) {
	f.Add("GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
	f.Add("GET", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n")
	f.Add("HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nConnection: keep-alive\r\nX-Request-Id: x\r\n\r\n")
	f.Add("GET", "HTTP/1.0 302 Found\r\nLocation: /\r\n\r\nrest until close")
	f.Add("GET", "garbage\r\n\r\n")
	f.Fuzz(func(t *testing.T, method, raw string) {
		if method != "GET" && method != "HEAD" && method != "POST" {
			method = "GET"
		}
		resp, _, err := relayOnce(t, method, raw)
		if err != nil || resp == nil {
			return
		}
		if resp.Status < 200 || resp.Status > 599 {
			t.Fatalf("passed on status %d", resp.Status)
		}
		for k := range resp.Header {
			if !cgi.AppHeader(k) {
				t.Fatalf("passed on header %q", k)
			}
		}
	})
}

// FuzzRawRequest builds the program's request from arbitrary client
// headers and paths: the head it writes is always one well-formed
// HTTP/1.1 request that net/http reads back, with the gateway's own
// headers and none of the client's hop-by-hop or address headers.
func FuzzRawRequest(f *testing.F) {
	f.Add("/app/x", "a=1", "X-Real-Ip", "6.6.6.6", "keep-alive, X-A")
	f.Add("/%61pp/%2F", "", "Forwarded", "for=1.2.3.4", "")
	f.Fuzz(func(t *testing.T, path, query, name, value, conn string) {
		r := httptest.NewRequest("GET", "http://x/", nil)
		r.URL.Path, r.URL.RawPath, r.URL.RawQuery = path, "", query
		if !strings.HasPrefix(path, "/app") || strings.ContainsAny(query, " \r\n\x00#") || strings.ContainsAny(path, " \r\n\x00?#") {
			return // net/http would not have parsed such a request line
		}
		// What net/http's server accepts from a client: a token for a
		// name, no control bytes but tab in values.
		token := func(s string) bool {
			for _, c := range []byte(s) {
				if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
					return false
				}
			}
			return s != ""
		}
		ctl := func(s string) bool {
			for _, c := range []byte(s) {
				if (c < ' ' && c != '\t') || c == 0x7f {
					return true
				}
			}
			return false
		}
		if !token(name) || http.CanonicalHeaderKey(name) != name || ctl(value) || ctl(conn) || strings.ContainsAny(path+query, "\t") || ctl(path) || ctl(query) {
			return
		}
		r.Header.Set(name, value)
		r.Header.Set("Connection", conn)
		b, err := io.ReadAll(rawRequest(r, &cgi.Request{Scheme: "http", ScriptName: "/app"}, "id", nil))
		if err != nil {
			t.Fatal(err)
		}
		got, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("unreadable request %q: %v", b, err)
		}
		if got.Header.Get("X-Request-Id") != "id" || got.Header.Get("Connection") != "close" || len(got.Header.Values("X-Real-Ip")) != 1 {
			t.Fatalf("gateway headers wrong: %v", got.Header)
		}
		if !strings.HasPrefix(got.URL.Path, "/") {
			t.Fatalf("target %q", got.URL.Path)
		}
	})
}
