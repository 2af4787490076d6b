#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "dust_internal.h"

enum { F_MINUS = 1, F_PLUS = 2, F_SPACE = 4, F_ZERO = 8, F_ALT = 16 };

struct out {
	__dust_sink put;
	void *ctx;
	size_t total;
};

static void emit(struct out *o, const char *s, size_t n)
{
	if (n) {
		o->put(o->ctx, s, n);
		o->total += n;
	}
}

static void pad(struct out *o, char c, size_t n)
{
	static const char spaces[16] = "                ";
	static const char zeros[16] = "0000000000000000";
	const char *src = c == '0' ? zeros : spaces;
	while (n) {
		size_t k = n < 16 ? n : 16;
		emit(o, src, k);
		n -= k;
	}
}

/* Writes prefix, zeros and body inside a field of the given width. */
static void field(struct out *o, int flags, size_t width, const char *prefix,
                  size_t zeros, const char *body, size_t blen)
{
	size_t plen = strlen(prefix);
	size_t len = plen + zeros + blen;
	size_t fill = width > len ? width - len : 0;

	if (!(flags & F_MINUS) && !(flags & F_ZERO))
		pad(o, ' ', fill);
	emit(o, prefix, plen);
	if (!(flags & F_MINUS) && (flags & F_ZERO))
		pad(o, '0', fill);
	pad(o, '0', zeros);
	emit(o, body, blen);
	if (flags & F_MINUS)
		pad(o, ' ', fill);
}

static void fmt_int(struct out *o, uintmax_t v, int neg, int base, int upper,
                    int flags, size_t width, int prec, char conv)
{
	char buf[24];
	char *p = buf + sizeof buf;
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char prefix[3] = "";

	while (v) {
		*--p = digits[v % (unsigned)base];
		v /= (unsigned)base;
	}
	size_t n = (size_t)(buf + sizeof buf - p);
	int had_value = n != 0;
	if (prec < 0) {
		prec = 1;
	} else {
		flags &= ~F_ZERO; /* a precision overrides the 0 flag */
	}
	size_t zeros = (size_t)prec > n ? (size_t)prec - n : 0;

	if (conv == 'd' || conv == 'i') {
		if (neg)
			prefix[0] = '-';
		else if (flags & F_PLUS)
			prefix[0] = '+';
		else if (flags & F_SPACE)
			prefix[0] = ' ';
	} else if (flags & F_ALT) {
		if (base == 8 && zeros == 0 && (n == 0 || *p != '0'))
			zeros = 1;
		else if (base == 16 && had_value) {
			prefix[0] = '0';
			prefix[1] = upper ? 'X' : 'x';
		}
	}
	field(o, flags, width, prefix, zeros, p, n);
}

/* Decimal digits of a positive finite double: d[0..16] with d[0] at 10^e. */
static void decompose(double v, char d[17], int *exp10)
{
	uint64_t bits;
	memcpy(&bits, &v, sizeof bits);
	int e2 = (int)((bits >> 52) & 0x7ff) - 1023;
	if (e2 == -1023)
		e2 = -1074 + 63 - __builtin_clzll(bits & ((1ull << 52) - 1));
	/* floor(e2 * log10(2)) via a fixed-point multiply; may be off by one. */
	int e = (e2 * 78913) >> 18;

	/* Long double keeps 64 mantissa bits, so powers of ten up to 10^27 are
	 * exact and the 17 digits we keep are almost always correctly rounded. */
	long double s = v;
	for (;;) {
		int k = 16 - e;
		long double p = 1, b = 10;
		for (unsigned u = (unsigned)(k < 0 ? -k : k); u; u >>= 1, b *= b)
			if (u & 1)
				p *= b;
		s = k < 0 ? (long double)v / p : (long double)v * p;
		if (s >= 1e17L)
			e++;
		else if (s < 1e16L)
			e--;
		else
			break;
	}
	uint64_t n = (uint64_t)s;
	long double frac = s - (long double)n;
	if (frac > 0.5L || (frac == 0.5L && (n & 1)))
		n++;
	if (n >= 100000000000000000ull) {
		n /= 10;
		e++;
	}
	for (int i = 16; i >= 0; i--) {
		d[i] = (char)(n % 10);
		n /= 10;
	}
	*exp10 = e;
}

/* Rounds d to nd significant digits (half to even on the digits we have). */
static void round_digits(char d[17], int *e, int nd)
{
	if (nd >= 17)
		return;
	if (nd < 0) {
		memset(d, 0, 17);
		return;
	}
	int up = d[nd] > 5;
	if (d[nd] == 5) {
		int rest = 0;
		for (int i = nd + 1; i < 17; i++)
			rest |= d[i];
		up = rest || (nd > 0 && (d[nd - 1] & 1));
	}
	memset(d + nd, 0, (size_t)(17 - nd));
	if (!up)
		return;
	int i = nd - 1;
	while (i >= 0 && d[i] == 9)
		d[i--] = 0;
	if (i >= 0) {
		d[i]++;
	} else {
		d[0] = 1;
		++*e;
	}
}

static int digit(const char d[17], int i)
{
	return i >= 0 && i < 17 ? '0' + d[i] : '0';
}

/* Formats |v| in style 'e' or 'f' with prec fraction digits into p. */
static char *put_float(char *p, const char d[17], int e, int prec, int style, int alt, int upper)
{
	if (style == 'e') {
		*p++ = (char)digit(d, 0);
		if (prec > 0 || alt)
			*p++ = '.';
		for (int i = 1; i <= prec; i++)
			*p++ = (char)digit(d, i);
		*p++ = upper ? 'E' : 'e';
		*p++ = e < 0 ? '-' : '+';
		int ae = e < 0 ? -e : e;
		if (ae >= 100)
			*p++ = (char)('0' + ae / 100);
		*p++ = (char)('0' + ae / 10 % 10);
		*p++ = (char)('0' + ae % 10);
		return p;
	}
	if (e < 0)
		*p++ = '0';
	for (int i = 0; i <= e; i++)
		*p++ = (char)digit(d, i);
	if (prec > 0 || alt)
		*p++ = '.';
	for (int k = 1; k <= prec; k++)
		*p++ = (char)digit(d, e + k);
	return p;
}

static void fmt_float(struct out *o, double v, int flags, size_t width, int prec, char conv)
{
	char buf[1100];
	char prefix[2] = "";
	int upper = conv >= 'A' && conv <= 'Z';
	char c = (char)(conv | 0x20);
	uint64_t bits;

	memcpy(&bits, &v, sizeof bits);
	if (bits >> 63)
		prefix[0] = '-';
	else if (flags & F_PLUS)
		prefix[0] = '+';
	else if (flags & F_SPACE)
		prefix[0] = ' ';
	bits &= ~(1ull << 63);
	memcpy(&v, &bits, sizeof v);

	if ((bits >> 52) == 0x7ff) {
		const char *s = (bits << 12) ? (upper ? "NAN" : "nan") : (upper ? "INF" : "inf");
		field(o, flags & ~F_ZERO, width, prefix, 0, s, 3);
		return;
	}
	if (prec < 0)
		prec = 6;
	if (prec > 700)
		prec = 700; /* digits past the 17th are zeros anyway */

	char d[17] = { 0 };
	int e = 0;
	if (v != 0)
		decompose(v, d, &e);

	char *end;
	if (c == 'e') {
		round_digits(d, &e, prec + 1);
		end = put_float(buf, d, e, prec, 'e', flags & F_ALT, upper);
	} else if (c == 'f') {
		round_digits(d, &e, e + 1 + prec);
		if (v != 0 && e + 1 + prec < 0)
			e = 0;
		end = put_float(buf, d, e, prec, 'f', flags & F_ALT, upper);
	} else {
		int p = prec == 0 ? 1 : prec;
		round_digits(d, &e, p);
		int x = v == 0 ? 0 : e;
		if (p > x && x >= -4)
			end = put_float(buf, d, e, p - 1 - x, 'f', flags & F_ALT, upper);
		else
			end = put_float(buf, d, e, p - 1, 'e', flags & F_ALT, upper);
		if (!(flags & F_ALT) && memchr(buf, '.', (size_t)(end - buf))) {
			/* %g drops trailing zeros, but never from the exponent. */
			char *ex = memchr(buf, upper ? 'E' : 'e', (size_t)(end - buf));
			char *stop = ex ? ex : end;
			char *q = stop;
			while (q[-1] == '0')
				q--;
			if (q[-1] == '.')
				q--;
			memmove(q, stop, (size_t)(end - stop));
			end = q + (end - stop);
		}
	}
	field(o, flags, width, prefix, 0, buf, (size_t)(end - buf));
}

int __dust_vformat(__dust_sink put, void *ctx, const char *fmt, va_list ap)
{
	struct out o = { put, ctx, 0 };
	va_list args;
	va_copy(args, ap);

	while (*fmt) {
		const char *lit = fmt;
		while (*fmt && *fmt != '%')
			fmt++;
		emit(&o, lit, (size_t)(fmt - lit));
		if (!*fmt)
			break;
		const char *spec = fmt++;

		int flags = 0;
		for (;; fmt++) {
			if (*fmt == '-') flags |= F_MINUS;
			else if (*fmt == '+') flags |= F_PLUS;
			else if (*fmt == ' ') flags |= F_SPACE;
			else if (*fmt == '0') flags |= F_ZERO;
			else if (*fmt == '#') flags |= F_ALT;
			else break;
		}
		size_t width = 0;
		if (*fmt == '*') {
			int w = va_arg(args, int);
			if (w < 0) {
				flags |= F_MINUS;
				w = -w;
			}
			width = (size_t)(unsigned)w;
			fmt++;
		} else {
			while (*fmt >= '0' && *fmt <= '9')
				width = width * 10 + (size_t)(*fmt++ - '0');
		}
		int prec = -1;
		if (*fmt == '.') {
			fmt++;
			if (*fmt == '*') {
				prec = va_arg(args, int);
				if (prec < 0)
					prec = -1;
				fmt++;
			} else {
				prec = 0;
				while (*fmt >= '0' && *fmt <= '9')
					prec = prec * 10 + (*fmt++ - '0');
			}
		}
		if (flags & F_MINUS)
			flags &= ~F_ZERO;

		/* Length: 'H' hh, 'h' h, 'l' l/z/t/j, 'q' ll, 'L' long double. */
		char len = 0;
		switch (*fmt) {
		case 'h':
			len = 'h';
			if (*++fmt == 'h') {
				len = 'H';
				fmt++;
			}
			break;
		case 'l':
			len = 'l';
			if (*++fmt == 'l') {
				len = 'q';
				fmt++;
			}
			break;
		case 'z': case 't': case 'j':
			len = 'l';
			fmt++;
			break;
		case 'L':
			len = 'L';
			fmt++;
			break;
		}

		char conv = *fmt;
		if (conv)
			fmt++;
		switch (conv) {
		case 'd': case 'i': {
			intmax_t v;
			if (len == 'l' || len == 'q') v = va_arg(args, long long);
			else v = va_arg(args, int);
			if (len == 'h') v = (short)v;
			else if (len == 'H') v = (signed char)v;
			uintmax_t u = v < 0 ? -(uintmax_t)v : (uintmax_t)v;
			fmt_int(&o, u, v < 0, 10, 0, flags, width, prec, 'd');
			break;
		}
		case 'u': case 'x': case 'X': case 'o': {
			uintmax_t v;
			if (len == 'l' || len == 'q') v = va_arg(args, unsigned long long);
			else v = va_arg(args, unsigned);
			if (len == 'h') v = (unsigned short)v;
			else if (len == 'H') v = (unsigned char)v;
			int base = conv == 'u' ? 10 : conv == 'o' ? 8 : 16;
			fmt_int(&o, v, 0, base, conv == 'X', flags & ~(F_PLUS | F_SPACE), width, prec, conv);
			break;
		}
		case 'p': {
			void *p = va_arg(args, void *);
			if (p == NULL)
				field(&o, flags & ~F_ZERO, width, "", 0, "(nil)", 5);
			else
				fmt_int(&o, (uintptr_t)p, 0, 16, 0, flags | F_ALT, width, prec, 'p');
			break;
		}
		case 'c': {
			char ch = (char)va_arg(args, int);
			field(&o, flags & ~F_ZERO, width, "", 0, &ch, 1);
			break;
		}
		case 's': {
			const char *s = va_arg(args, const char *);
			if (s == NULL)
				s = (prec < 0 || prec >= 6) ? "(null)" : "";
			size_t n = prec < 0 ? strlen(s) : strnlen(s, (size_t)prec);
			field(&o, flags & ~F_ZERO, width, "", 0, s, n);
			break;
		}
		case 'f': case 'F': case 'e': case 'E': case 'g': case 'G': {
			double v = len == 'L' ? (double)va_arg(args, long double) : va_arg(args, double);
			fmt_float(&o, v, flags, width, prec, conv);
			break;
		}
		case '%':
			emit(&o, "%", 1);
			break;
		default:
			/* Unknown conversions are printed as written, which makes the
			 * mistake visible instead of consuming a random argument. */
			emit(&o, spec, (size_t)(fmt - spec));
			break;
		}
	}
	va_end(args);
	return o.total > 0x7fffffff ? 0x7fffffff : (int)o.total;
}

struct strbuf {
	char *buf;
	size_t cap, pos;
};

static void strsink(void *ctx, const char *s, size_t n)
{
	struct strbuf *b = ctx;
	if (b->pos < b->cap) {
		size_t k = b->cap - b->pos < n ? b->cap - b->pos : n;
		memcpy(b->buf + b->pos, s, k);
	}
	b->pos += n;
}

int vsnprintf(char *restrict buf, size_t n, const char *restrict fmt, va_list ap)
{
	struct strbuf b = { buf, n ? n - 1 : 0, 0 };
	int r = __dust_vformat(strsink, &b, fmt, ap);
	if (n)
		buf[b.pos < b.cap ? b.pos : b.cap] = '\0';
	return r;
}

int snprintf(char *restrict buf, size_t n, const char *restrict fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	return r;
}

int vsprintf(char *restrict buf, const char *restrict fmt, va_list ap)
{
	return vsnprintf(buf, (size_t)-1 >> 1, fmt, ap);
}

int sprintf(char *restrict buf, const char *restrict fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf, (size_t)-1 >> 1, fmt, ap);
	va_end(ap);
	return r;
}
