/* Writes an endless response body: the monitor's output limit must stop it. */
#include <stdio.h>
#include <string.h>

int main(void)
{
	static char xs[4096];
	memset(xs, 'x', sizeof xs);
	printf("Content-Type: text/plain\n\n");
	for (;;)
		fwrite(xs, 1, sizeof xs, stdout);
}
