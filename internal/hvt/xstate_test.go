package hvt

import (
	"strconv"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/machine"
)

// xstateGuest reports the extended register state it finds at entry to
// main, then leaves a pattern in every register of that kind, so that a
// monitor reusing vCPU state would show it to the next request. Modes are
// separate requests because an instruction the CPU refuses at CPL3 ends
// the machine with a fault. libdust is built for baseline x86-64, whose
// legacy SSE instructions leave the upper halves of the YMM/ZMM registers,
// ZMM16-31 and the opmask registers untouched, so those must be zero here.
const xstateGuest = `
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { uint64_t q[4]; } u256;
static u256 v[32];
static uint64_t k[8];

#define Y(n) __asm__ volatile("vextractf128 $1, %%ymm" #n ", %0" : "=m"(v[n]))
#define ZH(n) __asm__ volatile("vextracti64x4 $1, %%zmm" #n ", %0" : "=m"(v[n]))
#define ZL(n) __asm__ volatile("vmovdqu64 %%zmm" #n ", %0" : "=m"(*(uint64_t (*)[8])&v[n - 16]))
#define K(n) __asm__ volatile("kmovw %%k" #n ", %%eax; movq %%rax, %0" : "=m"(k[n]) :: "rax")
#define FY(n) __asm__ volatile("vbroadcastss %0, %%ymm" #n :: "m"(pat))
#define FZ(n) __asm__ volatile("vpternlogd $0xff, %zmm" #n ", %zmm" #n ", %zmm" #n)
#define FK(n) __asm__ volatile("kxnorw %k0, %k0, %k" #n)

static const float pat = 1.5f;

static int nonzero(const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return 1;
	return 0;
}

__attribute__((noinline)) static void fill_avx(void)
{
	FY(0); FY(1); FY(2); FY(3); FY(4); FY(5); FY(6); FY(7);
	FY(8); FY(9); FY(10); FY(11); FY(12); FY(13); FY(14); FY(15);
}

__attribute__((noinline)) static void fill_avx512(void)
{
	FZ(0); FZ(1); FZ(2); FZ(3); FZ(4); FZ(5); FZ(6); FZ(7);
	FZ(8); FZ(9); FZ(10); FZ(11); FZ(12); FZ(13); FZ(14); FZ(15);
	FZ(16); FZ(17); FZ(18); FZ(19); FZ(20); FZ(21); FZ(22); FZ(23);
	FZ(24); FZ(25); FZ(26); FZ(27); FZ(28); FZ(29); FZ(30); FZ(31);
	FK(0); FK(1); FK(2); FK(3); FK(4); FK(5); FK(6); FK(7);
}

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

int main(void)
{
	const char *q = getenv("QUERY_STRING");
	printf("Content-Type: text/plain\r\n\r\n");
	fflush(stdout);
	if (!strcmp(q, "cpuid")) {
		uint32_t a[4], b[4], c[4], d[4];
		cpuid(1, 0, a);
		cpuid(7, 0, b);
		cpuid(0xd, 0, c);
		cpuid(0x80000001, 0, d);
		printf("1.ecx=%u 1.edx=%u 7.ebx=%u 7.ecx=%u 7.edx=%u d.eax=%u 80000001.edx=%u\n",
		       a[2], a[3], b[1], b[2], b[3], c[0], d[3]);
	} else if (!strcmp(q, "sse")) {
		uint16_t fcw;
		uint32_t mxcsr, nfcw = 0x0C7F, nmx = 0x9F80 | 0x6000;
		__asm__ volatile("fnstcw %0; stmxcsr %1" : "=m"(fcw), "=m"(mxcsr));
		printf("fcw=%u mxcsr=%u\n", fcw, mxcsr);
		__asm__ volatile("fldcw %0; ldmxcsr %1" :: "m"(nfcw), "m"(nmx));
	} else if (!strcmp(q, "xgetbv")) {
		uint32_t lo, hi;
		__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
		printf("xcr0=%u\n", lo);
	} else if (!strcmp(q, "avx")) {
		Y(0); Y(1); Y(2); Y(3); Y(4); Y(5); Y(6); Y(7);
		Y(8); Y(9); Y(10); Y(11); Y(12); Y(13); Y(14); Y(15);
		printf("dirty=%d\n", nonzero(v, 16 * sizeof v[0]));
		fill_avx();
	} else if (!strcmp(q, "avx512")) {
		ZH(0); ZH(1); ZH(2); ZH(3); ZH(4); ZH(5); ZH(6); ZH(7);
		ZH(8); ZH(9); ZH(10); ZH(11); ZH(12); ZH(13); ZH(14); ZH(15);
		int d = nonzero(v, 16 * sizeof v[0]);
		ZL(16); ZL(17); ZL(18); ZL(19); ZL(20); ZL(21); ZL(22); ZL(23);
		ZL(24); ZL(25); ZL(26); ZL(27); ZL(28); ZL(29); ZL(30); ZL(31);
		K(0); K(1); K(2); K(3); K(4); K(5); K(6); K(7);
		printf("dirty=%d\n", d || nonzero(v, sizeof v) || nonzero(k, sizeof k));
		fill_avx512();
	}
	return 0;
}
`

// Every request gets a brand-new vCPU, whose FPU, SSE and extended (XSAVE)
// state KVM initialises. Whatever extended instructions the host lets a
// CPL3 guest execute, a request never sees the registers an earlier one
// left: the second run of each mode finds the same reset values as the
// first. Instructions the CPU refuses here end in a fault, which is fine.
func TestExtendedStateStartsClean(t *testing.T) {
	im := prepareELF(t, cGuestELF(t, "xstate", xstateGuest), machine.Limits{})
	run := func(mode string) (machine.Result, string) {
		res, out, _ := runOnce(t, im, &machine.Request{Env: []string{"QUERY_STRING=" + mode}})
		_, body := splitCGI(t, out)
		return res, strings.TrimSpace(body)
	}
	res, body := run("cpuid")
	if res.Outcome != machine.Served {
		t.Fatalf("cpuid: %v", res.Err())
	}
	t.Logf("guest CPUID: %s", body)
	f := map[string]uint64{}
	for _, kv := range strings.Fields(body) {
		k, v, _ := strings.Cut(kv, "=")
		f[k], _ = strconv.ParseUint(v, 10, 32)
	}
	if f["80000001.edx"]&(1<<20) == 0 {
		t.Errorf("the guest CPUID does not advertise NX, which its page tables use")
	}
	if f["1.edx"]&(1<<26) == 0 {
		t.Errorf("the guest CPUID does not advertise SSE2, the ABI baseline")
	}
	for _, mode := range []string{"sse", "xgetbv", "avx", "avx512"} {
		for i := 0; i < 2; i++ {
			res, body := run(mode)
			if res.Outcome == machine.Fault {
				t.Logf("%s: refused at CPL3 here (%v)", mode, res.Err())
				if mode == "sse" {
					t.Fatal("SSE, the ABI baseline, faults")
				}
				break
			}
			if res.Outcome != machine.Served {
				t.Fatalf("%s: %v", mode, res.Err())
			}
			t.Logf("%s run %d: %s", mode, i+1, body)
			switch mode {
			case "sse":
				if body != "fcw=895 mxcsr=8064" { // 0x37F, 0x1F80: the reset values
					t.Errorf("run %d: x87/SSE control state %q, want the reset values", i+1, body)
				}
			case "avx", "avx512":
				if body != "dirty=0" {
					t.Errorf("run %d: %s registers not at their reset value: %q", i+1, mode, body)
				}
			}
		}
	}
}
