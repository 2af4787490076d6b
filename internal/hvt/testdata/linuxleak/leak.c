/*
 * Leak adversary and scanner for Linux guests on restored machines
 * (linux_leak_test.go), built with gcc -static, -static-pie and musl-gcc.
 *
 * Every request first scans: every byte it can read (the ranges the test
 * names: segments, the whole heap, the whole stack region, the stub page)
 * for the previous request's canary, the registers as the monitor handed
 * them over (recorded by entry.S before libc ran), and what the monitor
 * keeps per process (break, next mmap, /tmp, descriptors, signal state,
 * umask, cwd, limits); it prints all of it for the test to compare with a
 * brand-new machine's. Then, if asked, it plants a new canary everywhere
 * it can write and leaves in the way the query names.
 *
 * QUERY_STRING, numbers in hex: d=<prev canary ^ K> c=<canary> m=<tail>
 * t=<threads> caps= fill=<0 all, 1 one word per page> r=<rflags>
 * s=<selectors> fcw= mx= big= R=<lo-hi.lo-hi...> readable ranges,
 * W=<...> writable ranges but the stack, S=<lo-hi> the stack region.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define K 0x9e3779b97f4a7c15ull
#define CAP_AVX    1
#define CAP_AVX512 2
#define MAXFOUND   8
#define MAXR       16

struct final {
	uint64_t canary, stack_lo, stack_hi, slot, mode, caps, sels, fs, gs, big, heap;
};
_Noreturn void plant_final(const struct final *f);
long leak_clone(uint64_t flags, void *stack, uint32_t *word, uint64_t canary, uint64_t tls);
extern uint64_t entry_regs[17], entry_fsgs[2], entry_tsc;
extern uint16_t entry_sels[6];
extern unsigned char entry_fx[512], entry_xs[4096];
extern uint32_t entry_xcr0, entry_have_xs, entry_have_fsgs;

/* Raw system calls: libc wrappers may filter or cache what the monitor
 * answers. */
static long sc(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
	return r;
}
#define sc0(n) sc(n, 0, 0, 0, 0, 0, 0)
#define sc1(n, a) sc(n, (long)(a), 0, 0, 0, 0, 0)
#define sc2(n, a, b) sc(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define sc3(n, a, b, c) sc(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define sc4(n, a, b, c, d) sc(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define sc6(n, a, b, c, d, e, f) sc(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

static uint64_t arg(const char *q, const char *key)
{
	size_t n = strlen(key);
	for (const char *p = q; p && *p; p = strchr(p, '&'), p = p ? p + 1 : p)
		if (!strncmp(p, key, n) && p[n] == '=')
			return strtoull(p + n + 1, NULL, 16);
	return 0;
}

/* ranges parses "lo-hi.lo-hi" after key= into r; returns the count. */
static int ranges(const char *q, const char *key, uint64_t r[][2])
{
	size_t n = strlen(key);
	for (const char *p = q; p && *p; p = strchr(p, '&'), p = p ? p + 1 : p) {
		if (strncmp(p, key, n) || p[n] != '=')
			continue;
		int k = 0;
		char *s = (char *)p + n + 1;
		while (k < MAXR && *s && *s != '&') {
			r[k][0] = strtoull(s, &s, 16);
			if (*s == '-')
				s++;
			r[k][1] = strtoull(s, &s, 16);
			k++;
			if (*s == '.')
				s++;
		}
		return k;
	}
	return 0;
}

static uint64_t found, found_at[MAXFOUND];

/* The barrier on k keeps d ^ K from being folded into one constant the
 * compiler might spill to the stack, where the scan would find it. */
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

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static int tmp_entries(void)
{
	int fd = (int)sc3(257, -100, "/tmp", 0200000 /* O_DIRECTORY */);
	if (fd < 0)
		return fd;
	static char buf[8192];
	int n = 0;
	long got;
	while ((got = sc3(217, fd, buf, sizeof buf)) > 0) {
		for (long off = 0; off < got;) {
			unsigned short reclen;
			memcpy(&reclen, buf + off + 16, 2);
			const char *name = buf + off + 19;
			if (strcmp(name, ".") && strcmp(name, ".."))
				n++;
			off += reclen;
		}
	}
	sc1(3, fd);
	return n;
}

static void report(const char *q, char **envp)
{
	uint64_t d = arg(q, "d");
	printf("state");
	for (int i = 0; i < 16; i++)
		if (i != 7) /* RSP: below this request's own argv and environment */
			printf(" r%d=%lx", i, (unsigned long)entry_regs[i]);
	printf(" rflags=%lx cs=%x ds=%x es=%x fs=%x gs=%x ss=%x", (unsigned long)entry_regs[16],
	       entry_sels[0], entry_sels[1], entry_sels[2], entry_sels[3], entry_sels[4], entry_sels[5]);
	hex("fxctl", entry_fx, 32);
	hex("fxst", entry_fx + 32, 128);
	hex("fxxmm", entry_fx + 160, 256);
	if (entry_have_xs) {
		uint64_t bv;
		memcpy(&bv, entry_xs + 512, 8);
		printf(" xcr0=%x xstate_bv=%lx", entry_xcr0, (unsigned long)bv);
		for (unsigned c = 2; c <= 7; c++) {
			if (!(entry_xcr0 & (1u << c)))
				continue;
			uint32_t r[4];
			cpuid(0xd, c, r);
			if (r[1] + r[0] > 4096)
				continue;
			unsigned nz = 0;
			for (uint32_t i = 0; i < r[0]; i++)
				nz += entry_xs[r[1] + i] != 0;
			printf(" x%u_hash=%lx x%u_nonzero=%u", c, (unsigned long)fnv(entry_xs + r[1], r[0]), c, nz);
		}
	}
	if (entry_have_fsgs)
		printf(" fsbase=%lx gsbase=%lx", (unsigned long)entry_fsgs[0], (unsigned long)entry_fsgs[1]);

	/* What the monitor keeps per process. */
	long brk0 = sc1(12, 0);
	long mm = sc6(9, 0, 65536, 3, 0x22, -1, 0);
	sc2(11, mm, 65536);
	int fds = 0;
	for (int fd = 3; fd < 1024; fd++)
		fds += sc2(72, fd, 1 /* F_GETFD */) >= 0;
	uint64_t act[4] = {0}, mask = 0, alt[3] = {0}, lim[2] = {0}, fsb = 0;
	sc4(13, 10 /* SIGUSR1 */, 0, act, 8);
	sc4(14, 0, 0, &mask, 8);
	sc2(131, 0, alt);
	sc4(302, 0, 7 /* RLIMIT_NOFILE */, 0, lim);
	sc2(158, 0x1003 /* ARCH_GET_FS */, &fsb);
	long um = sc1(95, 022);
	char cwd[256] = {0};
	sc2(79, cwd, sizeof cwd);
	printf(" brk=%lx mmap=%lx tmp=%d fds=%d usr1=%lx,%lx,%lx sigmask=%lx altstack=%lx,%lx,%lx nofile=%lx,%lx umask=%lo cwd=%s archfs=%lx tid=%ld",
	       brk0, mm, tmp_entries(), fds, (unsigned long)act[0], (unsigned long)act[1], (unsigned long)act[3],
	       (unsigned long)mask, (unsigned long)alt[0], (unsigned long)alt[1], (unsigned long)alt[2],
	       (unsigned long)lim[0], (unsigned long)lim[1], um, cwd, (unsigned long)fsb, sc0(186));
	printf("\n");

	if (d) {
		uint64_t r[MAXR][2];
		int n = ranges(q, "R", r);
		for (int i = 0; i < n; i++)
			scan(r[i][0], r[i][1], d);
	}
	printf("scan found=%lu at=", (unsigned long)found);
	for (uint64_t i = 0; i < found && i < MAXFOUND; i++)
		printf("%lx,", (unsigned long)found_at[i]);
	printf("\n");

	/* AT_RANDOM from the initial stack, past envp. */
	char **e = envp;
	while (*e)
		e++;
	uint64_t *auxv = (uint64_t *)(e + 1);
	const unsigned char *at_random = 0;
	for (; auxv[0]; auxv += 2)
		if (auxv[0] == 25)
			at_random = (const unsigned char *)(uintptr_t)auxv[1];
	unsigned char gen[32];
	sc3(318, gen, sizeof gen, 0);
	printf("rand");
	if (at_random)
		hex("boot", at_random, 16);
	hex("gen", gen, sizeof gen);
	printf("\ntsc start=%lu hz=0\n", (unsigned long)entry_tsc);
}

/* One word per page, or every word: rep stosq, not memset, which reads
 * libc's tunables from the very .data being overwritten. */
static void fill(uint64_t lo, uint64_t hi, uint64_t c, int sparse)
{
	if (sparse) {
		for (uint64_t a = lo; a + 4096 <= hi; a += 4096)
			*(volatile uint64_t *)(uintptr_t)(a + ((c >> 3) & 0x1f8)) = c;
		return;
	}
	uint64_t n = (hi - lo) / 8;
	__asm__ volatile("cld; rep stosq" : "+D"(lo), "+c"(n) : "a"(c) : "memory");
}

static void plant_process(uint64_t c, uint64_t heap)
{
	char name[64];
	snprintf(name, sizeof name, "/tmp/leak-%016lx", (unsigned long)c);
	int fd = (int)sc4(257, -100, name, 0101 /* O_WRONLY|O_CREAT */, 0644);
	uint64_t words[512];
	for (int i = 0; i < 512; i++)
		words[i] = c;
	sc3(1, fd, words, sizeof words);
	sc3(33, fd, 100 + (c & 0x1ff), 0); /* dup2 */
	snprintf(name, sizeof name, "/tmp/dir-%016lx", (unsigned long)c);
	sc2(83, name, 0700);
	sc1(80, name); /* chdir */
	int p[2];
	sc2(293, p, 0);
	sc2(290, 0, 0);
	uint64_t act[4] = {c & 0x7ffffffffff0ull, 0x04000004 /* SA_SIGINFO|SA_RESTORER */, c & 0x7ffffffffff0ull, c};
	sc4(13, 10, act, 0, 8);
	uint64_t mask = c & ~((1ull << 5) | (1ull << 8) | (1ull << 18)); /* SIGABRT stays deliverable */
	sc4(14, 0, &mask, 0, 8);
	uint64_t alt[3] = {heap, 0, 65536};
	sc2(131, alt, 0);
	sc1(95, c & 0777);
	uint64_t lim[2] = {100 + (c & 0xff), 1024};
	sc4(302, 0, 7, lim, 0);
	sc1(218, heap + 64); /* set_tid_address */
	/* brk far up, maps small and large, a private map of the /tmp file. */
	long b = sc1(12, 0);
	sc1(12, b + (1 << 20) + (c & 0xff000));
	for (int i = 0; i < 16; i++)
		sc6(9, 0, 4096 << (i % 5), 3, 0x22, -1, 0);
	sc6(9, 0, 2 << 20, 3, 0x22, -1, 0);
	sc6(9, 0, 4096, 3, 0x02, fd, 0);
	void *big = malloc(300000);
	if (big)
		memset(big, 0x5a, 300000);
}

static void plant_threads(int n, uint64_t c)
{
	static uint32_t word; /* 0: the futex every thread waits on forever */
	for (int i = 0; i < n; i++) {
		char *stack = (char *)sc6(9, 0, 16384, 3, 0x22, -1, 0);
		if ((long)stack < 0)
			break;
		if (leak_clone(0xd0f00 /* VM FS FILES SIGHAND THREAD SYSVSEM SETTLS */, stack + 16384, &word, c,
		               (c & 0x00007ffffffff000ull) + i * 4096) < 0)
			break;
	}
	sc0(24); /* sched_yield: every new thread runs up to its wait */
}

int main(int argc, char **argv, char **envp)
{
	(void)argc;
	(void)argv;
	const char *q = getenv("QUERY_STRING");
	if (!q)
		q = "";
	printf("Content-Type: text/plain\r\n\r\n");
	if (!strncmp(q, "probe=", 6)) {
		uint64_t v;
		if (!strcmp(q, "probe=avx"))
			__asm__ volatile("vinsertf128 $1, %%xmm0, %%ymm0, %%ymm0" ::: "xmm0");
		else if (!strcmp(q, "probe=xsave"))
			__asm__ volatile("xgetbv" : "=a"(v) : "c"(0) : "rdx");
		else if (!strcmp(q, "probe=avx512"))
			__asm__ volatile("kmovw %%k1, %%eax; vpbroadcastq %%rax, %%zmm1" ::: "rax");
		else if (!strcmp(q, "probe=bw"))
			__asm__ volatile("kmovq %%k1, %%rax" ::: "rax");
		else if (!strcmp(q, "probe=fsgs"))
			__asm__ volatile("rdfsbase %0" : "=r"(v));
		printf("ok\n");
		return 0;
	}
	report(q, envp);
	uint64_t c = arg(q, "c");
	if (!c)
		return 0;
	fflush(stdout);

	uint64_t w[MAXR][2], s[MAXR][2];
	int nw = ranges(q, "W", w);
	ranges(q, "S", s);
	uint64_t heap = w[nw - 1][0], heap_end = w[nw - 1][1]; /* the heap is last */
	plant_process(c, heap);
	plant_threads((int)arg(q, "t"), c);

	struct final f = {
		.canary = c,
		.stack_lo = s[0][0],
		.stack_hi = s[0][1],
		.mode = arg(q, "m"),
		.caps = arg(q, "caps"),
		.sels = arg(q, "s"),
		.fs = heap + 65536 + (c & 0xfff0),
		.gs = (c >> 1) & 0x00007ffffffff000ull,
		.big = arg(q, "big"),
		.heap = heap,
	};
	uint64_t rflags = arg(q, "r"), fcw = arg(q, "fcw"), mx = arg(q, "mx");
	int sparse = (int)arg(q, "fill");
	for (int i = 0; i < nw; i++)
		fill(w[i][0], w[i][1], c, sparse && i == nw - 1);
	/* The TLS block FS will point at is canary whatever the fill did. */
	fill(f.fs & ~4095ull, (f.fs & ~4095ull) + 8192, c, 0);
	uint64_t *slot = (uint64_t *)(uintptr_t)(heap_end - 4096);
	slot[0] = rflags;
	slot[3] = c;
	slot[4] = (fcw & 0xffff) | mx << 32;
	f.slot = (uintptr_t)slot;
	plant_final(&f);
}
