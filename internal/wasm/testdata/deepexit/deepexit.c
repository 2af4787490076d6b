/* Answers, then ends the way QUERY_STRING says: "exit" calls exit(0)
 * from 200 frames down, "trap" traps there, anything else returns from
 * main. What ending a run costs should not depend on how deep the guest
 * is when it ends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int mode; /* 0 return, 1 exit, 2 trap */

__attribute__((noinline)) static int descend(int n)
{
	if (n == 0) {
		if (mode == 1)
			exit(0);
		if (mode == 2)
			__builtin_trap();
		return 0;
	}
	/* Not a tail call: every level stays on the stack. */
	return descend(n - 1) + n;
}

int main(void)
{
	const char *q = getenv("QUERY_STRING");
	if (q && strcmp(q, "exit") == 0)
		mode = 1;
	if (q && strcmp(q, "trap") == 0)
		mode = 2;
	printf("Content-Type: text/plain\r\n\r\ndeep\n");
	fflush(stdout); /* a trap ends the run without flushing */
	return descend(200) == 200 * 201 / 2 ? 0 : 1;
}
