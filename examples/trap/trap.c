/* Traps, the way the query string says: "unreachable" (the default),
 * "oob" (a load far beyond memory) or "div0". Each is a fault on every
 * machine kind; wasm reports the trap by name. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
	const char *q = getenv("QUERY_STRING");
	volatile int zero = 0, one = 1;

	printf("Content-Type: text/plain\r\n\r\nabout to trap\n");
	fflush(stdout);
	if (q && strcmp(q, "oob") == 0)
		return *(volatile int *)(uintptr_t)0xFFFFFFF0u;
	if (q && strcmp(q, "div0") == 0)
		return one / zero;
	__builtin_trap();
}
