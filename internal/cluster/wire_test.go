package cluster

import (
	"bytes"
	"net/http"
	"testing"
)

func validHead() *reqHead {
	return &reqHead{Method: "POST", URI: "/app/x?a=1", Proto: "HTTP/1.1", Host: "example.com",
		Header: http.Header{"X-A": {"1"}}, Remote: "127.0.0.1:5", ID: "abc", Len: 3, From: "a"}
}

func TestRequestRoundTrip(t *testing.T) {
	b, err := encodeRequest(validHead(), []byte("hey"))
	if err != nil {
		t.Fatal(err)
	}
	h, chunk, err := decodeRequest(b)
	if err != nil || h.URI != "/app/x?a=1" || h.Header.Get("X-A") != "1" || !bytes.Equal(chunk, []byte("hey")) {
		t.Fatalf("round trip: %+v %q %v", h, chunk, err)
	}
}

func TestRequestRefused(t *testing.T) {
	for name, mod := range map[string]func(h *reqHead){
		"method":      func(h *reqHead) { h.Method = "GE T" },
		"target":      func(h *reqHead) { h.URI = "http://x/" },
		"proto":       func(h *reqHead) { h.Proto = "HTTP/9" },
		"host":        func(h *reqHead) { h.Host = "a\r\nb" },
		"header name": func(h *reqHead) { h.Header = http.Header{"X:Y": {"1"}} },
		"header val":  func(h *reqHead) { h.Header = http.Header{"X": {"1\r\nSet-Cookie: a"}} },
		"length":      func(h *reqHead) { h.Len = 2 },
		"short":       func(h *reqHead) { h.Len = 10 },
		"from":        func(h *reqHead) { h.From = "../x" },
	} {
		h := validHead()
		mod(h)
		b, err := encodeRequest(h, []byte("hey"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := decodeRequest(b); err == nil {
			t.Errorf("%s: accepted %+v", name, h)
		}
	}
	if _, _, err := decodeRequest([]byte{0xff, 0xff, 0xff, 0xff, '{'}); err == nil {
		t.Error("a head length past the message was accepted")
	}
}

func FuzzDecodeRequest(f *testing.F) {
	b, _ := encodeRequest(validHead(), []byte("hey"))
	f.Add(b)
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, chunk, err := decodeRequest(b)
		if err != nil {
			return
		}
		if len(chunk) > chunkSize || !validMethod(h.Method) || h.Len < -1 {
			t.Fatalf("accepted a bad request: %+v", h)
		}
	})
}

func FuzzDecodeRespHead(f *testing.F) {
	f.Add([]byte(`{"s":200,"h":{"A":["b"]}}`))
	f.Add([]byte(`{"s":99}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeRespHead(b)
		if err == nil && (h.Status < 100 || h.Status > 999) {
			t.Fatalf("accepted status %d", h.Status)
		}
	})
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add("app.x", []byte(`{"name":"x","last":1,"current":1,"history":[{"number":1,"kind":"hvt","digest":"sha256:`+
		"0000000000000000000000000000000000000000000000000000000000000000"+`","settings":{"route":"/x"}}]}`))
	f.Add("app.x", []byte(`{"name":"x","deleted":true,"last":4}`))
	f.Fuzz(func(t *testing.T, key string, b []byte) {
		r, err := decodeRecord(key, b)
		if err != nil {
			return
		}
		a, err := r.app()
		if err != nil {
			t.Fatalf("record accepted by decodeRecord, refused by app: %v", err)
		}
		if a != nil && a.Current.Number != r.Current {
			t.Fatalf("record accepted with current %d not in history", r.Current)
		}
	})
}
