package hvt

import (
	"encoding/binary"
	"errors"
	"testing"
)

func TestCheckRange(t *testing.T) {
	const mem = 4 << 20
	cases := []struct {
		gpa, size uint64
		ok        bool
	}{
		{monitorEnd, 16, true},
		{mem - 16, 16, true}, // ends exactly at the top: allowed
		{mem - 16, 17, false},
		{monitorEnd - 1, 1, false},
		{0, 0, false},
		{gdtAddr, 8, false},
		{^uint64(0) - 4, 16, false}, // wraps
		{mem, 0, true},              // empty range at the end
		{mem + 1, 0, false},
		{0xFFFFFFFFF000, 16, false},
	}
	for _, c := range cases {
		err := checkRange(c.gpa, c.size, mem)
		if (err == nil) != c.ok {
			t.Errorf("checkRange(%#x, %#x) = %v, want ok=%v", c.gpa, c.size, err, c.ok)
		}
		if err != nil && !errors.Is(err, errGuestRange) {
			t.Errorf("error %v does not wrap errGuestRange", err)
		}
	}
}

func TestDecodeHypercalls(t *testing.T) {
	mem := make([]byte, 4<<20)
	le := binary.LittleEndian
	put := func(at uint64, v ...uint64) {
		for i, x := range v {
			le.PutUint64(mem[at+uint64(8*i):], x)
		}
	}
	put(0x20000, fdStdout, 0x30000, 100)
	if r, err := decodeWrite(mem, 0x20000); err != nil || r.buf != 0x30000 || r.len != 100 {
		t.Fatalf("valid write: %+v %v", r, err)
	}
	put(0x20000, 3, 0x30000, 100)
	if _, err := decodeWrite(mem, 0x20000); err == nil {
		t.Error("write to fd 3 accepted")
	}
	put(0x20000, fdStderr, 0x1000, 8) // GDT
	if _, err := decodeWrite(mem, 0x20000); err == nil {
		t.Error("write from monitor memory accepted")
	}
	if _, err := decodeWrite(mem, 0x20004); err == nil {
		t.Error("misaligned argument struct accepted")
	}
	if _, err := decodeWrite(mem, uint64(len(mem))-8); err == nil {
		t.Error("argument struct straddling the end of memory accepted")
	}
	put(0x20000, 0x3ff000, 0x2000, 0)
	if _, err := decodeRead(mem, 0x20000); err == nil {
		t.Error("read buffer past the end accepted")
	}
	put(0x20000, 0, exitOOM+1, 0, 0, 0, 0)
	if _, err := decodeExit(mem, 0x20000); err == nil {
		t.Error("unknown exit reason accepted")
	}
	put(0x20000, 7, exitNormal, 0x30000, 10, 0, 0)
	if r, err := decodeExit(mem, 0x20000); err != nil || r.status != 7 || r.outLen != 10 {
		t.Errorf("valid exit: %+v %v", r, err)
	}
	put(0x20000, 7, exitNormal, 0x30000, 10, ^uint64(0), 2)
	if _, err := decodeExit(mem, 0x20000); err == nil {
		t.Error("exit with wrapping stderr buffer accepted")
	}
}

// FuzzDecodeHypercall feeds arbitrary argument structs at arbitrary
// addresses: decoding never panics and every accepted buffer is inside
// guest memory and above the monitor's pages.
func FuzzDecodeHypercall(f *testing.F) {
	f.Add(uint64(0x20000), uint64(1), uint64(0x30000), uint64(16), uint64(0), uint64(0), uint64(0))
	f.Add(uint64(0x20000), uint64(2), uint64(0xFFFFFFFFF000), uint64(16), uint64(0), uint64(0), uint64(0))
	f.Add(uint64(0x3ffff8), uint64(1), uint64(0), uint64(0), uint64(0), uint64(0), uint64(0))
	f.Add(uint64(0x20000), uint64(0), uint64(0), uint64(0x30000), uint64(1<<63), uint64(0x10000), uint64(1))
	f.Fuzz(func(t *testing.T, gpa, a, b, c, d, e, g uint64) {
		const memSize = 4 << 20
		mem := make([]byte, memSize)
		if gpa < memSize-48 {
			le := binary.LittleEndian
			for i, v := range []uint64{a, b, c, d, e, g} {
				le.PutUint64(mem[gpa+uint64(8*i):], v)
			}
		}
		inside := func(buf, n uint64) {
			if n == 0 {
				return
			}
			if buf < monitorEnd || buf+n > memSize || buf+n < buf {
				t.Fatalf("accepted buffer [%#x,+%#x)", buf, n)
			}
			_ = mem[buf : buf+n]
		}
		if r, err := decodeWrite(mem, gpa); err == nil {
			inside(r.buf, r.len)
			inside(gpa, hcWriteSize)
		}
		if r, err := decodeRead(mem, gpa); err == nil {
			inside(r.buf, r.len)
			inside(gpa, hcReadSize)
		}
		if r, err := decodeExit(mem, gpa); err == nil {
			inside(r.outBuf, r.outLen)
			inside(r.errBuf, r.errLen)
			inside(gpa, hcExitSize)
		}
	})
}

func TestEncodeRequest(t *testing.T) {
	area := make([]byte, requestEnd-requestBase)
	p, err := encodeRequest(area, []string{"/x", "a"}, []string{"K=V", "Q=1"}, []byte("body"))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	str := func(gpa uint64) string {
		o := gpa - requestBase
		e := o
		for area[e] != 0 {
			e++
		}
		return string(area[o:e])
	}
	if p.argc != 2 || str(le.Uint64(area[p.argv-requestBase:])) != "/x" || str(le.Uint64(area[p.argv-requestBase+8:])) != "a" || le.Uint64(area[p.argv-requestBase+16:]) != 0 {
		t.Error("argv wrong")
	}
	if str(le.Uint64(area[p.envp-requestBase+8:])) != "Q=1" || le.Uint64(area[p.envp-requestBase+16:]) != 0 {
		t.Error("envp wrong")
	}
	if p.bodyAddr%8 != 0 || string(area[p.bodyAddr-requestBase:][:p.bodySize]) != "body" {
		t.Error("body wrong")
	}
	if _, err := encodeRequest(area, nil, []string{"A=\x00"}, nil); !errors.Is(err, ErrRequestTooLarge) {
		t.Errorf("NUL in env: %v", err)
	}
	if _, err := encodeRequest(area, nil, []string{string(make([]byte, len(area)))}, nil); !errors.Is(err, ErrRequestTooLarge) {
		t.Errorf("oversized env: %v", err)
	}
}
