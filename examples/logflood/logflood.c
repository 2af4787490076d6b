/* Writes an endless log: the monitor's stderr limit must stop it. */
#include <stdio.h>

int main(void)
{
	printf("Content-Type: text/plain\r\n\r\nlogging forever\n");
	for (unsigned long i = 0;; i++)
		fprintf(stderr, "log line %lu: the quick brown fox jumps over the lazy dog\n", i);
}
