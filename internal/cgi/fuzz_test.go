package cgi

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

type parseResult struct {
	resp *Response
	body []byte
	err  error
}

// runParser feeds out in chunks whose sizes come from splits (cycled; a
// zero size means 1), so the fuzzer controls the split points.
func runParser(out, splits []byte, maxHeader int) parseResult {
	var res parseResult
	var body bytes.Buffer
	p := NewParser(maxHeader, func(r *Response) (io.Writer, error) {
		if res.resp != nil {
			panic("onHeader called twice")
		}
		res.resp = r
		return &body, nil
	})
	for i := 0; len(out) > 0; i++ {
		n := len(out)
		if len(splits) > 0 {
			n = max(int(splits[i%len(splits)]), 1)
			n = min(n, len(out))
		}
		w, err := p.Write(out[:n])
		if err != nil {
			res.err = err
			break
		}
		if w != n {
			panic("short write without error")
		}
		out = out[n:]
	}
	if err := p.Close(); res.err == nil {
		res.err = err
	}
	if (res.resp != nil) != p.HeaderDone() {
		panic("HeaderDone disagrees with onHeader")
	}
	res.body = body.Bytes()
	return res
}

// headerEnd is an independent oracle for where the header block ends: just
// after the first line that is empty or a lone CR. It returns -1 if there
// is no such line.
func headerEnd(out []byte) int {
	start := 0
	for {
		i := bytes.IndexByte(out[start:], '\n')
		if i < 0 {
			return -1
		}
		line := out[start : start+i]
		if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
			return start + i + 1
		}
		start += i + 1
	}
}

func FuzzParser(f *testing.F) {
	seeds := []string{
		"Content-Type: text/plain\n\nhello",
		"Content-Type: text/plain\r\n\r\nhello\r\n",
		"Status: 404 Not Found\r\nContent-Type: text/html\r\n\r\n<h1>404</h1>",
		"Status: 204\n\n",
		"Status: abc\n\n",
		"Status: 99\n\n",
		"Status: 1000\n\n",
		"Location: https://example.com/\n\n",
		"Location: /local\n\n",
		"Set-Cookie: a=1\nSet-Cookie: b=2\nContent-Type: a\n\n",
		"X-Only: 1\n\nbody",
		"Content-Type: a\nContent-Length: 3\n\nabc",
		"Content-Type: a\nConnection: close\nTransfer-Encoding: chunked\n\n",
		"Foo bar\n\n",
		"Content-Type: a\n folded\n\n",
		"\n",
		"\r\n\r\n",
		"Content-Type: a\r",
		"Content-Type: a\n\r",
		"",
	}
	for i, s := range seeds {
		f.Add([]byte(s), []byte{byte(i % 4), 3, 1}, i%3 == 0)
	}
	f.Fuzz(func(t *testing.T, out, splits []byte, small bool) {
		maxHeader := DefaultMaxHeader
		if small {
			maxHeader = 32
		}
		got := runParser(out, splits, maxHeader)
		whole := runParser(out, nil, maxHeader)

		if (got.err == nil) != (whole.err == nil) {
			t.Fatalf("split changes outcome: %v vs %v", got.err, whole.err)
		}
		if got.err != nil {
			if got.resp == nil && !errors.Is(got.err, ErrBadOutput) {
				t.Fatalf("error before header does not wrap ErrBadOutput: %v", got.err)
			}
			if got.resp != nil {
				t.Fatalf("error after header from a buffer writer: %v", got.err)
			}
			if got.err.Error() != whole.err.Error() {
				t.Fatalf("split changes error: %q vs %q", got.err, whole.err)
			}
			if len(got.err.Error()) > 300 {
				t.Fatalf("error message too long (%d bytes)", len(got.err.Error()))
			}
			return
		}
		if got.resp.Status < 100 || got.resp.Status > 999 {
			t.Fatalf("status %d", got.resp.Status)
		}
		end := headerEnd(out)
		if end < 0 {
			t.Fatalf("success without a blank line")
		}
		if end > maxHeader {
			t.Fatalf("header of %d bytes accepted with limit %d", end, maxHeader)
		}
		if !bytes.Equal(got.body, out[end:]) {
			t.Fatalf("body %q, want %q", got.body, out[end:])
		}
		if got.resp.Status != whole.resp.Status || !reflect.DeepEqual(got.resp.Header, whole.resp.Header) {
			t.Fatalf("split changes response: %+v vs %+v", got.resp, whole.resp)
		}
		h := got.resp.Header
		_, hasCT := h["Content-Type"]
		_, hasLoc := h["Location"]
		if !hasCT && !hasLoc && !bytes.Contains(bytes.ToLower(out[:end]), []byte("status:")) {
			t.Fatalf("accepted without Content-Type, Location or Status")
		}
		for k, vs := range h {
			if k == "Status" || hopByHop[k] {
				t.Fatalf("header %q passed through", k)
			}
			if !isToken([]byte(k)) {
				t.Fatalf("invalid header name %q", k)
			}
			for _, v := range vs {
				if strings.ContainsAny(v, "\r\n\x00") {
					t.Fatalf("header %q value %q has control characters", k, v)
				}
			}
		}
		var head bytes.Buffer
		if err := got.resp.WriteHTTP(&head); err != nil {
			t.Fatalf("WriteHTTP: %v", err)
		}
		if hr, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head.Bytes())), nil); err != nil {
			t.Fatalf("WriteHTTP output %q does not parse: %v", head.Bytes(), err)
		} else if hr.StatusCode != got.resp.Status {
			t.Fatalf("WriteHTTP status %d, want %d", hr.StatusCode, got.resp.Status)
		}
	})
}

func isEnvKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func FuzzEnv(f *testing.F) {
	f.Add("GET", "/app", "/x/y", "a=1&b=%20", "X-Forwarded-For", "1.2.3.4", "example.com", "192.0.2.1:1", "HTTP_X_FORWARDED_FOR", "app", false)
	f.Add("POST", "", "/", "", "Proxy", "http://evil", "", "bad", "SCRIPT_NAME", "/pinned", true)
	f.Add("", "", "", "%00&&+", "Authorization", "Bearer t", "[::1]:80", "[::1]:9", "PATH", "/bin", false)
	f.Add("G\x00T", "/\x00", "\xff", "x=%zz", "Content-Type", "a\x00b", "h\x00", "", "", "", true)
	f.Add("GET", "/app", "", "", "\u017fecret", "v", "host", "1.1.1.1:1", "A=B", "c", false)
	f.Add("GET", "/", "", "", "x_y", "v", "host", "1.1.1.1:1", "HTTP_HOST", "pinned", false)
	f.Fuzz(func(t *testing.T, method, script, pathInfo, query, hname, hval, host, remote, appKey, appVal string, auth bool) {
		r := &Request{
			Method:     method,
			ScriptName: script,
			PathInfo:   pathInfo,
			RawQuery:   query,
			Header: http.Header{
				hname:          {hval, hval},
				"Proxy":        {"http://evil"},
				"Cookie":       {hval},
				"Content-Type": {hval},
			},
			Host:              host,
			ContentLength:     int64(len(hval)) - 1,
			RemoteAddr:        remote,
			PassAuthorization: auth,
			AppEnv:            []string{appKey + "=" + appVal, "DUST_FIXED=1"},
		}
		env := r.Env()
		// The app entry's key is what precedes its first '=', which is not
		// appKey when appKey itself contains '='.
		appEntry := r.AppEnv[0]
		appKey, appVal, _ = strings.Cut(appEntry, "=")
		appValid := appKey != "" && !strings.Contains(appEntry, "\x00")
		seen := map[string]string{}
		for _, kv := range env {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				t.Fatalf("entry %q is not KEY=VALUE", kv)
			}
			if _, dup := seen[k]; dup {
				t.Fatalf("duplicate key %q", k)
			}
			seen[k] = v
			if strings.IndexByte(kv, 0) >= 0 {
				t.Fatalf("NUL in %q", kv)
			}
			if !isEnvKey(k) && !(appValid && k == appKey) {
				t.Fatalf("bad key %q", k)
			}
		}
		if appValid && seen[appKey] != appVal {
			t.Fatalf("app env %s=%q lost: got %q", appKey, appVal, seen[appKey])
		}
		if seen["DUST_FIXED"] != "1" && !(appValid && appKey == "DUST_FIXED") {
			t.Fatalf("DUST_FIXED lost")
		}
		appSets := func(k string) bool { return appValid && appKey == k }
		if _, ok := seen["HTTP_PROXY"]; ok && !appSets("HTTP_PROXY") {
			t.Fatal("HTTP_PROXY leaked")
		}
		if _, ok := seen["HTTP_AUTHORIZATION"]; ok && !auth && !appSets("HTTP_AUTHORIZATION") {
			t.Fatal("HTTP_AUTHORIZATION leaked")
		}
		for _, k := range []string{"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"} {
			if _, ok := seen[k]; ok && !appSets(k) {
				t.Fatalf("%s present", k)
			}
		}
		for _, k := range []string{"GATEWAY_INTERFACE", "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "X_FULL_URL", "CONTENT_TYPE"} {
			if _, ok := seen[k]; !ok {
				t.Fatalf("%s missing", k)
			}
		}
		args := r.Args()
		if len(args) == 0 || !strings.HasPrefix(args[0], "/") {
			t.Fatalf("args %q", args)
		}
		for _, a := range args {
			if strings.IndexByte(a, 0) >= 0 {
				t.Fatalf("NUL in arg %q", a)
			}
		}
		if query != "" && len(args) != 1+strings.Count(query, "&")+1 {
			t.Fatalf("args %q for query %q", args, query)
		}
		if !reflect.DeepEqual(env, r.Env()) {
			t.Fatal("Env not deterministic")
		}
	})
}
