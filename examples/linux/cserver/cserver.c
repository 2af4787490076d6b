/*
 * cserver: a small HTTP/1.1 server in C with the BSD socket API, built
 * with gcc -static. It knows nothing of Dust: it listens on $PORT (8080
 * if unset), accepts one connection at a time, answers and closes. On Dust
 * it is a server app (dust deploy cserver cserver-glibc.elf --serve http):
 * snapshotted at its first accept, one connection per request.
 *
 * Routes: GET / greets, POST /echo returns the body (Content-Length
 * bodies up to 1 MiB), GET /count is always 1 on Dust (each request meets
 * a fresh copy), anything else 404.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXHEAD 16384
#define MAXBODY (1 << 20)

static int served;

static int send_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void respond(int fd, int status, const char *reason, const char *type, const char *body, size_t len)
{
	char head[256];
	int n = snprintf(head, sizeof head,
			 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
			 status, reason, type, len);
	if (send_all(fd, head, (size_t)n) == 0)
		send_all(fd, body, len);
}

static void serve(int fd)
{
	static char buf[MAXHEAD + MAXBODY];
	size_t have = 0;
	char *end = NULL;
	while (!end) {
		if (have == MAXHEAD) {
			respond(fd, 431, "Request Header Fields Too Large", "text/plain", "too large\n", 10);
			return;
		}
		ssize_t r = read(fd, buf + have, MAXHEAD - have);
		if (r <= 0)
			return;
		have += (size_t)r;
		buf[have] = 0;
		end = strstr(buf, "\r\n\r\n");
	}
	char method[16], path[1024];
	if (sscanf(buf, "%15s %1023s", method, path) != 2) {
		respond(fd, 400, "Bad Request", "text/plain", "bad request line\n", 17);
		return;
	}
	size_t body_at = (size_t)(end + 4 - buf), clen = 0;
	for (char *h = strstr(buf, "\r\n"); h && h < end; h = strstr(h + 2, "\r\n"))
		if (strncasecmp(h + 2, "Content-Length:", 15) == 0)
			clen = strtoul(h + 17, NULL, 10);
	if (clen > MAXBODY) {
		respond(fd, 413, "Content Too Large", "text/plain", "body too large\n", 15);
		return;
	}
	while (have < body_at + clen) {
		ssize_t r = read(fd, buf + have, body_at + clen - have);
		if (r <= 0)
			return;
		have += (size_t)r;
	}
	if (strcmp(method, "GET") == 0 && strcmp(path, "/") == 0) {
		const char *msg = "Hello from a C server!\n";
		respond(fd, 200, "OK", "text/plain", msg, strlen(msg));
	} else if (strcmp(method, "POST") == 0 && strcmp(path, "/echo") == 0) {
		respond(fd, 200, "OK", "application/octet-stream", buf + body_at, clen);
	} else if (strcmp(method, "GET") == 0 && strcmp(path, "/count") == 0) {
		char msg[32];
		int n = snprintf(msg, sizeof msg, "%d\n", ++served);
		respond(fd, 200, "OK", "text/plain", msg, (size_t)n);
	} else {
		respond(fd, 404, "Not Found", "text/plain", "not found\n", 10);
	}
}

int main(void)
{
	const char *port = getenv("PORT");
	int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0) {
		perror("socket");
		return 1;
	}
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port ? atoi(port) : 8080)};
	a.sin_addr.s_addr = htonl(INADDR_ANY);
	if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
		perror("bind/listen");
		return 1;
	}
	fprintf(stderr, "cserver listening on :%s\n", port ? port : "8080");
	for (;;) {
		int c = accept(s, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR)
				continue;
			perror("accept");
			return 1;
		}
		serve(c);
		close(c);
	}
}
