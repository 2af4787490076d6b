/* Echoes the CGI request: meta-variables, HTTP_* headers, then the body,
 * streamed so that bodies far larger than memory work. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static const char *env(const char *name)
{
	const char *v = getenv(name);
	return v ? v : "";
}

int main(void)
{
	static char buf[64 * 1024];
	size_t n;

	printf("Content-Type: text/plain\r\n\r\n");
	printf("method=%s\n", env("REQUEST_METHOD"));
	printf("path=%s\n", env("PATH_INFO"));
	printf("query=%s\n", env("QUERY_STRING"));
	printf("content_length=%s\n", env("CONTENT_LENGTH"));
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "HTTP_", 5) == 0)
			printf("header %s\n", *e);
	printf("body:\n");
	while ((n = fread(buf, 1, sizeof buf, stdin)) > 0)
		fwrite(buf, 1, n, stdout);
	return ferror(stdin) ? 1 : 0;
}
