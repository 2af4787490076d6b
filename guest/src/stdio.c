#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "dust_internal.h"

/* Every VM exit costs tens of microseconds, so output is held back until a
 * buffer fills: a typical response then leaves in the EXIT hypercall itself.
 * The buffers are BSS, so pages nobody writes to are never touched. */
static unsigned char outbuf[64 * 1024];
static unsigned char errbuf[4 * 1024];
static unsigned char inbuf[64 * 1024];

struct __dust_file __dust_stdin = { .fd = 0, .buf = inbuf, .cap = sizeof inbuf, .unget = -1 };
struct __dust_file __dust_stdout = { .fd = 1, .buf = outbuf, .cap = sizeof outbuf, .unget = -1 };
struct __dust_file __dust_stderr = { .fd = 2, .buf = errbuf, .cap = sizeof errbuf, .unget = -1 };
#undef stdin
#undef stdout
#undef stderr
FILE *const stdin = &__dust_stdin;
FILE *const stdout = &__dust_stdout;
FILE *const stderr = &__dust_stderr;

/* Body bytes still held by the monitor. Knowing it lets EOF be detected
 * without a READ that would only come back empty. */
static uint64_t body_left;

void __dust_stdio_init(const struct dust_boot_info *bi)
{
	uint64_t n = bi->body_inline_len;
	if (n > bi->body_len)
		n = bi->body_len;
	__dust_stdin.rpos = (const unsigned char *)(uintptr_t)bi->body_inline;
	__dust_stdin.rend = __dust_stdin.rpos + n;
	body_left = bi->body_len - n;
}

static void hc_write(int fd, const void *p, size_t n)
{
	struct dust_hc_write a = { (uint64_t)fd, (uint64_t)(uintptr_t)p, n };
	dust_hypercall(DUST_HC_WRITE, &a);
}

static size_t hc_read(void *p, size_t n)
{
	if (n > body_left)
		n = body_left;
	if (n == 0)
		return 0;
	struct dust_hc_read a = { (uint64_t)(uintptr_t)p, n, 0 };
	dust_hypercall(DUST_HC_READ, &a);
	if (a.ret == 0 || a.ret > n) {
		/* A short body (or a confused monitor) ends the stream for good. */
		body_left = 0;
		return 0;
	}
	body_left -= a.ret;
	return a.ret;
}

_Noreturn void __dust_exit(int status, unsigned reason)
{
	struct dust_hc_exit a = {
		status, reason,
		(uint64_t)(uintptr_t)outbuf, __dust_stdout.len,
		(uint64_t)(uintptr_t)errbuf, __dust_stderr.len,
	};
	dust_hypercall(DUST_HC_EXIT, &a);
	/* The monitor never resumes us; if it did, faulting is the only way
	 * left to stop the machine. */
	for (;;)
		__builtin_trap();
}

static int is_output(FILE *f)
{
	if (f == &__dust_stdout || f == &__dust_stderr)
		return 1;
	f->flags |= F_ERR;
	errno = EBADF;
	return 0;
}

static void flushbuf(FILE *f)
{
	if (f->len) {
		hc_write(f->fd, f->buf, f->len);
		f->len = 0;
	}
}

static size_t out(FILE *f, const void *p, size_t n)
{
	const unsigned char *s = p;
	size_t room = f->cap - f->len;

	if (n <= room) {
		memcpy(f->buf + f->len, s, n);
		f->len += n;
		return n;
	}
	memcpy(f->buf + f->len, s, room);
	f->len = f->cap;
	flushbuf(f);
	s += room;
	size_t rest = n - room;
	if (rest >= f->cap) {
		/* Copying a large block through the buffer would only add exits. */
		hc_write(f->fd, s, rest);
		return n;
	}
	memcpy(f->buf, s, rest);
	f->len = rest;
	return n;
}

static void sink(void *ctx, const char *s, size_t n)
{
	out(ctx, s, n);
}

static int fill(FILE *f)
{
	size_t got = hc_read(f->buf, f->cap);
	if (got == 0) {
		f->flags |= F_EOF;
		return 0;
	}
	f->rpos = f->buf;
	f->rend = f->buf + got;
	return 1;
}

/* Reads up to n bytes. With partial set it returns as soon as it has
 * anything, which is what read(2) promises and saves waiting on exits. */
static size_t in(FILE *f, void *p, size_t n, int partial)
{
	unsigned char *d = p;
	size_t done = 0;

	if (f != &__dust_stdin) {
		f->flags |= F_ERR;
		errno = EBADF;
		return 0;
	}
	if (n && f->unget >= 0) {
		d[done++] = (unsigned char)f->unget;
		f->unget = -1;
	}
	while (done < n) {
		size_t avail = (size_t)(f->rend - f->rpos);
		if (avail) {
			size_t k = n - done < avail ? n - done : avail;
			memcpy(d + done, f->rpos, k);
			f->rpos += k;
			done += k;
			continue;
		}
		if (partial && done)
			break;
		if (n - done >= f->cap) {
			/* Big reads go straight to the caller: no copy. */
			size_t got = hc_read(d + done, n - done);
			if (got == 0) {
				f->flags |= F_EOF;
				break;
			}
			done += got;
			if (partial)
				break;
			continue;
		}
		if (!fill(f))
			break;
	}
	return done;
}

size_t fwrite(const void *restrict p, size_t size, size_t n, FILE *restrict f)
{
	if (!is_output(f) || size == 0 || n == 0)
		return 0;
	if (n > (size_t)-1 / size) {
		f->flags |= F_ERR;
		errno = EOVERFLOW;
		return 0;
	}
	return out(f, p, size * n) / size;
}

size_t fread(void *restrict p, size_t size, size_t n, FILE *restrict f)
{
	if (size == 0 || n == 0)
		return 0;
	if (n > (size_t)-1 / size) {
		f->flags |= F_ERR;
		errno = EOVERFLOW;
		return 0;
	}
	return in(f, p, size * n, 0) / size;
}

int fflush(FILE *f)
{
	if (f == NULL) {
		flushbuf(&__dust_stdout);
		flushbuf(&__dust_stderr);
	} else if (f == &__dust_stdout || f == &__dust_stderr) {
		flushbuf(f);
	}
	return 0;
}

int fputc(int c, FILE *f)
{
	unsigned char ch = (unsigned char)c;
	if (!is_output(f))
		return EOF;
	if (f->len < f->cap)
		f->buf[f->len++] = ch;
	else
		out(f, &ch, 1);
	return ch;
}

int putc(int c, FILE *f) { return fputc(c, f); }
int putchar(int c) { return fputc(c, &__dust_stdout); }

int fputs(const char *restrict s, FILE *restrict f)
{
	if (!is_output(f))
		return EOF;
	out(f, s, strlen(s));
	return 0;
}

int puts(const char *s)
{
	out(&__dust_stdout, s, strlen(s));
	out(&__dust_stdout, "\n", 1);
	return 0;
}

int fgetc(FILE *f)
{
	if (f != &__dust_stdin) {
		f->flags |= F_ERR;
		return EOF;
	}
	if (f->unget >= 0) {
		int c = f->unget;
		f->unget = -1;
		return c;
	}
	if (f->rpos == f->rend && !fill(f))
		return EOF;
	return *f->rpos++;
}

int getc(FILE *f) { return fgetc(f); }
int getchar(void) { return fgetc(&__dust_stdin); }

int ungetc(int c, FILE *f)
{
	if (c == EOF || f != &__dust_stdin || f->unget >= 0)
		return EOF;
	f->unget = (unsigned char)c;
	f->flags &= ~F_EOF;
	return (unsigned char)c;
}

char *fgets(char *restrict s, int n, FILE *restrict f)
{
	int i = 0;
	if (n <= 0 || f != &__dust_stdin)
		return NULL;
	while (i < n - 1) {
		if (f->unget >= 0 || f->rpos == f->rend) {
			int c = fgetc(f);
			if (c == EOF)
				break;
			s[i++] = (char)c;
			if (c == '\n')
				break;
			continue;
		}
		size_t avail = (size_t)(f->rend - f->rpos);
		size_t want = (size_t)(n - 1 - i);
		if (want > avail)
			want = avail;
		const unsigned char *nl = memchr(f->rpos, '\n', want);
		size_t k = nl ? (size_t)(nl - f->rpos) + 1 : want;
		memcpy(s + i, f->rpos, k);
		f->rpos += k;
		i += (int)k;
		if (nl)
			break;
	}
	if (i == 0)
		return NULL;
	s[i] = '\0';
	return s;
}

int feof(FILE *f) { return (f->flags & F_EOF) != 0; }
int ferror(FILE *f) { return (f->flags & F_ERR) != 0; }
void clearerr(FILE *f) { f->flags = 0; }
int fileno(FILE *f) { return f->fd; }

int vfprintf(FILE *restrict f, const char *restrict fmt, va_list ap)
{
	if (!is_output(f))
		return -1;
	return __dust_vformat(sink, f, fmt, ap);
}

int fprintf(FILE *restrict f, const char *restrict fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vfprintf(f, fmt, ap);
	va_end(ap);
	return r;
}

int vprintf(const char *restrict fmt, va_list ap)
{
	return __dust_vformat(sink, &__dust_stdout, fmt, ap);
}

int printf(const char *restrict fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = __dust_vformat(sink, &__dust_stdout, fmt, ap);
	va_end(ap);
	return r;
}

void perror(const char *s)
{
	if (s && *s)
		fprintf(&__dust_stderr, "%s: %s\n", s, strerror(errno));
	else
		fprintf(&__dust_stderr, "%s\n", strerror(errno));
}

ssize_t write(int fd, const void *buf, size_t n)
{
	if (fd == 1 || fd == 2)
		return (ssize_t)out(fd == 1 ? &__dust_stdout : &__dust_stderr, buf, n);
	errno = EBADF;
	return -1;
}

ssize_t read(int fd, void *buf, size_t n)
{
	if (fd != 0) {
		errno = EBADF;
		return -1;
	}
	return (ssize_t)in(&__dust_stdin, buf, n, 1);
}
