package gateway

import (
	"bytes"
	"testing"
)

func TestTapHeads(t *testing.T) {
	c := &tapConn{max: 1 << 10}
	// Two pipelined requests, the first with a 3-byte body, arriving in
	// pieces that split heads and bodies.
	stream := "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\nHost: x\n\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /d HTTP/1.1\r\n\r\n"
	for i := 0; i < len(stream); i += 7 {
		c.record([]byte(stream[i:min(i+7, len(stream))]))
	}
	h, ok := c.head(3)
	if !ok || string(h) != "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n" {
		t.Fatalf("first head %q %v", h, ok)
	}
	h, ok = c.head(0)
	if !ok || string(h) != "GET /b HTTP/1.1\nHost: x\n\n" {
		t.Fatalf("second head (bare LF) %q %v", h, ok)
	}
	h, ok = c.head(-1)
	if !ok || !hasField(h, "transfer-encoding") || hasField(h, "content-length") {
		t.Fatalf("chunked head %q %v", h, ok)
	}
	// After a chunked body the tap does not guess.
	if h, ok := c.head(0); ok {
		t.Fatalf("head after a chunked body: %q", h)
	}
}

func TestTapBounded(t *testing.T) {
	c := &tapConn{max: 64}
	c.record(bytes.Repeat([]byte("x"), 1000))
	if len(c.buf) > 64 {
		t.Fatalf("tap kept %d bytes, max 64", len(c.buf))
	}
	if _, ok := c.head(0); ok {
		t.Fatal("a head without an end was reported")
	}
}

func TestHasField(t *testing.T) {
	head := []byte("POST /x HTTP/1.1\r\nX-Content-Length: 1\r\ncontent-LENGTH : 5\r\nTransfer-Encodings: x\r\n\r\n")
	if !hasField(head, "content-length") {
		t.Error("content-length (odd case, space before colon) not found")
	}
	if hasField(head, "transfer-encoding") {
		t.Error("a longer field name matched")
	}
	if hasField([]byte("content-length: 1 HTTP/1.1\r\n\r\n"), "content-length") {
		t.Error("the request line was taken for a field")
	}
}

// The tap's view of a connection is computed from bytes a client chose:
// whatever they are, it never panics, keeps at most max bytes, and a
// reported head is a prefix of what it recorded that ends with an empty
// line.
func FuzzTapHead(f *testing.F) {
	f.Add([]byte("POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"), int64(3), uint8(5))
	f.Add([]byte("\n\n\r\n"), int64(-1), uint8(1))
	f.Add([]byte("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"), int64(0), uint8(0))
	f.Fuzz(func(t *testing.T, stream []byte, bodyLen int64, chunk uint8) {
		c := &tapConn{max: 256}
		step := int(chunk) + 1
		for i := 0; i < len(stream); i += step {
			c.record(stream[i:min(i+step, len(stream))])
		}
		for range 3 {
			h, ok := c.head(bodyLen % 1024)
			if len(c.buf) > c.max {
				t.Fatalf("tap holds %d bytes, max %d", len(c.buf), c.max)
			}
			if !ok {
				return
			}
			if !bytes.HasSuffix(h, []byte("\n")) || headEnd(h) != len(h) {
				t.Fatalf("head %q does not end at its first empty line", h)
			}
			hasField(h, "content-length")
		}
	})
}
