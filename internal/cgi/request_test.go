package cgi

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// envMap turns Env output into a map, failing on duplicate keys because a
// machine would see only one of them.
func envMap(t testing.TB, env []string) map[string]string {
	t.Helper()
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("entry %q has no '='", kv)
		}
		if _, dup := m[k]; dup {
			t.Fatalf("duplicate key %q in %q", k, env)
		}
		m[k] = v
	}
	return m
}

func baseRequest() *Request {
	return &Request{
		Method:        "GET",
		ScriptName:    "/app",
		PathInfo:      "/hello/world",
		RawQuery:      "a=1&b=two%20words",
		Header:        http.Header{"Accept": {"text/html"}},
		Host:          "example.com:8080",
		ContentLength: -1,
		RemoteAddr:    "192.0.2.7:54321",
		ServerName:    "example.com",
		ServerPort:    "8080",
		MatchedRoute:  "/app/...",
	}
}

func TestEnv(t *testing.T) {
	tests := []struct {
		name   string
		modify func(r *Request)
		want   map[string]string // key → value; "\x00absent" means must be missing
	}{
		{
			name:   "meta-variables",
			modify: func(r *Request) {},
			want: map[string]string{
				"GATEWAY_INTERFACE": "CGI/1.1",
				"SERVER_SOFTWARE":   ServerSoftware,
				"REQUEST_METHOD":    "GET",
				"SCRIPT_NAME":       "/app",
				"PATH_INFO":         "/hello/world",
				"QUERY_STRING":      "a=1&b=two%20words",
				"SERVER_NAME":       "example.com",
				"SERVER_PORT":       "8080",
				"SERVER_PROTOCOL":   "HTTP/1.1",
				"REMOTE_ADDR":       "192.0.2.7",
				"REMOTE_PORT":       "54321",
				"HTTP_HOST":         "example.com:8080",
				"HTTP_ACCEPT":       "text/html",
				"X_MATCHED_ROUTE":   "/app/...",
				"X_FULL_URL":        "http://example.com:8080/app/hello/world?a=1&b=two%20words",
				"CONTENT_LENGTH":    "\x00absent",
				"CONTENT_TYPE":      "\x00absent",
			},
		},
		{
			name: "httpoxy dropped",
			modify: func(r *Request) {
				r.Header.Set("Proxy", "http://evil:3128")
				r.Header["proxy"] = []string{"http://evil2:3128"}
				r.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
			},
			want: map[string]string{"HTTP_PROXY": "\x00absent", "HTTP_PROXY_AUTHORIZATION": "\x00absent"},
		},
		{
			name:   "authorization withheld",
			modify: func(r *Request) { r.Header.Set("Authorization", "Bearer x") },
			want:   map[string]string{"HTTP_AUTHORIZATION": "\x00absent"},
		},
		{
			name: "authorization withheld, non-canonical key",
			modify: func(r *Request) {
				r.Header["AUTHORIZATION"] = []string{"Bearer x"}
			},
			want: map[string]string{"HTTP_AUTHORIZATION": "\x00absent"},
		},
		{
			name: "authorization passed on opt-in",
			modify: func(r *Request) {
				r.Header.Set("Authorization", "Bearer x")
				r.PassAuthorization = true
			},
			want: map[string]string{"HTTP_AUTHORIZATION": "Bearer x"},
		},
		{
			name: "repeated headers joined",
			modify: func(r *Request) {
				r.Header["X-Forwarded-For"] = []string{"a", "b"}
				r.Header["Accept"] = []string{"text/html", "application/json"}
			},
			want: map[string]string{
				"HTTP_X_FORWARDED_FOR": "a, b",
				"HTTP_ACCEPT":          "text/html, application/json",
			},
		},
		{
			name:   "cookies joined with semicolon",
			modify: func(r *Request) { r.Header["Cookie"] = []string{"a=1", "b=2"} },
			want:   map[string]string{"HTTP_COOKIE": "a=1; b=2"},
		},
		{
			name: "content headers mapped",
			modify: func(r *Request) {
				r.Method = "POST"
				r.Header.Set("Content-Type", "application/json")
				r.Header.Set("Content-Length", "999")
				r.ContentLength = 12
			},
			want: map[string]string{
				"REQUEST_METHOD":      "POST",
				"CONTENT_TYPE":        "application/json",
				"CONTENT_LENGTH":      "12",
				"HTTP_CONTENT_TYPE":   "\x00absent",
				"HTTP_CONTENT_LENGTH": "\x00absent",
			},
		},
		{
			name:   "zero content length is sent",
			modify: func(r *Request) { r.ContentLength = 0 },
			want:   map[string]string{"CONTENT_LENGTH": "0"},
		},
		{
			name: "odd header names dropped",
			modify: func(r *Request) {
				r.Header["X_Forwarded_For"] = []string{"spoof"}
				r.Header["X.Dot"] = []string{"x"}
				r.Header["X Space"] = []string{"x"}
				r.Header["X-Caf\u00e9"] = []string{"x"}
				r.Header["\u017fecret"] = []string{"x"} // ſ upper-cases to S
				r.Header[""] = []string{"x"}
				r.Header["X-Ok-2"] = []string{"fine"}
			},
			want: map[string]string{
				"HTTP_X_FORWARDED_FOR": "\x00absent",
				"HTTP_X_DOT":           "\x00absent",
				"HTTP_SECRET":          "\x00absent",
				"HTTP_X_OK_2":          "fine",
			},
		},
		{
			name: "app env wins",
			modify: func(r *Request) {
				r.Header.Set("X-Mode", "from-client")
				r.AppEnv = []string{"HTTP_X_MODE=from-app", "SCRIPT_NAME=/pinned", "GREETING=hi", "GREETING=hello", "BROKEN", "=nokey"}
			},
			want: map[string]string{
				"HTTP_X_MODE": "from-app",
				"SCRIPT_NAME": "/pinned",
				"GREETING":    "hello",
				"BROKEN":      "\x00absent",
			},
		},
		{
			name: "host from header, server from host",
			modify: func(r *Request) {
				r.Host = ""
				r.ServerName, r.ServerPort = "", ""
				r.Header.Set("Host", "h.example")
				r.Scheme = "https"
			},
			want: map[string]string{
				"HTTP_HOST":   "h.example",
				"SERVER_NAME": "h.example",
				"SERVER_PORT": "443",
				"X_FULL_URL":  "https://h.example/app/hello/world?a=1&b=two%20words",
			},
		},
		{
			name: "full url escapes path",
			modify: func(r *Request) {
				r.ScriptName = ""
				r.PathInfo = "/a b/ü"
				r.RawQuery = ""
				r.MatchedRoute = ""
			},
			want: map[string]string{
				"X_FULL_URL":      "http://example.com:8080/a%20b/%C3%BC",
				"X_MATCHED_ROUTE": "/",
				"QUERY_STRING":    "",
			},
		},
		{
			name: "remote addr without port",
			modify: func(r *Request) {
				r.RemoteAddr = "@unix"
			},
			want: map[string]string{"REMOTE_ADDR": "@unix", "REMOTE_PORT": "\x00absent"},
		},
		{
			name: "ipv6 remote addr",
			modify: func(r *Request) {
				r.RemoteAddr = "[2001:db8::1]:443"
			},
			want: map[string]string{"REMOTE_ADDR": "2001:db8::1", "REMOTE_PORT": "443"},
		},
		{
			name: "NUL escaped",
			modify: func(r *Request) {
				r.PathInfo = "/a\x00b"
				r.Header.Set("X-Nul", "x\x00y")
			},
			want: map[string]string{"PATH_INFO": "/a%00b", "HTTP_X_NUL": "x%00y"},
		},
		{
			name:   "defaults",
			modify: func(r *Request) { r.Method, r.Proto = "", "" },
			want:   map[string]string{"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := baseRequest()
			tt.modify(r)
			env := r.Env()
			got := envMap(t, env)
			for k, want := range tt.want {
				v, ok := got[k]
				if want == "\x00absent" {
					if ok {
						t.Errorf("%s=%q present, want absent", k, v)
					}
					continue
				}
				if !ok {
					t.Errorf("%s missing; env: %q", k, env)
				} else if v != want {
					t.Errorf("%s=%q, want %q", k, v, want)
				}
			}
			if !slices.Equal(env, r.Env()) {
				t.Errorf("Env not deterministic")
			}
		})
	}
}

func TestEnvOrder(t *testing.T) {
	r := baseRequest()
	r.Header.Set("Zeta", "z")
	r.Header.Set("Alpha", "a")
	r.AppEnv = []string{"Z_APP=1", "A_APP=2"}
	var keys []string
	for _, kv := range r.Env() {
		k, _, _ := strings.Cut(kv, "=")
		keys = append(keys, k)
	}
	want := []string{
		"GATEWAY_INTERFACE", "SERVER_SOFTWARE", "SERVER_NAME", "SERVER_PORT",
		"SERVER_PROTOCOL", "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO",
		"QUERY_STRING", "REMOTE_ADDR", "REMOTE_PORT", "X_MATCHED_ROUTE",
		"X_FULL_URL", "HTTP_ACCEPT", "HTTP_ALPHA", "HTTP_HOST", "HTTP_ZETA",
		"Z_APP", "A_APP",
	}
	if !slices.Equal(keys, want) {
		t.Errorf("order:\n got %q\nwant %q", keys, want)
	}
}

func TestArgs(t *testing.T) {
	tests := []struct {
		script, pathInfo, query string
		want                    []string
	}{
		{"", "", "", []string{"/"}},
		{"/app", "", "", []string{"/app"}},
		{"/app", "/x/y", "", []string{"/app/x/y"}},
		{"/app", "/x", "a=1&b=2", []string{"/app/x", "a=1", "b=2"}},
		{"", "/", "greeting=hello%20world&flag", []string{"/", "greeting=hello world", "flag"}},
		{"", "/", "q=a+b", []string{"/", "q=a b"}},
		{"", "/", "a&&b&", []string{"/", "a", "", "b", ""}},
		{"", "/", "bad=%zz", []string{"/", "bad=%zz"}},
		{"", "/", "nul=%00", []string{"/", "nul=%00"}},
		{"", "/a\x00", "", []string{"/a%00"}},
		{"", "/", "x=%26%3D", []string{"/", "x=&="}},
	}
	for _, tt := range tests {
		r := &Request{ScriptName: tt.script, PathInfo: tt.pathInfo, RawQuery: tt.query}
		if got := r.Args(); !slices.Equal(got, tt.want) {
			t.Errorf("Args(%q, %q, %q) = %q, want %q", tt.script, tt.pathInfo, tt.query, got, tt.want)
		}
	}
}

func TestFromHTTP(t *testing.T) {
	tests := []struct {
		target, script      string
		wantScript, wantPI  string
		wantName, wantPort  string
		tls                 bool
		wantScheme, wantURL string
	}{
		{"http://example.com/app/x/y?q=1", "/app", "/app", "/x/y", "example.com", "80", false, "http", "http://example.com/app/x/y?q=1"},
		{"http://example.com:9/app", "/app/", "/app", "", "example.com", "9", false, "http", "http://example.com:9/app"},
		{"http://example.com/app/", "/app", "/app", "/", "example.com", "80", false, "http", "http://example.com/app/"},
		{"http://example.com/application", "/app", "", "/application", "example.com", "80", false, "http", "http://example.com/application"},
		{"http://example.com/x", "", "", "/x", "example.com", "80", false, "http", "http://example.com/x"},
		{"http://example.com/x", "/", "", "/x", "example.com", "80", false, "http", "http://example.com/x"},
		{"https://[::1]/a%20b", "", "", "/a b", "::1", "443", true, "https", "https://[::1]/a%20b"},
	}
	for _, tt := range tests {
		hr := httptest.NewRequest("POST", tt.target, strings.NewReader("hello"))
		hr.Header.Set("Content-Type", "text/plain")
		if !tt.tls {
			hr.TLS = nil
		} else if hr.TLS == nil {
			hr.TLS = &tls.ConnectionState{}
		}
		r := FromHTTP(hr, tt.script)
		if r.ScriptName != tt.wantScript || r.PathInfo != tt.wantPI {
			t.Errorf("%s under %q: script %q path info %q, want %q %q", tt.target, tt.script, r.ScriptName, r.PathInfo, tt.wantScript, tt.wantPI)
		}
		if r.ServerName != tt.wantName || r.ServerPort != tt.wantPort || r.Scheme != tt.wantScheme {
			t.Errorf("%s: server %q:%q scheme %q, want %q:%q %q", tt.target, r.ServerName, r.ServerPort, r.Scheme, tt.wantName, tt.wantPort, tt.wantScheme)
		}
		env := envMap(t, r.Env())
		if env["X_FULL_URL"] != tt.wantURL {
			t.Errorf("%s: X_FULL_URL %q, want %q", tt.target, env["X_FULL_URL"], tt.wantURL)
		}
		if env["CONTENT_LENGTH"] != "5" || env["CONTENT_TYPE"] != "text/plain" || env["REQUEST_METHOD"] != "POST" {
			t.Errorf("%s: content/method vars wrong: %v", tt.target, env)
		}
		if env["REMOTE_ADDR"] != "192.0.2.1" || env["REMOTE_PORT"] != "1234" {
			t.Errorf("%s: remote %q %q", tt.target, env["REMOTE_ADDR"], env["REMOTE_PORT"])
		}
	}
}

func TestFromHTTPDoesNotAlias(t *testing.T) {
	hr := httptest.NewRequest("GET", "/x", nil)
	hr.Header.Set("X-A", "1")
	r := FromHTTP(hr, "")
	r.Header.Set("X-A", "2")
	if hr.Header.Get("X-A") != "1" {
		t.Error("FromHTTP shares the header map with the http.Request")
	}
	if !reflect.DeepEqual(r.Args(), []string{"/x"}) {
		t.Errorf("Args = %q", r.Args())
	}
}
