/* Allocates and touches 1 MiB blocks until the memory limit ends it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each block escapes through here, so that a compiler that knows malloc
 * (clang does) cannot drop the allocations as unused. */
static char *volatile last;

int main(void)
{
	printf("Content-Type: text/plain\r\n\r\n");
	for (unsigned long i = 0;; i++) {
		char *p = malloc(1 << 20);
		if (!p) {
			printf("malloc returned NULL after %lu MiB\n", i);
			return 1;
		}
		memset(p, (int)i, 1 << 20);
		last = p;
	}
}
