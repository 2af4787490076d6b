/*
 * form: a form-handling CGI program in plain C, built with an ordinary
 * static toolchain (gcc -static or musl-gcc -static) and run on the hvt
 * kind as a Linux program (docs/linux-abi.md).
 *
 * GET without fields shows the form; GET with a query string or a POST of
 * application/x-www-form-urlencoded computes:
 *
 *   name    echoed back
 *   unit    a unit from /app/units.txt (the app's read-only files)
 *   values  numbers separated by commas, spaces or semicolons
 *   ts      optional Unix time for the date line (default: now)
 *
 * and answers the sorted values, their sum, mean, median and standard
 * deviation, the total in metres, the date, and what happened when it used
 * /tmp (per request: it must be empty at the start) and tried to write
 * under /app (read-only: EROFS). A bad number or an unknown unit is a 400
 * and a missing data file a 500, both reached from deep in the parsing
 * through longjmp.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { MAXBODY = 64 * 1024, MAXVALUES = 1024, MAXFIELD = 1024 };

static jmp_buf failed;
static const char *status;
static char why[256];

/* fail abandons the request: whatever the parser was in the middle of,
 * the answer is the status with the reason. */
static void fail(const char *st, const char *fmt, const char *arg)
{
	status = st;
	snprintf(why, sizeof why, fmt, arg);
	longjmp(failed, 1);
}

#define BAD "400 Bad Request"

/* urldecode decodes s in place: '+' is a space, %XX a byte. */
static void urldecode(char *s)
{
	char *out = s;
	for (; *s; s++) {
		unsigned int c;
		if (*s == '+') {
			*out++ = ' ';
		} else if (*s == '%' && isxdigit((unsigned char)s[1]) && isxdigit((unsigned char)s[2]) &&
			   sscanf(s + 1, "%2x", &c) == 1) {
			*out++ = (char)c;
			s += 2;
		} else {
			*out++ = *s;
		}
	}
	*out = 0;
}

struct fields {
	char name[MAXFIELD], unit[64], values[MAXFIELD], ts[32];
	int any;
};

/* parse splits an urlencoded string into the fields it knows. */
static void parse(const char *q, struct fields *f)
{
	while (*q) {
		char key[64] = "", val[MAXFIELD] = "";
		int n = 0;
		/* key=value up to the next '&'; an empty value leaves val empty. */
		if (sscanf(q, "%63[^=&]%n", key, &n) < 1)
			n = 0;
		q += n;
		if (*q == '=') {
			q++;
			n = 0;
			if (sscanf(q, "%1023[^&]%n", val, &n) < 1)
				n = 0;
			q += n;
		}
		while (*q && *q != '&')
			q++; /* the rest of a value longer than the buffer */
		if (*q == '&')
			q++;
		urldecode(key);
		urldecode(val);
		char *dst = NULL;
		size_t cap = 0;
		if (!strcmp(key, "name"))
			dst = f->name, cap = sizeof f->name;
		else if (!strcmp(key, "unit"))
			dst = f->unit, cap = sizeof f->unit;
		else if (!strcmp(key, "values"))
			dst = f->values, cap = sizeof f->values;
		else if (!strcmp(key, "ts"))
			dst = f->ts, cap = sizeof f->ts;
		if (dst) {
			snprintf(dst, cap, "%s", val);
			f->any = 1;
		}
	}
}

/* numbers reads the values field with strtod; anything that is not a
 * finite number is a bad request. */
static int numbers(const char *s, double *v)
{
	int n = 0;
	for (;;) {
		while (*s == ' ' || *s == ',' || *s == ';' || *s == '\t')
			s++;
		if (!*s)
			return n;
		char *end;
		errno = 0;
		double d = strtod(s, &end);
		if (end == s || (*end && !strchr(" ,;\t", *end)) || errno == ERANGE || !isfinite(d)) {
			char tok[32];
			sscanf(s, "%31[^ ,;\t]", tok);
			fail(BAD, "bad number \"%s\" in values", tok);
		}
		if (n == MAXVALUES)
			fail(BAD, "more than %s values", "1024");
		v[n++] = d;
		s = end;
	}
}

struct unit {
	char name[16], label[48];
	double metres;
};

/* findunit looks name up in /app/units.txt: "name metres label" lines,
 * '#' comments. */
static struct unit findunit(const char *name)
{
	struct unit u = {0};
	FILE *f = fopen("/app/units.txt", "r");
	if (!f)
		fail("500 Internal Server Error", "cannot open /app/units.txt: %s", strerror(errno));
	char line[256];
	while (fgets(line, sizeof line, f)) {
		struct unit t;
		if (line[0] == '#' || sscanf(line, "%15s %lf %47[^\n]", t.name, &t.metres, t.label) != 3)
			continue;
		if (!strcmp(t.name, name)) {
			fclose(f);
			return t;
		}
	}
	fclose(f);
	fail(BAD, "unknown unit \"%s\"", name);
	return u;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* tmpcheck shows that /tmp is writable and this request's own: the file
 * must not exist yet, and what is written must read back. */
static void tmpcheck(const double *v, int n, char *out, size_t cap)
{
	const char *path = "/tmp/form-values.txt";
	int before = access(path, F_OK) == 0;
	FILE *f = fopen(path, "w");
	if (!f) {
		snprintf(out, cap, "%s, write failed: %s", before ? "present" : "absent", strerror(errno));
		return;
	}
	for (int i = 0; i < n; i++)
		fprintf(f, "%.17g\n", v[i]);
	fclose(f);
	f = fopen(path, "r");
	int back = 0, same = 1;
	double d;
	while (f && fscanf(f, "%lf", &d) == 1) {
		if (back >= n || d != v[back])
			same = 0;
		back++;
	}
	if (f)
		fclose(f);
	snprintf(out, cap, "%s, wrote %d values, read back %d, %s", before ? "present" : "absent", n, back,
		 same && back == n ? "same" : "DIFFERENT");
}

/* appwrite tries to write under /app, which must fail with EROFS. */
static const char *appwrite(void)
{
	int fd = open("/app/units.txt", O_WRONLY | O_APPEND);
	if (fd >= 0) {
		close(fd);
		return "allowed";
	}
	return errno == EROFS ? "EROFS" : strerror(errno);
}

static void showform(void)
{
	fputs("Content-Type: text/html; charset=utf-8\r\n\r\n"
	      "<!doctype html><title>Measurements</title>\n"
	      "<form method=post>\n"
	      "<p>Name <input name=name>\n"
	      "<p>Unit <input name=unit value=m>\n"
	      "<p>Values <input name=values placeholder=\"1.5, 2, 3\">\n"
	      "<p><button>Compute</button>\n"
	      "</form>\n",
	      stdout);
}

int main(void)
{
	static char body[MAXBODY + 1];
	static double v[MAXVALUES];
	static struct fields f;
	/* static: longjmp back into main must find them as they were. */
	static const char *method, *query;
	method = getenv("REQUEST_METHOD");
	query = getenv("QUERY_STRING");
	if (!method)
		method = "GET";

	if (setjmp(failed)) {
		printf("Status: %s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nerror=%s\n", status, why);
		return 0;
	}
	if (!strcmp(method, "POST")) {
		const char *type = getenv("CONTENT_TYPE");
		if (!type || strncmp(type, "application/x-www-form-urlencoded", 33))
			fail(BAD, "POST needs application/x-www-form-urlencoded, not %s", type ? type : "no Content-Type");
		size_t n = fread(body, 1, MAXBODY, stdin);
		body[n] = 0;
		parse(body, &f);
	}
	if (query)
		parse(query, &f);
	if (!f.any) {
		showform();
		return 0;
	}

	int n = numbers(f.values, v);
	if (n == 0)
		fail(BAD, "no values%s", "");
	struct unit u = findunit(f.unit[0] ? f.unit : "m");
	qsort(v, n, sizeof v[0], cmp);
	double sum = 0, sq = 0;
	for (int i = 0; i < n; i++)
		sum += v[i];
	double mean = sum / n;
	for (int i = 0; i < n; i++)
		sq += (v[i] - mean) * (v[i] - mean);
	double median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;

	time_t t = time(NULL);
	if (f.ts[0]) {
		char *end;
		t = (time_t)strtoll(f.ts, &end, 10);
		if (*end)
			fail(BAD, "bad ts \"%s\"", f.ts);
	}
	char date[64];
	struct tm *tm = localtime(&t);
	if (!tm || !strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S, %A, day %j", tm))
		fail("500 Internal Server Error", "cannot format the date %s", f.ts);

	char tmp[128];
	tmpcheck(v, n, tmp, sizeof tmp);

	printf("Content-Type: text/plain; charset=utf-8\r\n\r\n");
	printf("method=%s\n", method);
	printf("name=%s\n", f.name);
	printf("unit=%s (%s, %g m)\n", u.name, u.label, u.metres);
	printf("count=%d\n", n);
	printf("sorted=");
	for (int i = 0; i < n; i++)
		printf("%s%g", i ? " " : "", v[i]);
	printf("\nsum=%g\nmean=%g\nmedian=%g\nstddev=%.6g\n", sum, mean, median, sqrt(sq / n));
	printf("metres=%g\n", sum * u.metres);
	printf("date=%s\n", date);
	printf("tmp=%s\n", tmp);
	printf("app_write=%s\n", appwrite());
	return 0;
}
