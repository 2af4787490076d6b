/*
 * Host-side tests of libdust's portable parts. The library sources are
 * compiled for the host with every symbol they define renamed to dust_*
 * (see Makefile), so they can be compared with glibc in one process.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stddef.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include "../include/dust/abi.h"

int dust_snprintf(char *, size_t, const char *, ...);
size_t dust_strlen(const char *);
size_t dust_strnlen(const char *, size_t);
void *dust_memmove(void *, const void *, size_t);
void *dust_memcpy(void *, const void *, size_t);
void *dust_memset(void *, int, size_t);
int dust_memcmp(const void *, const void *, size_t);
void *dust_memchr(const void *, int, size_t);
int dust_strcmp(const char *, const char *);
int dust_strncmp(const char *, const char *, size_t);
int dust_strcasecmp(const char *, const char *);
int dust_strncasecmp(const char *, const char *, size_t);
char *dust_strchr(const char *, int);
char *dust_strrchr(const char *, int);
char *dust_strstr(const char *, const char *);
char *dust_strncpy(char *, const char *, size_t);
char *dust_strncat(char *, const char *, size_t);
char *dust_strcat(char *, const char *);
char *dust_strcpy(char *, const char *);
char *dust_strdup(const char *);
char *dust_strndup(const char *, size_t);
size_t dust_strspn(const char *, const char *);
size_t dust_strcspn(const char *, const char *);
char *dust_strpbrk(const char *, const char *);
char *dust_strtok_r(char *, const char *, char **);
long dust_strtol(const char *, char **, int);
unsigned long dust_strtoul(const char *, char **, int);
long long dust_strtoll(const char *, char **, int);
unsigned long long dust_strtoull(const char *, char **, int);
int dust_atoi(const char *);
extern int dust_errno;
void dust_qsort(void *, size_t, size_t, int (*)(const void *, const void *));
void *dust_bsearch(const void *, const void *, size_t, size_t, int (*)(const void *, const void *));
void dust___dust_heap_init(uintptr_t, uintptr_t);
void *dust_malloc(size_t);
void *dust_calloc(size_t, size_t);
void *dust_realloc(void *, size_t);
void *dust_aligned_alloc(size_t, size_t);
void dust_free(void *);
char *dust_getenv(const char *);
int dust_setenv(const char *, const char *, int);
int dust_unsetenv(const char *);
void dust___dust_chacha20_block(const uint32_t[8], uint32_t, const uint32_t[3], uint32_t[16]);
void dust___dust_random_init(const uint8_t[32]);
void dust_dust_random(void *, size_t);
uint32_t dust_arc4random_uniform(uint32_t);
struct tm *dust_gmtime_r(const time_t *, struct tm *);
int dust_clock_gettime(int, struct timespec *);
int dust_isspace(int), dust_isalnum(int), dust_ispunct(int), dust_isxdigit(int), dust_toupper(int);

/* What crt0/start.c provide in a real guest. */
const struct dust_boot_info *__dust_boot;
uint64_t __dust_tsc_start;
void __dust_panic(const char *msg)
{
	fprintf(stderr, "panic: %s", msg);
	abort();
}

static int failures, checks;

#define CHECK(cond, ...) do { \
	checks++; \
	if (!(cond)) { \
		failures++; \
		fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
		fprintf(stderr, __VA_ARGS__); \
		fputc('\n', stderr); \
	} \
} while (0)

#pragma GCC diagnostic ignored "-Wformat"
#pragma GCC diagnostic ignored "-Wformat-extra-args"
#pragma GCC diagnostic ignored "-Wformat-truncation"
#pragma GCC diagnostic ignored "-Wformat-overflow"

#define F(...) do { \
	char a[512], b[512]; \
	int ra = dust_snprintf(a, sizeof a, __VA_ARGS__); \
	int rb = snprintf(b, sizeof b, __VA_ARGS__); \
	CHECK(ra == rb && strcmp(a, b) == 0, "printf(%s): got \"%s\" (%d), want \"%s\" (%d)", #__VA_ARGS__, a, ra, b, rb); \
} while (0)

static void test_printf(void)
{
	int dummy;
	F("plain text");
	F("%d|%i|%d|%d", 0, -1, INT_MIN, INT_MAX);
	F("%5d|%-5d|%05d|%-05d|%+d|% d|%+ d", 42, 42, 42, 42, 5, 5, 5);
	F("%.3d|%.0d|%5.0d|%-8.3d|%08.3d", 7, 0, 0, -7, 7);
	F("%x|%X|%#x|%#X|%#o|%o|%#x|%#o", 255, 255, 255, 255, 8, 8, 0, 0);
	F("%#.3o|%#5o|%#08x|%-#8x|", 8, 8, 0x1f, 0x1f);
	F("%lu|%ld|%lld|%llu|%lx", ULONG_MAX, LONG_MIN, LLONG_MIN, ULLONG_MAX, 0xdeadbeefcafeUL);
	F("%zu|%zd|%jd|%ju|%td", (size_t)-1, (ssize_t)-3, (intmax_t)INT64_MIN, (uintmax_t)UINT64_MAX, (ptrdiff_t)-9);
	F("%hhd|%hd|%hhu|%hu|%hhx", 300, 70000, 300, 70000, -1);
	F("%p|%20p|%-20p|", &dummy, &dummy, &dummy);
	F("%p|%10p", NULL, NULL);
	F("%s|%10s|%-10s|%.2s|%.0s|%10.1s|", "abc", "abc", "abc", "abc", "abc", "abc");
	F("%s|%.3s|%10s", (char *)NULL, (char *)NULL, (char *)NULL);
	F("%c|%3c|%-3c|%c", 'a', 'b', 'c', 0x80);
	F("%%|%5%|100%%");
	F("%*d|%-*d|%.*d|%*.*d", 5, 1, 5, 2, 3, 4, 6, 3, 5);
	F("%*d|%.*d|%.*s", -5, 1, -2, 7, -1, "abcdef");
	F("%f|%f|%f|%f", 0.0, 1.5, -2.25, 3.14159265358979);
	F("%f|%f|%f", 1e10, 1e-10, 123456789.123456789);
	F("%.0f|%.0f|%.0f|%.0f|%#.0f", 2.5, 3.5, 0.5, 1.5, 2.0);
	F("%.2f|%.1f|%.1f|%5.1f|%.3f", 1.005, 0.05, 0.25, 9.96, 2.0005);
	F("%.3e|%e|%E|%e|%.0e|%#.0e", 12345.678, 0.0, 1e-300, 5e-324, 15.0, 15.0);
	F("%e|%e|%.10e", 1e300, -123.456e-7, 1.0 / 3);
	F("%g|%g|%g|%g|%g|%g", 100000.0, 1e6, 0.0001, 0.00001, 123.456, 0.0);
	F("%#g|%#g|%G|%g|%.3g|%.10g", 1.0, 0.0001, 1e-20, 1e20, 0.0009995, 1.0 / 3);
	F("%.17g|%.15g|%.0g|%.1g|%g", 0.1, 0.1, 12.0, 0.15, 2.5e-5);
	F("%10.3f|%-10.2e|%+08.2f|% .3g|%+g|%010.3e", 3.14159, 2.71828, -1.5, 1.0, 2.0, -6.02e23);
	F("%f|%F|%e|%g|%5f|%-6f|%06f", INFINITY, -INFINITY, NAN, INFINITY, NAN, INFINITY, -INFINITY);
	F("%f|%.2f|%f", 1e15, 123456789012.34567, 9007199254740993.0);
	F("%Lf|%Le", 1.25L, 1.25L);
	F("%d %s %c %x %.2f %5s|", 1, "two", '3', 4, 5.0, "six");
	F("%-+5d|%-+5d|%+.0d|% 05d", 3, -3, 0, 12);

	/* Truncation: the return value is the full length, the buffer ends
	 * with a NUL within its size. */
	char small[8] = "xxxxxxx";
	int r = dust_snprintf(small, 5, "%s-%d", "hello", 123);
	CHECK(r == 9 && strcmp(small, "hell") == 0, "truncation: %d \"%s\"", r, small);
	r = dust_snprintf(NULL, 0, "%d", 12345);
	CHECK(r == 5, "size 0: %d", r);
	small[0] = 'z';
	r = dust_snprintf(small, 1, "abc");
	CHECK(r == 3 && small[0] == 0, "size 1");
	/* Unknown conversions are copied through. */
	dust_snprintf(small, sizeof small, "%y%d", 1);
	CHECK(strcmp(small, "%y1") == 0, "unknown conversion: %s", small);
}

static void test_string(void)
{
	static char buf[256], b2[256];
	const char *samples[] = { "", "a", "ab", "hello world", "0123456789abcdefXYZ", "tab\there", "\xff\x80 high" };
	for (size_t i = 0; i < sizeof samples / sizeof *samples; i++) {
		for (int off = 0; off < 16; off++) {
			strcpy(buf + off, samples[i]);
			CHECK(dust_strlen(buf + off) == strlen(samples[i]), "strlen(%s) off %d", samples[i], off);
		}
		for (size_t j = 0; j < sizeof samples / sizeof *samples; j++) {
			const char *a = samples[i], *b = samples[j];
			int s1 = dust_strcmp(a, b), s2 = strcmp(a, b);
			CHECK((s1 > 0) == (s2 > 0) && (s1 < 0) == (s2 < 0), "strcmp(%s,%s)", a, b);
			for (size_t n = 0; n < 6; n++) {
				s1 = dust_strncmp(a, b, n), s2 = strncmp(a, b, n);
				CHECK((s1 > 0) == (s2 > 0) && (s1 < 0) == (s2 < 0), "strncmp(%s,%s,%zu)", a, b, n);
				s1 = dust_memcmp(a, b, n < strlen(a) && n < strlen(b) ? n : 0);
				s2 = memcmp(a, b, n < strlen(a) && n < strlen(b) ? n : 0);
				CHECK((s1 > 0) == (s2 > 0) && (s1 < 0) == (s2 < 0), "memcmp(%s,%s,%zu)", a, b, n);
			}
			CHECK(dust_strstr(a, b) == strstr(a, b), "strstr(%s,%s)", a, b);
			CHECK(dust_strspn(a, b) == strspn(a, b), "strspn(%s,%s)", a, b);
			CHECK(dust_strcspn(a, b) == strcspn(a, b), "strcspn(%s,%s)", a, b);
			CHECK(dust_strpbrk(a, b) == strpbrk(a, b), "strpbrk(%s,%s)", a, b);
		}
		for (int c = 0; c < 256; c += 5) {
			CHECK(dust_strchr(samples[i], c) == strchr(samples[i], c), "strchr %d", c);
			CHECK(dust_strrchr(samples[i], c) == strrchr(samples[i], c), "strrchr %d", c);
			CHECK(dust_memchr(samples[i], c, strlen(samples[i])) == memchr(samples[i], c, strlen(samples[i])), "memchr");
		}
	}
	CHECK(dust_strchr("abc", 0) != NULL && *dust_strchr("abc", 0) == 0, "strchr NUL");
	CHECK(dust_strcasecmp("HeLLo", "hello") == 0 && dust_strcasecmp("a", "B") < 0 && dust_strncasecmp("abX", "ABy", 2) == 0, "strcasecmp");
	CHECK(dust_strnlen("abcdef", 3) == 3 && dust_strnlen("ab", 9) == 2, "strnlen");

	/* memmove in both directions, all small overlaps. */
	for (int n = 0; n < 40; n++)
		for (int d = -20; d <= 20; d++) {
			for (int k = 0; k < 128; k++)
				buf[k] = b2[k] = (char)k;
			dust_memmove(buf + 40 + d, buf + 40, (size_t)n);
			memmove(b2 + 40 + d, b2 + 40, (size_t)n);
			CHECK(memcmp(buf, b2, 128) == 0, "memmove n=%d d=%d", n, d);
		}
	memset(buf, 'q', sizeof buf);
	CHECK(dust_memset(buf + 3, 'z', 100) == buf + 3 && buf[2] == 'q' && buf[3] == 'z' && buf[102] == 'z' && buf[103] == 'q', "memset");
	CHECK(dust_memcpy(b2, "abcdef", 7) == b2 && strcmp(b2, "abcdef") == 0, "memcpy");

	memset(buf, 'x', 16);
	dust_strncpy(buf, "abc", 8);
	CHECK(memcmp(buf, "abc\0\0\0\0\0xx", 10) == 0, "strncpy pads");
	dust_strcpy(buf, "foo");
	dust_strcat(buf, "bar");
	dust_strncat(buf, "bazqux", 3);
	CHECK(strcmp(buf, "foobarbaz") == 0, "strcat/strncat: %s", buf);

	char line[] = "  GET /path?x=1  HTTP/1.1 ", *save, *t;
	const char *want[] = { "GET", "/path?x=1", "HTTP/1.1" };
	int n = 0;
	for (t = dust_strtok_r(line, " ", &save); t; t = dust_strtok_r(NULL, " ", &save), n++)
		CHECK(n < 3 && strcmp(t, want[n]) == 0, "strtok_r token %d", n);
	CHECK(n == 3, "strtok_r count %d", n);
	char empty[] = "   ";
	CHECK(dust_strtok_r(empty, " ", &save) == NULL && dust_strtok_r(NULL, " ", &save) == NULL, "strtok_r empty");

	for (int c = -1; c < 256; c++) {
		CHECK(!dust_isspace(c) == !isspace(c) && !dust_isalnum(c) == !isalnum(c) &&
		      !dust_ispunct(c) == !ispunct(c) && !dust_isxdigit(c) == !isxdigit(c) &&
		      (c < 0 || c > 127 || dust_toupper(c) == toupper(c)), "ctype %d", c);
	}
}

static void test_strtol(void)
{
	const char *in[] = { "0", "42", "-42", "+7", "  \t12abc", "0x1f", "0X1F", "017", "08", "0x", "-0x10",
		"9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
		"18446744073709551615", "18446744073709551616", "-1", "zz", "", "  -", "z1", "1z", "111111111111111111111111111111111111" };
	int bases[] = { 0, 10, 16, 8, 2, 36 };
	for (size_t i = 0; i < sizeof in / sizeof *in; i++)
		for (size_t b = 0; b < sizeof bases / sizeof *bases; b++) {
			char *e1, *e2;
			dust_errno = 0, errno = 0;
			long v1 = dust_strtol(in[i], &e1, bases[b]);
			long v2 = strtol(in[i], &e2, bases[b]);
			CHECK(v1 == v2 && e1 == e2 && dust_errno == errno, "strtol(\"%s\", %d): %ld/%ld end %td/%td errno %d/%d",
			      in[i], bases[b], v1, v2, e1 - in[i], e2 - in[i], dust_errno, errno);
			dust_errno = 0, errno = 0;
			unsigned long u1 = dust_strtoul(in[i], &e1, bases[b]);
			unsigned long u2 = strtoul(in[i], &e2, bases[b]);
			CHECK(u1 == u2 && e1 == e2 && dust_errno == errno, "strtoul(\"%s\", %d): %lu/%lu", in[i], bases[b], u1, u2);
			dust_errno = 0, errno = 0;
			CHECK(dust_strtoll(in[i], &e1, bases[b]) == strtoll(in[i], &e2, bases[b]) && e1 == e2 && dust_errno == errno, "strtoll");
			dust_errno = 0, errno = 0;
			CHECK(dust_strtoull(in[i], &e1, bases[b]) == strtoull(in[i], &e2, bases[b]) && e1 == e2 && dust_errno == errno, "strtoull");
		}
	CHECK(dust_atoi(" -123x") == -123, "atoi");
}

static int cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

struct rec { char name[21]; long key; };

static int cmp_rec(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	return (x->key > y->key) - (x->key < y->key);
}

static void test_qsort(void)
{
	static int a[20000], b[20000];
	for (int kind = 0; kind < 6; kind++)
		for (int n = 0; n <= 20000; n = n < 40 ? n + 1 : n * 3) {
			for (int i = 0; i < n; i++) {
				switch (kind) {
				case 0: a[i] = rand(); break;
				case 1: a[i] = rand() % 4; break;
				case 2: a[i] = i; break;
				case 3: a[i] = n - i; break;
				case 4: a[i] = 7; break;
				default: a[i] = i % 2 ? i : -i; break; /* organ pipe-ish */
				}
				b[i] = a[i];
			}
			dust_qsort(a, (size_t)n, sizeof *a, cmp_int);
			qsort(b, (size_t)n, sizeof *b, cmp_int);
			CHECK(memcmp(a, b, (size_t)n * sizeof *a) == 0, "qsort kind %d n %d", kind, n);
			if (n > 0) {
				int key = b[n / 2];
				int *hit = dust_bsearch(&key, a, (size_t)n, sizeof *a, cmp_int);
				CHECK(hit && *hit == key, "bsearch");
				key = INT_MIN;
				CHECK(dust_bsearch(&key, a, (size_t)n, sizeof *a, cmp_int) == NULL || a[0] == INT_MIN, "bsearch miss");
			}
		}
	static struct rec r[5000];
	for (int i = 0; i < 5000; i++) {
		r[i].key = rand() % 1000;
		snprintf(r[i].name, sizeof r[i].name, "k%ld", r[i].key);
	}
	dust_qsort(r, 5000, sizeof *r, cmp_rec);
	int ok = 1;
	for (int i = 0; i < 5000; i++) {
		char nm[21];
		snprintf(nm, sizeof nm, "k%ld", r[i].key);
		ok &= strcmp(nm, r[i].name) == 0 && (i == 0 || r[i - 1].key <= r[i].key);
	}
	CHECK(ok, "qsort of 29-byte records");
}

static double secs(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void test_malloc(void)
{
	const size_t heap = 256u << 20;
	char *mem = mmap(NULL, heap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dust___dust_heap_init((uintptr_t)mem, (uintptr_t)mem + heap);

	enum { SLOTS = 4096 };
	static struct { unsigned char *p; size_t n; unsigned char tag; } s[SLOTS];
	int ok = 1;
	for (int iter = 0; iter < 400000 && ok; iter++) {
		int i = rand() % SLOTS;
		if (s[i].p) {
			for (size_t k = 0; k < s[i].n; k++)
				if (s[i].p[k] != s[i].tag) {
					ok = 0;
					break;
				}
			if (rand() % 3 == 0) {
				size_t n = (size_t)(rand() % 3 ? rand() % 2000 : rand() % 200000) + 1;
				s[i].p = dust_realloc(s[i].p, n);
				if (n > s[i].n)
					memset(s[i].p + s[i].n, s[i].tag, n - s[i].n);
				s[i].n = n;
			} else {
				dust_free(s[i].p);
				s[i].p = NULL;
			}
		} else {
			size_t n = (size_t)(rand() % 4 ? rand() % 512 : rand() % 100000);
			int z = rand() % 4 == 0;
			s[i].p = z ? dust_calloc(1, n) : dust_malloc(n);
			s[i].n = n;
			s[i].tag = (unsigned char)rand();
			if (z)
				for (size_t k = 0; k < n; k++)
					if (s[i].p[k]) {
						ok = 0;
						fprintf(stderr, "calloc not zero\n");
						break;
					}
			if ((uintptr_t)s[i].p % 16)
				ok = 0;
			memset(s[i].p, s[i].tag, n);
		}
	}
	CHECK(ok, "random malloc/realloc/free/calloc keep contents, alignment and zeroing");
	for (int i = 0; i < SLOTS; i++)
		dust_free(s[i].p);

	/* Everything freed must coalesce back into one block. */
	void *big = dust_malloc(heap - 4096);
	CHECK(big == mem + 16, "full coalescing: big block at %p, heap at %p", big, (void *)mem);
	dust_free(big);
	CHECK(dust_malloc(heap + 1) == NULL, "impossible size gives NULL");
	CHECK(dust_calloc(SIZE_MAX / 2, 3) == NULL, "calloc overflow gives NULL");

	for (size_t al = 32; al <= 8192; al *= 4) {
		void *p = dust_aligned_alloc(al, 100);
		void *q = dust_malloc(10);
		CHECK((uintptr_t)p % al == 0, "aligned_alloc %zu", al);
		dust_free(p);
		dust_free(q);
	}

	/* Many small blocks: must be linear, not quadratic. */
	enum { N = 1000000 };
	static void *ptrs[N];
	double t0 = secs();
	for (int i = 0; i < N; i++)
		ptrs[i] = dust_malloc(24 + (size_t)(i % 5) * 8);
	for (int i = 0; i < N; i += 2)
		dust_free(ptrs[i]);
	for (int i = 0; i < N; i += 2)
		ptrs[i] = dust_malloc(40);
	for (int i = 0; i < N; i++)
		dust_free(ptrs[i]);
	double t = secs() - t0;
	CHECK(t < 1.0, "2.5M malloc/free took %.3f s", t);
	printf("malloc: 1M malloc + 0.5M free/malloc + 1M free in %.1f ms\n", t * 1e3);
	big = dust_malloc(heap - 4096);
	CHECK(big == mem + 16, "coalescing after small-block churn");
	dust_free(big);

	/* calloc must zero memory that an earlier block dirtied. */
	unsigned char *d = dust_malloc(5000);
	memset(d, 0xAA, 5000);
	dust_free(d);
	unsigned char *z = dust_calloc(5000, 1);
	int zero = 1;
	for (int i = 0; i < 5000; i++)
		zero &= z[i] == 0;
	CHECK(zero, "calloc zeroes recycled memory");
	dust_free(z);

	/* realloc growing in place at the top keeps the pointer. */
	char *g = dust_malloc(100);
	char *g2 = dust_realloc(g, 100000);
	CHECK(g == g2, "realloc grows in place into top");
	dust_free(g2);

	char *sd = dust_strdup("duplicate me");
	char *sn = dust_strndup("duplicate me", 9);
	CHECK(strcmp(sd, "duplicate me") == 0 && strcmp(sn, "duplicate") == 0, "strdup/strndup");
	dust_free(sd);
	dust_free(sn);
	munmap(mem, heap);
}

static void test_env(void)
{
	const size_t heap = 1 << 20;
	char *mem = mmap(NULL, heap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dust___dust_heap_init((uintptr_t)mem, (uintptr_t)mem + heap);
	extern char **environ;
	static char *fake[] = { "REQUEST_METHOD=GET", "HTTP_HOST=example.com", "EMPTY=", NULL };
	char **saved = environ;
	environ = fake;
	CHECK(dust_getenv("REQUEST_METHOD") && strcmp(dust_getenv("REQUEST_METHOD"), "GET") == 0, "getenv");
	CHECK(dust_getenv("REQUEST") == NULL && dust_getenv("HTTP_HOST") && strcmp(dust_getenv("EMPTY"), "") == 0, "getenv prefix/empty");
	CHECK(dust_setenv("NEW", "1", 0) == 0 && strcmp(dust_getenv("NEW"), "1") == 0, "setenv new");
	CHECK(dust_setenv("NEW", "2", 0) == 0 && strcmp(dust_getenv("NEW"), "1") == 0, "setenv no overwrite");
	CHECK(dust_setenv("REQUEST_METHOD", "POST", 1) == 0 && strcmp(dust_getenv("REQUEST_METHOD"), "POST") == 0, "setenv overwrite");
	CHECK(dust_unsetenv("HTTP_HOST") == 0 && dust_getenv("HTTP_HOST") == NULL && dust_getenv("NEW"), "unsetenv");
	CHECK(dust_setenv("A=B", "x", 1) == -1, "setenv rejects '='");
	CHECK(strcmp(fake[0], "REQUEST_METHOD=GET") == 0, "original env untouched");
	environ = saved;
	munmap(mem, heap);
}

static void test_random(void)
{
	uint32_t key[8], nonce[3] = { 0x09000000, 0x4a000000, 0 }, out[16];
	for (int i = 0; i < 8; i++)
		key[i] = (uint32_t)(4 * i) | (uint32_t)(4 * i + 1) << 8 | (uint32_t)(4 * i + 2) << 16 | (uint32_t)(4 * i + 3) << 24;
	dust___dust_chacha20_block(key, 1, nonce, out);
	char hex[129];
	for (int i = 0; i < 64; i++)
		sprintf(hex + 2 * i, "%02x", ((unsigned char *)out)[i]);
	CHECK(strcmp(hex, "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
	                  "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e") == 0,
	      "ChaCha20 block (RFC 8439 2.3.2): %s", hex);

	uint8_t seed[32] = { 1 };
	dust___dust_random_init(seed);
	unsigned char a[100], b[37];
	dust_dust_random(a, sizeof a);
	dust_dust_random(b, sizeof b);
	int same = memcmp(a, a + 50, 37) == 0 || memcmp(a, b, 37) == 0;
	CHECK(!same, "random output does not repeat");
	int hist[10] = { 0 };
	for (int i = 0; i < 100000; i++)
		hist[dust_arc4random_uniform(10)]++;
	int okh = 1;
	for (int i = 0; i < 10; i++)
		okh &= hist[i] > 9500 && hist[i] < 10500;
	CHECK(okh, "arc4random_uniform is roughly uniform");
}

static void test_time(void)
{
	for (int i = 0; i < 100000; i++) {
		time_t t = (time_t)((long long)rand() * rand() % 20000000000LL) - 5000000000LL;
		struct tm x, y;
		dust_gmtime_r(&t, &x);
		gmtime_r(&t, &y);
		if (x.tm_year != y.tm_year || x.tm_mon != y.tm_mon || x.tm_mday != y.tm_mday || x.tm_hour != y.tm_hour ||
		    x.tm_min != y.tm_min || x.tm_sec != y.tm_sec || x.tm_wday != y.tm_wday || x.tm_yday != y.tm_yday) {
			CHECK(0, "gmtime_r(%lld)", (long long)t);
			break;
		}
	}
	/* clock_gettime from a fake boot info with a measured TSC rate. */
	static struct dust_boot_info bi;
	uint32_t lo, hi;
	struct timespec ts0, ts1;
	clock_gettime(CLOCK_MONOTONIC, &ts0);
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	uint64_t c0 = (uint64_t)hi << 32 | lo;
	do
		clock_gettime(CLOCK_MONOTONIC, &ts1);
	while ((ts1.tv_sec - ts0.tv_sec) * 1000000000L + ts1.tv_nsec - ts0.tv_nsec < 50000000L);
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	bi.tsc_hz = (((uint64_t)hi << 32 | lo) - c0) * 20;
	bi.realtime_ns = 1700000000ull * 1000000000ull;
	__dust_boot = &bi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	__dust_tsc_start = (uint64_t)hi << 32 | lo;
	struct timespec r0, r1, m;
	dust_clock_gettime(0, &r0);
	struct timespec nap = { 0, 30000000 };
	nanosleep(&nap, NULL);
	dust_clock_gettime(0, &r1);
	dust_clock_gettime(1, &m);
	double dt = (double)(r1.tv_sec - r0.tv_sec) + (double)(r1.tv_nsec - r0.tv_nsec) * 1e-9;
	CHECK(r0.tv_sec == 1700000000 && dt > 0.025 && dt < 0.2, "CLOCK_REALTIME advances: %.3f s", dt);
	CHECK(m.tv_sec == 0 && m.tv_nsec >= 30000000, "CLOCK_MONOTONIC counts from entry");
	bi.tsc_hz = 0;
	dust_clock_gettime(0, &r0);
	CHECK(r0.tv_sec == 1700000000 && r0.tv_nsec == 0, "tsc_hz 0: time stands still");
	__dust_boot = NULL;
}

int main(void)
{
	srand(12345);
	test_printf();
	test_string();
	test_strtol();
	test_qsort();
	test_malloc();
	test_env();
	test_random();
	test_time();
	printf("test_libc: %d checks, %d failures\n", checks, failures);
	return failures != 0;
}
