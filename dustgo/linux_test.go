//go:build linux && amd64

package dustgo

import (
	"encoding/binary"
	"testing"
)

func encode(args, env []string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(args)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(env)))
	for _, s := range append(append([]string(nil), args...), env...) {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

func TestDecodeRequest(t *testing.T) {
	r, err := decodeRequest(encode([]string{"/app/main", "", "a\x00b"}, []string{"K=V"}))
	if err != nil || len(r.args) != 3 || r.args[2] != "a\x00b" || r.args[1] != "" || len(r.env) != 1 || r.env[0] != "K=V" {
		t.Fatalf("%+v %v", r, err)
	}
	for name, b := range map[string][]byte{
		"short":           {1, 0, 0},
		"counts too big":  {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 0, 0, 0},
		"length too big":  append(encode([]string{"x"}, nil)[:8], 0xff, 0xff, 0xff, 0x7f, 'x'),
		"trailing bytes":  append(encode([]string{"x"}, nil), 0),
		"truncated count": encode([]string{"x", "y"}, nil)[:14],
	} {
		if _, err := decodeRequest(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzDecodeRequest: whatever the host sends, decoding never panics and
// never allocates more strings than the bytes could hold.
func FuzzDecodeRequest(f *testing.F) {
	f.Add(encode([]string{"/a"}, []string{"A=1"}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRequest(b)
		if err == nil && 4*(len(r.args)+len(r.env))+8 > len(b) {
			t.Fatalf("%d strings from %d bytes", len(r.args)+len(r.env), len(b))
		}
	})
}
