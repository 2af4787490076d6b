/*
 * Leak adversary and scanner for the restore mode (leak_test.go).
 *
 * Every request first scans: all guest memory it can read for the
 * previous request's canary, and every register it can read as it was at
 * entry (crt0's record) or as libdust leaves it (x87, AVX upper halves,
 * AVX-512, opmask, selectors, segment bases). It prints what it found and
 * the raw state, so the test can compare it with a brand-new machine's.
 * Then, if asked, it plants a new canary everywhere it can write and
 * leaves in the way the query names (plant.S does the last part).
 *
 * Query: d=<prev canary ^ K> c=<canary> m=<tail> hc=<hypercall kind>
 * why=<exit reason> r=<rflags> s=<selectors> fcw= mx= caps= w=<first
 * writable byte> fill=<0 whole pages, 1 one word per page> big=<length>;
 * numbers in hex.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dust/dust.h>

#define K 0x9e3779b97f4a7c15ull /* the scanner holds prev^K, never prev itself */
#define CAP_AVX    1
#define CAP_AVX512 2
#define CAP_FSGS   4
#define MAXFOUND   8

struct final {
	uint64_t canary, stack_lo, stack_hi, slot, mode, caps, sels, fsbase, gsbase;
};
_Noreturn void plant_final(const struct final *f);
_Noreturn void __dust_start(const struct dust_boot_info *bi);
extern uint64_t resumed, resumed_rax, resumed_rflags;
extern uint64_t __dust_tsc_start; /* crt0: rdtsc before anything else ran */

static uint64_t arg(const char *q, const char *key)
{
	size_t n = strlen(key);
	for (const char *p = q; p && *p; p = strchr(p, '&'), p = p ? p + 1 : p)
		if (!strncmp(p, key, n) && p[n] == '=')
			return strtoull(p + n + 1, NULL, 16);
	return 0;
}

static uint64_t found, found_at[MAXFOUND];

/* The comparison keeps prev out of memory and registers: the barrier on
 * k stops the compiler from folding d ^ K into one constant it might
 * spill to the stack, where the scan would find it. */
__attribute__((noinline)) static void scan(uint64_t lo, uint64_t hi, uint64_t d)
{
	for (const volatile uint64_t *w = (const uint64_t *)(uintptr_t)lo; (uintptr_t)w < hi; w++) {
		uint64_t k = K;
		__asm__("" : "+r"(k));
		if ((*w ^ k) == d) {
			if (found < MAXFOUND)
				found_at[found] = (uintptr_t)w;
			found++;
		}
	}
}

static uint64_t fnv(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static void hex(const char *name, const void *p, size_t n)
{
	const unsigned char *b = p;
	printf(" %s=", name);
	for (size_t i = 0; i < n; i++)
		printf("%02x", b[i]);
}

static unsigned char fx[512] __attribute__((aligned(64)));
static unsigned char xs[4096] __attribute__((aligned(64)));

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

/* The extended state as XSAVE sees it: which components are in use and
 * a hash and the non-zero byte count of each one libdust never touches. */
static void xstate(uint64_t d, unsigned caps)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	memset(xs, 0, sizeof xs);
	__asm__ volatile("xsave %0" : "=m"(xs) : "a"(lo), "d"(hi) : "memory");
	uint64_t bv;
	memcpy(&bv, xs + 512, 8);
	printf(" xcr0=%x xstate_bv=%lx", lo, (unsigned long)bv);
	for (unsigned c = 2; c <= 7; c++) {
		if (!(lo & (1u << c)) || (c >= 5 && !(caps & CAP_AVX512)))
			continue;
		uint32_t r[4];
		cpuid(0xd, c, r);
		if (r[1] + r[0] > sizeof xs)
			continue;
		unsigned nz = 0;
		for (uint32_t i = 0; i < r[0]; i++)
			nz += xs[r[1] + i] != 0;
		printf(" x%u_hash=%lx x%u_nonzero=%u", c, (unsigned long)fnv(xs + r[1], r[0]), c, nz);
	}
	if (d)
		scan((uintptr_t)xs, (uintptr_t)xs + sizeof xs, d);
}

static void report(const struct dust_boot_info *bi, const char *q, unsigned caps)
{
	uint64_t d = arg(q, "d");
	const uint64_t *r = __dust_entry_regs;
	uint16_t sel[6];
	__asm__ volatile("mov %%cs, %0; mov %%ds, %1; mov %%es, %2; mov %%fs, %3; mov %%gs, %4; mov %%ss, %5"
	                 : "=m"(sel[0]), "=m"(sel[1]), "=m"(sel[2]), "=m"(sel[3]), "=m"(sel[4]), "=m"(sel[5]));
	memset(fx, 0, sizeof fx);
	__asm__ volatile("fxsave64 %0" : "=m"(fx));

	printf("state");
	for (int i = 0; i < DUST_ENTRY_NREGS; i++)
		printf(" r%d=%lx", i, (unsigned long)r[i]);
	printf(" cs=%x ds=%x es=%x fs=%x gs=%x ss=%x", sel[0], sel[1], sel[2], sel[3], sel[4], sel[5]);
	/* The x87 part of the FXSAVE image: control, status, tag, opcode,
	 * last instruction and operand pointers, ST0-7 (the XMM registers
	 * libdust's own code has used by now; crt0 recorded them). */
	hex("fxctl", fx, 32);
	hex("fxst", fx + 32, 128);
	if (caps & CAP_FSGS) {
		uint64_t fsb, gsb;
		__asm__ volatile("rdfsbase %0; rdgsbase %1" : "=r"(fsb), "=r"(gsb));
		printf(" fsbase=%lx gsbase=%lx", (unsigned long)fsb, (unsigned long)gsb);
	}
	if (caps & CAP_AVX)
		xstate(d, caps);
	printf("\n");

	/* Every readable byte: the warm-up stub page, boot info and request,
	 * the image and heap, and the whole stack region above the guard. */
	if (d) {
		scan(0xF000, 0x10000, d);
		scan(DUST_BOOT_INFO, DUST_IMAGE_BASE, d);
		scan(DUST_IMAGE_BASE, bi->heap_end, d);
		scan(bi->heap_end + 4096, bi->mem_size, d);
	}
	printf("scan found=%lu at=", (unsigned long)found);
	for (uint64_t i = 0; i < found && i < MAXFOUND; i++)
		printf("%lx,", (unsigned long)found_at[i]);
	printf(" bytes=%lx\n", (unsigned long)(bi->mem_size - 0xF000 - 4096));

	unsigned char gen[32];
	dust_random(gen, sizeof gen);
	printf("rand");
	hex("boot", bi->random, sizeof bi->random);
	hex("gen", gen, sizeof gen);
	printf("\ntsc start=%lu hz=%lu\n", (unsigned long)__dust_tsc_start, (unsigned long)bi->tsc_hz);
	if (resumed)
		printf("resumed rax=%lx rflags=%lx\n", (unsigned long)resumed_rax, (unsigned long)resumed_rflags);
}

/* Guest memory the planter writes with rep stosq or one word per page. */
static void fill(uint64_t lo, uint64_t hi, uint64_t c, int sparse)
{
	if (sparse) {
		for (uint64_t a = lo; a < hi; a += 4096)
			*(volatile uint64_t *)(uintptr_t)(a + ((c >> 3) & 0x1f8)) = c;
		return;
	}
	uint64_t n = (hi - lo) / 8;
	__asm__ volatile("cld; rep stosq" : "+D"(lo), "+c"(n) : "a"(c) : "memory");
}

enum { HC_EXIT, HC_OUT, HC_LOG, HC_SPIN, HC_PORT, HC_BADPTR };

int main(void)
{
	const struct dust_boot_info *bi = dust_boot_info();
	const char *q = getenv("QUERY_STRING");
	if (!q)
		q = "";
	unsigned caps = (unsigned)arg(q, "caps");
	printf("Content-Type: text/plain\r\n\r\n");
	if (!strncmp(q, "probe=", 6)) {
		/* Each probe may fault: the test learns what this CPU runs at CPL3. */
		uint64_t v;
		if (!strcmp(q, "probe=avx"))
			__asm__ volatile("xgetbv; vinsertf128 $1, %%xmm0, %%ymm0, %%ymm0" ::"c"(0) : "rax", "rdx");
		else if (!strcmp(q, "probe=avx512"))
			__asm__ volatile("kmovw %%k1, %%eax; vpbroadcastq %%rax, %%zmm1" ::: "rax");
		else if (!strcmp(q, "probe=bw"))
			__asm__ volatile("kmovq %%k1, %%rax" ::: "rax");
		else if (!strcmp(q, "probe=fsgs"))
			__asm__ volatile("rdfsbase %0" : "=r"(v));
		printf("ok\n");
		return 0;
	}
	report(bi, q, caps);

	uint64_t c = arg(q, "c");
	if (!c)
		return 0;
	unsigned mode = (unsigned)arg(q, "m");
	fflush(stdout);
	fflush(stderr);
	if (mode == 0x100) {
		/* libdust's own memory-limit exit: allocate and mark until
		 * malloc ends the machine. */
		for (;;) {
			uint64_t *p = malloc(60 << 10);
			for (size_t i = 0; i < (60 << 10) / 8; i++)
				p[i] = c;
		}
	}
	if (mode == 0x101) {
		/* An ordinary exit through libdust, with the heap marked. */
		fill(bi->heap_start, bi->heap_end, c, 0);
		return 0;
	}

	/* Everything needed later lives in f and slot, outside what the fills
	 * below overwrite first (data, BSS, heap); plant_final copies f into
	 * registers before it overwrites the stack, f included. */
	struct final f = {
		.canary = c,
		.stack_lo = bi->heap_end + 4096,
		.stack_hi = bi->mem_size,
		.mode = mode,
		.caps = caps,
		.sels = arg(q, "s"),
		.fsbase = c & 0x00007ffffffff000ull,
		.gsbase = (c >> 1) & 0x00007ffffffff000ull,
	};
	uint64_t heap = bi->heap_start, heap_end = bi->heap_end, lo = arg(q, "w");
	uint64_t hc = arg(q, "hc"), why = arg(q, "why"), big = arg(q, "big");
	uint64_t rflags = arg(q, "r"), fcw = arg(q, "fcw"), mx = arg(q, "mx");
	int sparse = (int)arg(q, "fill");
	uint64_t hi32 = c & 0xffffffff00000000ull;

	fill(lo, heap_end, c, sparse);

	/* Hypercall arguments at a canary-chosen place in the heap, so that
	 * the pointer a pending I/O would leave behind carries canary bits. */
	uint64_t *args = (uint64_t *)(uintptr_t)(heap + 4096 + ((c & 0xffff) << 3));
	uint64_t *slot = (uint64_t *)(uintptr_t)(heap + 2048);
	uint64_t port = DUST_PORT_BASE + DUST_HC_EXIT;
	switch (hc) {
	case HC_EXIT:
	case HC_BADPTR:
		args[0] = c, args[1] = why, args[2] = args[3] = args[4] = args[5] = 0;
		break;
	case HC_OUT:
	case HC_LOG:
	case HC_SPIN:
		args[0] = hc == HC_OUT ? DUST_FD_STDOUT : DUST_FD_STDERR;
		args[1] = heap;
		args[2] = hc == HC_SPIN ? 8 : big;
		port = DUST_PORT_BASE + DUST_HC_WRITE;
		break;
	case HC_PORT:
		port = DUST_PORT_BASE + 0x77;
		break;
	}
	if (mode == 13) {
		/* A WRITE of nothing leaves args' address in KVM's I/O data page
		 * just before the IN. */
		uint64_t *w = args + 8;
		w[0] = DUST_FD_STDERR, w[1] = heap, w[2] = 0;
		dust_hypercall(DUST_HC_WRITE, w);
	}
	slot[0] = rflags;
	slot[1] = hi32 | (hc == HC_BADPTR ? 0x8 : (uint32_t)(uintptr_t)args);
	slot[2] = hi32 | port;
	slot[3] = c;
	slot[4] = (fcw & 0xffff) | mx << 32;
	f.slot = (uintptr_t)slot;
	plant_final(&f);
}
