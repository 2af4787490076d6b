/*
 * libdust self-test, run inside a guest (under dustrun or the monitor).
 * Expects the body "line 1\nline 2\n...line N\n" with N in $LINES.
 * With MODE=assert it fails an assertion; with MODE=abort it calls abort().
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <dust/dust.h>

static int checks, fails;

#define CHECK(c) do { checks++; if (!(c)) { fails++; fprintf(stderr, "FAIL line %d: %s\n", __LINE__, #c); } } while (0)

static int sfmt(const char *want, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sfmt(const char *want, const char *fmt, ...)
{
	char buf[128];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (strcmp(buf, want)) {
		fprintf(stderr, "format \"%s\": got \"%s\" want \"%s\"\n", fmt, buf, want);
		return 0;
	}
	return 1;
}

static void bye(void)
{
	printf("atexit ran\n");
}

int main(int argc, char **argv)
{
	const char *mode = getenv("MODE");
	const struct dust_boot_info *bi = dust_boot_info();

	printf("Content-Type: text/plain\r\n\r\n");
	if (mode && strcmp(mode, "assert") == 0)
		assert(argc == 12345);
	if (mode && strcmp(mode, "abort") == 0) {
		fprintf(stderr, "aborting on purpose\n");
		abort();
	}
	atexit(bye);

	CHECK(argc >= 1 && argv[0] != NULL && argv[argc] == NULL);
	CHECK(__dust_entry_regs[DUST_REG_RDI] == DUST_BOOT_INFO);
	CHECK(__dust_entry_regs[DUST_REG_RSP] == bi->stack_top);
	CHECK(((uintptr_t)__builtin_frame_address(0) & 7) == 0);

	CHECK(sfmt("-00042|ff|0X1F|  1.50|3.000e+02|0.001|1e+100", "%06d|%x|%#X|%6.2f|%.3e|%g|%g", -42, 255, 31, 1.5, 300.0, 0.001, 1e100));
	CHECK(sfmt("18446744073709551615|-9223372036854775808|(nil)", "%" PRIu64 "|%lld|%p", UINT64_MAX, LLONG_MIN, (void *)0));
	CHECK(sfmt("[  ab]|[ab  ]|[%]", "[%4.2s]|[%-4s]|[%%]", "abc", "ab"));

	/* Heap: many small blocks, a few big ones, reuse. */
	char **v = malloc(10000 * sizeof *v);
	for (int i = 0; i < 10000; i++) {
		v[i] = malloc((size_t)(i % 100) + 1);
		memset(v[i], i & 0xff, (size_t)(i % 100) + 1);
	}
	int ok = 1;
	for (int i = 0; i < 10000; i++) {
		ok &= (unsigned char)v[i][i % 100] == (i & 0xff);
		free(v[i]);
	}
	free(v);
	CHECK(ok);
	char *big = calloc(4 << 20, 1);
	CHECK(big && big[12345] == 0 && big[(4 << 20) - 1] == 0);
	big = realloc(big, 8 << 20);
	CHECK(big && big[(4 << 20) - 1] == 0);
	free(big);
	CHECK(strtol("-0x7f", NULL, 16) == -127 && atoi("42") == 42);

	/* Clocks. */
	struct timespec a, b;
	struct timeval tv;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (volatile int i = 0; i < 1000000; i++)
		;
	clock_gettime(CLOCK_MONOTONIC, &b);
	gettimeofday(&tv, NULL);
	CHECK(b.tv_sec > a.tv_sec || (b.tv_sec == a.tv_sec && b.tv_nsec >= a.tv_nsec));
	CHECK(bi->tsc_hz == 0 || b.tv_nsec != a.tv_nsec || b.tv_sec != a.tv_sec);
	CHECK(time(NULL) >= (time_t)(bi->realtime_ns / 1000000000u) && tv.tv_sec >= time(NULL) - 1);
	struct tm tm;
	time_t t0 = 951782400; /* 2000-02-29 */
	gmtime_r(&t0, &tm);
	CHECK(tm.tm_year == 100 && tm.tm_mon == 1 && tm.tm_mday == 29 && tm.tm_yday == 59);

	uint32_t r1 = arc4random(), r2 = arc4random();
	CHECK(r1 != r2);

	/* Body: a character via getchar/ungetc, then lines via fgets, then
	 * the tail with read(). */
	long lines = getenv("LINES") ? atol(getenv("LINES")) : 0;
	int c = getchar();
	CHECK(lines == 0 || c == 'l');
	if (c != EOF)
		ungetc(c, stdin);
	char line[64], want[64];
	long n = 0;
	ok = 1;
	while (n < lines / 2 && fgets(line, sizeof line, stdin)) {
		n++;
		snprintf(want, sizeof want, "line %ld\n", n);
		ok &= strcmp(line, want) == 0;
	}
	/* read() may return short counts, so reassemble lines by hand. */
	char chunk[1000];
	ssize_t got;
	size_t len = 0;
	while ((got = read(0, chunk, sizeof chunk)) > 0) {
		for (ssize_t i = 0; i < got; i++) {
			line[len++] = chunk[i];
			if (chunk[i] == '\n') {
				line[len] = 0;
				snprintf(want, sizeof want, "line %ld\n", ++n);
				ok &= strcmp(line, want) == 0;
				len = 0;
			}
			if (len >= sizeof line - 1)
				len = 0, ok = 0;
		}
	}
	CHECK(ok && n == lines && len == 0 && got == 0 && getchar() == EOF && feof(stdin));
	CHECK(read(5, chunk, 1) == -1 && errno == EBADF);

	printf("order:");
	fflush(stdout);
	printf("A");
	write(1, "B", 1);
	printf("C\n");
	fprintf(stderr, "selftest log line\n");
	printf("selftest: %d checks, %d failures, %ld lines\n", checks, fails, n);
	return fails ? 1 : 0;
}
