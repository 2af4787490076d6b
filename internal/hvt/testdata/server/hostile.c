/*
 * A hostile server app: $CASE says how it misbehaves once it listens on
 * $PORT. Each case must get its typed outcome and cost only its request.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static int listener(void)
{
	const char *port = getenv("PORT");
	int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port ? atoi(port) : 8080)};
	if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 8) < 0) {
		perror("listen");
		exit(1);
	}
	return s;
}

static void reply(int c, const char *body)
{
	char out[512];
	int n = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s", strlen(body), body);
	write(c, out, (size_t)n);
}

int main(void)
{
	const char *c = getenv("CASE");
	c = c ? c : "";
	if (!strcmp(c, "never-listen")) {
		for (;;)
			pause();
	}
	int s = listener();
	if (!strcmp(c, "listen-exit"))
		return 3;
	if (!strcmp(c, "socket-bomb") || !strcmp(c, "epoll-bomb")) {
		/* Thousands of objects: the guest hits its bounds, the host does not grow. */
		int made = 0, err = 0;
		for (int i = 0; i < 5000; i++) {
			int fd = !strcmp(c, "socket-bomb") ? socket(AF_INET, SOCK_STREAM, 0) : epoll_create1(0);
			if (fd < 0) {
				err = errno;
				break;
			}
			made++;
		}
		char body[64];
		snprintf(body, sizeof body, "made %d, then errno %d\n", made, err);
		for (;;) {
			int cl = accept(s, NULL, NULL);
			char buf[4096];
			read(cl, buf, sizeof buf);
			reply(cl, body);
			close(cl);
		}
	}
	for (;;) {
		int cl = accept(s, NULL, NULL);
		if (cl < 0)
			return 1;
		char buf[4096];
		read(cl, buf, sizeof buf);
		if (!strcmp(c, "no-answer")) {
			for (;;)
				pause(); /* holds the connection: the deadline ends it */
		} else if (!strcmp(c, "garbage")) {
			write(cl, "this is not HTTP\r\n\r\n", 20);
		} else if (!strcmp(c, "forever")) {
			static char junk[65536];
			write(cl, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 38);
			for (;;)
				if (write(cl, junk, sizeof junk) < 0)
					return 4;
		} else if (!strcmp(c, "connect")) {
			int o = socket(AF_INET, SOCK_STREAM, 0);
			struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(80)};
			a.sin_addr.s_addr = htonl(0x01010101);
			int r = connect(o, (struct sockaddr *)&a, sizeof a);
			char body[64];
			snprintf(body, sizeof body, "connect %d errno %d\n", r, r < 0 ? errno : 0);
			reply(cl, body);
		} else if (!strcmp(c, "exit-mid")) {
			write(cl, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", 47);
			_exit(5);
		}
		close(cl);
	}
}
