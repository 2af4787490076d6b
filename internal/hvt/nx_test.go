package hvt

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
)

// cGuestELF compiles C source against libdust (once per name and test
// binary), for test guests that belong to one test rather than examples/.
func cGuestELF(t testing.TB, name, src string) []byte {
	t.Helper()
	return dustccELF(t, "c:"+name, "", []byte(src))
}

// nxGuest copies the bytes of a function into a buffer chosen by the query
// string and calls it, or jumps to monitor-written memory, or writes to its
// own code. It flushes the target address first so the test can compare it
// with the RIP of the fault.
const nxGuest = `
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dust/dust.h>

__attribute__((noinline)) static int ret42(void) { return 42; }

static unsigned char data_buf[64] = {1};
static unsigned char bss_buf[64];
static const unsigned char ro_code[16] = {0xb8, 42, 0, 0, 0, 0xc3}; /* mov $42,%eax; ret */

int main(void)
{
	const char *q = getenv("QUERY_STRING");
	unsigned char stack_buf[64];
	unsigned char *p = NULL;
	if (!q)
		q = "";
	if (!strcmp(q, "heap"))
		p = malloc(64);
	else if (!strcmp(q, "bigheap")) /* beyond the first 2 MiB: a 2 MiB page */
		p = (unsigned char *)malloc(6 << 20) + (5 << 20);
	else if (!strcmp(q, "stack"))
		p = stack_buf;
	else if (!strcmp(q, "data"))
		p = data_buf;
	else if (!strcmp(q, "bss"))
		p = bss_buf;
	if (p)
		memcpy(p, (const void *)(uintptr_t)ret42, 16);
	else if (!strcmp(q, "rodata"))
		p = (unsigned char *)ro_code;
	else if (!strcmp(q, "bootinfo"))
		p = (unsigned char *)dust_boot_info();
	else if (!strcmp(q, "request")) /* the body holds the code */
		p = (unsigned char *)(uintptr_t)dust_boot_info()->body_inline;
	else if (!strcmp(q, "writecode") || !strcmp(q, "text"))
		p = (unsigned char *)(uintptr_t)ret42;
	printf("Content-Type: text/plain\r\n\r\ntarget=%lu\n", (unsigned long)(uintptr_t)p);
	fflush(stdout);
	if (!strcmp(q, "writecode")) {
		*(volatile unsigned char *)p = 0xc3;
		printf("wrote\n");
		return 0;
	}
	printf("ran=%d\n", ((int (*)(void))(uintptr_t)p)());
	return 0;
}
`

// Data is not code: copying code bytes anywhere the guest can write, or
// jumping to bytes the monitor wrote, faults at the first instruction
// fetch instead of running; writing to code faults at the store. Only the
// guest's text runs.
func TestDataPagesAreNotExecutable(t *testing.T) {
	im := prepareELF(t, cGuestELF(t, "nx", nxGuest), machine.Limits{Memory: 16 << 20})
	for _, mode := range []string{"heap", "bigheap", "stack", "data", "bss", "rodata", "bootinfo", "request", "writecode"} {
		t.Run(mode, func(t *testing.T) {
			req := &machine.Request{Env: []string{"QUERY_STRING=" + mode}}
			if mode == "request" {
				code := []byte{0xb8, 42, 0, 0, 0, 0xc3}
				req.Body, req.BodyLen = bytes.NewReader(code), int64(len(code))
			}
			res, out, _ := runOnce(t, im, req)
			if res.Outcome != machine.Fault || !res.HasRIP {
				t.Fatalf("outcome %v (%v, RIP known %v), want a fault with its RIP; output %q", res.Outcome, res.Err(), res.HasRIP, out)
			}
			if strings.Contains(out, "ran=") || strings.Contains(out, "wrote") {
				t.Fatalf("the guest went on after the fault: %q", out)
			}
			_, body := splitCGI(t, out)
			target, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(body, "target=")), 10, 64)
			if err != nil || target == 0 {
				t.Fatalf("no target address in %q", body)
			}
			if mode == "writecode" {
				if !inCode(im, res.RIP) || res.RIP == target {
					t.Errorf("RIP %#x: want the store inside the text, not the target %#x", res.RIP, target)
				}
				return
			}
			if res.RIP != target {
				t.Errorf("fault at RIP %#x, want the first fetch at %#x", res.RIP, target)
			}
		})
	}
	// The control: the same call into the guest's own text is served.
	if res, out, _ := runOnce(t, im, &machine.Request{Env: []string{"QUERY_STRING=text"}}); res.Outcome != machine.Served || !strings.HasSuffix(out, "ran=42\n") {
		t.Fatalf("control: %v %q", res.Err(), out)
	}
}

func inCode(im *Image, addr uint64) bool {
	for _, s := range im.elf.segments {
		if s.flags&pfX != 0 && addr >= s.vaddr && addr < s.vaddr+s.memsz {
			return true
		}
	}
	return false
}

// prepareELF prepares an image built by the test itself.
func prepareELF(t testing.TB, elf []byte, l machine.Limits) *Image {
	t.Helper()
	kvmtest.Require(t)
	im, err := Prepare(elf, l)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// A host whose KVM does not offer NX is refused at prepare with a clear
// error, rather than failing every KVM_SET_SREGS with EINVAL.
func TestCPUIDHasNX(t *testing.T) {
	table := func(entries ...kvm.CPUIDEntry2) []byte {
		hdr := int(unsafe.Sizeof(kvm.CPUID2{}))
		b := make([]byte, hdr+len(entries)*int(unsafe.Sizeof(kvm.CPUIDEntry2{})))
		copy(unsafe.Slice((*kvm.CPUIDEntry2)(unsafe.Pointer(&b[hdr])), len(entries)), entries)
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want bool
	}{
		{"empty", nil, false},
		{"no extended leaf", table(kvm.CPUIDEntry2{Function: 1, EDX: 1 << 20}), false},
		{"NX clear", table(kvm.CPUIDEntry2{Function: 1}, kvm.CPUIDEntry2{Function: 0x80000001, EDX: 1 << 29}), false},
		{"NX set", table(kvm.CPUIDEntry2{Function: 1}, kvm.CPUIDEntry2{Function: 0x80000001, EDX: 1<<29 | 1<<20}), true},
	}
	for _, c := range cases {
		if got := cpuidHasNX(c.b); got != c.want {
			t.Errorf("%s: cpuidHasNX = %v, want %v", c.name, got, c.want)
		}
	}
}
