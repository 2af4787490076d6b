#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "dust_internal.h"

/* Parses the magnitude; *neg gets the sign. Sets *ovf if it does not fit. */
static unsigned long long parse(const char *s, char **end, int base, int *neg, int *ovf)
{
	const char *p = s;
	unsigned long long v = 0;
	int any = 0;

	*neg = *ovf = 0;
	if (base < 0 || base == 1 || base > 36) {
		errno = EINVAL;
		if (end)
			*end = (char *)s;
		return 0;
	}
	while (isspace((unsigned char)*p))
		p++;
	if (*p == '+' || *p == '-')
		*neg = *p++ == '-';
	if ((base == 0 || base == 16) && p[0] == '0' && (p[1] | 32) == 'x' && isxdigit((unsigned char)p[2])) {
		p += 2;
		base = 16;
	} else if (base == 0) {
		base = p[0] == '0' ? 8 : 10;
	}
	for (;; p++) {
		int c = (unsigned char)*p, d;
		if (isdigit(c))
			d = c - '0';
		else if (isalpha(c))
			d = (c | 32) - 'a' + 10;
		else
			break;
		if (d >= base)
			break;
		any = 1;
		if (v > (ULLONG_MAX - (unsigned)d) / (unsigned)base)
			*ovf = 1;
		else
			v = v * (unsigned)base + (unsigned)d;
	}
	if (end)
		*end = (char *)(any ? p : s);
	return v;
}

static long long to_signed(const char *s, char **end, int base, long long min, long long max)
{
	int neg, ovf;
	unsigned long long v = parse(s, end, base, &neg, &ovf);
	unsigned long long lim = neg ? (unsigned long long)max + 1 : (unsigned long long)max;
	if (ovf || v > lim) {
		errno = ERANGE;
		return neg ? min : max;
	}
	return neg ? (long long)(0 - v) : (long long)v;
}

static unsigned long long to_unsigned(const char *s, char **end, int base, unsigned long long max)
{
	int neg, ovf;
	unsigned long long v = parse(s, end, base, &neg, &ovf);
	if (ovf || v > max) {
		errno = ERANGE;
		return max;
	}
	return neg ? 0 - v : v; /* the C standard wants "-1" to wrap */
}

long strtol(const char *restrict s, char **restrict e, int b) { return (long)to_signed(s, e, b, LONG_MIN, LONG_MAX); }
long long strtoll(const char *restrict s, char **restrict e, int b) { return to_signed(s, e, b, LLONG_MIN, LLONG_MAX); }
intmax_t strtoimax(const char *restrict s, char **restrict e, int b) { return to_signed(s, e, b, INTMAX_MIN, INTMAX_MAX); }
unsigned long strtoul(const char *restrict s, char **restrict e, int b) { return (unsigned long)to_unsigned(s, e, b, ULONG_MAX); }
unsigned long long strtoull(const char *restrict s, char **restrict e, int b) { return to_unsigned(s, e, b, ULLONG_MAX); }
uintmax_t strtoumax(const char *restrict s, char **restrict e, int b) { return to_unsigned(s, e, b, UINTMAX_MAX); }
int atoi(const char *s) { return (int)strtol(s, NULL, 10); }
long atol(const char *s) { return strtol(s, NULL, 10); }
long long atoll(const char *s) { return strtoll(s, NULL, 10); }

int abs(int x) { return x < 0 ? -x : x; }
long labs(long x) { return x < 0 ? -x : x; }
long long llabs(long long x) { return x < 0 ? -x : x; }
div_t div(int a, int b) { return (div_t){ a / b, a % b }; }
ldiv_t ldiv(long a, long b) { return (ldiv_t){ a / b, a % b }; }
lldiv_t lldiv(long long a, long long b) { return (lldiv_t){ a / b, a % b }; }

/* qsort: introsort (quicksort that falls back to heapsort when the
 * recursion gets too deep), so hostile input cannot make it quadratic. */

typedef int (*cmp_fn)(const void *, const void *);

static void swap(char *a, char *b, size_t size)
{
	if (a == b)
		return;
	while (size >= 8) {
		uint64_t x, y;
		__builtin_memcpy(&x, a, 8);
		__builtin_memcpy(&y, b, 8);
		__builtin_memcpy(a, &y, 8);
		__builtin_memcpy(b, &x, 8);
		a += 8, b += 8, size -= 8;
	}
	while (size--) {
		char t = *a;
		*a++ = *b;
		*b++ = t;
	}
}

static void sift(char *base, size_t root, size_t n, size_t size, cmp_fn cmp)
{
	for (;;) {
		size_t child = 2 * root + 1;
		if (child >= n)
			return;
		if (child + 1 < n && cmp(base + child * size, base + (child + 1) * size) < 0)
			child++;
		if (cmp(base + root * size, base + child * size) >= 0)
			return;
		swap(base + root * size, base + child * size, size);
		root = child;
	}
}

static void heapsort(char *base, size_t n, size_t size, cmp_fn cmp)
{
	for (size_t i = n / 2; i-- > 0;)
		sift(base, i, n, size, cmp);
	for (size_t i = n; i-- > 1;) {
		swap(base, base + i * size, size);
		sift(base, 0, i, size, cmp);
	}
}

static void introsort(char *base, size_t n, size_t size, cmp_fn cmp, int depth)
{
	while (n > 12) {
		if (depth-- == 0) {
			heapsort(base, n, size, cmp);
			return;
		}
		/* Median of three goes to the front and serves as the pivot. */
		char *a = base, *m = base + n / 2 * size, *z = base + (n - 1) * size;
		if (cmp(m, a) < 0) swap(m, a, size);
		if (cmp(z, m) < 0) {
			swap(z, m, size);
			if (cmp(m, a) < 0) swap(m, a, size);
		}
		swap(base, m, size);

		size_t i = 1, j = n - 1;
		for (;;) {
			while (i < n && cmp(base + i * size, base) < 0)
				i++;
			while (cmp(base, base + j * size) < 0)
				j--;
			if (i >= j)
				break;
			swap(base + i * size, base + j * size, size);
			i++, j--;
		}
		swap(base, base + j * size, size);
		/* Recurse into the smaller side to bound the stack. */
		size_t left = j, right = n - j - 1;
		if (left < right) {
			introsort(base, left, size, cmp, depth);
			base += (j + 1) * size;
			n = right;
		} else {
			introsort(base + (j + 1) * size, right, size, cmp, depth);
			n = left;
		}
	}
	for (size_t i = 1; i < n; i++)
		for (size_t k = i; k > 0 && cmp(base + (k - 1) * size, base + k * size) > 0; k--)
			swap(base + (k - 1) * size, base + k * size, size);
}

void qsort(void *base, size_t n, size_t size, cmp_fn cmp)
{
	if (n < 2 || size == 0)
		return;
	introsort(base, n, size, cmp, 2 * (64 - __builtin_clzll(n)));
}

void *bsearch(const void *key, const void *base, size_t n, size_t size, cmp_fn cmp)
{
	const char *lo = base;
	while (n) {
		const char *mid = lo + n / 2 * size;
		int c = cmp(key, mid);
		if (c == 0)
			return (void *)mid;
		if (c > 0) {
			lo = mid + size;
			n -= n / 2 + 1;
		} else {
			n /= 2;
		}
	}
	return NULL;
}

/* Environment. The monitor's envp lives in read-only memory, so the first
 * change copies the pointer array to the heap. */

static int env_owned;

static size_t name_len(const char *name)
{
	if (!name || !*name || strchr(name, '='))
		return 0;
	return strlen(name);
}

char *getenv(const char *name)
{
	size_t n = strlen(name);
	if (!environ)
		return NULL;
	for (char **e = environ; *e; e++)
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

static size_t env_count(void)
{
	size_t n = 0;
	while (environ && environ[n])
		n++;
	return n;
}

static void own_env(size_t extra)
{
	size_t n = env_count();
	char **copy = malloc((n + extra + 1) * sizeof *copy);
	if (n)
		memcpy(copy, environ, n * sizeof *copy);
	copy[n] = NULL;
	if (env_owned)
		free(environ);
	environ = copy;
	env_owned = 1;
}

int unsetenv(const char *name)
{
	size_t n = name_len(name);
	if (!n) {
		errno = EINVAL;
		return -1;
	}
	if (!getenv(name))
		return 0;
	own_env(0);
	char **w = environ;
	for (char **r = environ; *r; r++)
		if (!(strncmp(*r, name, n) == 0 && (*r)[n] == '='))
			*w++ = *r;
	*w = NULL;
	return 0;
}

int setenv(const char *name, const char *value, int overwrite)
{
	size_t n = name_len(name);
	if (!n) {
		errno = EINVAL;
		return -1;
	}
	if (getenv(name) && !overwrite)
		return 0;
	size_t vl = strlen(value);
	char *s = malloc(n + vl + 2);
	memcpy(s, name, n);
	s[n] = '=';
	memcpy(s + n + 1, value, vl + 1);
	unsetenv(name);
	/* Old strings are leaked on purpose: getenv() results must stay valid
	 * and the whole heap vanishes with the request anyway. */
	own_env(1);
	size_t c = env_count();
	environ[c] = s;
	environ[c + 1] = NULL;
	return 0;
}

static uint64_t rand_state = 1;

void srand(unsigned seed)
{
	rand_state = seed;
}

int rand(void)
{
	/* 64-bit LCG (Knuth's MMIX constants); the top bits are the good ones. */
	rand_state = rand_state * 6364136223846793005ull + 1442695040888963407ull;
	return (int)(rand_state >> 33);
}
