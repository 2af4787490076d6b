/* Counts requests in a global and in the heap. A fresh machine per request
 * means both always read 1: if either reads more, state leaked. */
#include <stdio.h>
#include <stdlib.h>

static int counter;

int main(void)
{
	static int *heap;

	counter++;
	if (!heap && !(heap = calloc(1, sizeof *heap)))
		return 1;
	++*heap;
	printf("Content-Type: text/plain\r\n\r\ncounter=%d heap=%d\n", counter, *heap);
	return 0;
}
