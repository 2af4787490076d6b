#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Built with -fno-tree-loop-distribute-patterns: otherwise gcc would turn
 * the loops below back into calls to the very functions they implement. */

int errno;

void *memcpy(void *restrict d, const void *restrict s, size_t n)
{
	void *ret = d;
	/* rep movsb is microcoded into wide copies on every CPU recent enough
	 * to host KVM guests, and is tiny. */
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return ret;
}

void *memmove(void *d, const void *s, size_t n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;
	if ((uintptr_t)dp - (uintptr_t)sp >= n)
		return memcpy(d, s, n); /* no harmful overlap */
	while (n >= 8) {
		uint64_t w;
		n -= 8;
		__builtin_memcpy(&w, sp + n, 8);
		__builtin_memcpy(dp + n, &w, 8);
	}
	while (n--)
		dp[n] = sp[n];
	return d;
}

void *memset(void *d, int c, size_t n)
{
	void *ret = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return ret;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] - y[i];
	return 0;
}

void *memchr(const void *s, int c, size_t n)
{
	const unsigned char *p = s;
	for (size_t i = 0; i < n; i++)
		if (p[i] == (unsigned char)c)
			return (void *)(p + i);
	return NULL;
}

void *memmem(const void *h, size_t hn, const void *n, size_t nn)
{
	const unsigned char *hp = h, *np = n;
	if (nn == 0)
		return (void *)h;
	while (hn >= nn) {
		const unsigned char *p = memchr(hp, np[0], hn - nn + 1);
		if (!p)
			return NULL;
		if (memcmp(p, np, nn) == 0)
			return (void *)p;
		hn -= (size_t)(p - hp) + 1;
		hp = p + 1;
	}
	return NULL;
}

typedef uint64_t __attribute__((may_alias)) word;

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

size_t strlen(const char *s)
{
	const char *p = s;
	while ((uintptr_t)p & 7) {
		if (!*p)
			return (size_t)(p - s);
		p++;
	}
	/* Aligned 8-byte loads never cross a page, so reading past the
	 * terminator cannot fault. */
	for (;;) {
		word w = *(const word *)(const void *)p;
		if ((w - ONES) & ~w & HIGHS)
			break;
		p += 8;
	}
	while (*p)
		p++;
	return (size_t)(p - s);
}

size_t strnlen(const char *s, size_t max)
{
	size_t n = 0;
	while (n < max && s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	const unsigned char *x = (const void *)a, *y = (const void *)b;
	while (*x && *x == *y)
		x++, y++;
	return *x - *y;
}

int strncmp(const char *a, const char *b, size_t n)
{
	const unsigned char *x = (const void *)a, *y = (const void *)b;
	for (; n; n--, x++, y++)
		if (*x != *y || !*x)
			return *x - *y;
	return 0;
}

int strcoll(const char *a, const char *b)
{
	return strcmp(a, b);
}

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

int strcasecmp(const char *a, const char *b)
{
	const unsigned char *x = (const void *)a, *y = (const void *)b;
	while (*x && lower(*x) == lower(*y))
		x++, y++;
	return lower(*x) - lower(*y);
}

int strncasecmp(const char *a, const char *b, size_t n)
{
	const unsigned char *x = (const void *)a, *y = (const void *)b;
	for (; n; n--, x++, y++)
		if (lower(*x) != lower(*y) || !*x)
			return lower(*x) - lower(*y);
	return 0;
}

char *stpcpy(char *restrict d, const char *restrict s)
{
	size_t n = strlen(s);
	memcpy(d, s, n + 1);
	return d + n;
}

char *strcpy(char *restrict d, const char *restrict s)
{
	stpcpy(d, s);
	return d;
}

char *strncpy(char *restrict d, const char *restrict s, size_t n)
{
	size_t k = strnlen(s, n);
	memcpy(d, s, k);
	memset(d + k, 0, n - k);
	return d;
}

char *strcat(char *restrict d, const char *restrict s)
{
	stpcpy(d + strlen(d), s);
	return d;
}

char *strncat(char *restrict d, const char *restrict s, size_t n)
{
	char *e = d + strlen(d);
	size_t k = strnlen(s, n);
	memcpy(e, s, k);
	e[k] = '\0';
	return d;
}

char *strchr(const char *s, int c)
{
	for (;; s++) {
		if (*s == (char)c)
			return (char *)s;
		if (!*s)
			return NULL;
	}
}

char *strrchr(const char *s, int c)
{
	const char *last = NULL;
	for (;; s++) {
		if (*s == (char)c)
			last = s;
		if (!*s)
			return (char *)last;
	}
}

char *strstr(const char *h, const char *n)
{
	return memmem(h, strlen(h), n, strlen(n));
}

char *strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = malloc(n);
	return d ? memcpy(d, s, n) : NULL;
}

char *strndup(const char *s, size_t n)
{
	n = strnlen(s, n);
	char *d = malloc(n + 1);
	if (!d)
		return NULL;
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

/* One bit per byte value; the terminator is always a member so scans stop. */
static void byteset(uint64_t set[4], const char *chars)
{
	set[0] = 1, set[1] = set[2] = set[3] = 0;
	for (const unsigned char *p = (const void *)chars; *p; p++)
		set[*p >> 6] |= 1ull << (*p & 63);
}

#define HAS(set, c) ((set)[(unsigned char)(c) >> 6] >> ((unsigned char)(c) & 63) & 1)

size_t strspn(const char *s, const char *accept)
{
	uint64_t set[4];
	byteset(set, accept);
	set[0] &= ~1ull;
	size_t n = 0;
	while (HAS(set, s[n]))
		n++;
	return n;
}

size_t strcspn(const char *s, const char *reject)
{
	uint64_t set[4];
	byteset(set, reject);
	size_t n = 0;
	while (!HAS(set, s[n]))
		n++;
	return n;
}

char *strpbrk(const char *s, const char *accept)
{
	s += strcspn(s, accept);
	return *s ? (char *)s : NULL;
}

char *strtok_r(char *restrict s, const char *restrict delim, char **restrict save)
{
	if (!s)
		s = *save;
	if (!s)
		return NULL;
	s += strspn(s, delim);
	if (!*s) {
		*save = NULL;
		return NULL;
	}
	char *e = s + strcspn(s, delim);
	if (*e)
		*e++ = '\0';
	else
		e = NULL;
	*save = e;
	return s;
}

char *strtok(char *restrict s, const char *restrict delim)
{
	static char *save;
	return strtok_r(s, delim, &save);
}

char *strerror(int err)
{
	switch (err) {
	case 0: return "Success";
	case EPERM: return "Operation not permitted";
	case ENOENT: return "No such file or directory";
	case EIO: return "Input/output error";
	case EBADF: return "Bad file descriptor";
	case ENOMEM: return "Cannot allocate memory";
	case EACCES: return "Permission denied";
	case EFAULT: return "Bad address";
	case EINVAL: return "Invalid argument";
	case ENOSPC: return "No space left on device";
	case ESPIPE: return "Illegal seek";
	case EDOM: return "Numerical argument out of domain";
	case ERANGE: return "Numerical result out of range";
	case ENOSYS: return "Function not implemented";
	case EOVERFLOW: return "Value too large for defined data type";
	default: return "Unknown error";
	}
}
