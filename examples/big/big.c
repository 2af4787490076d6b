/* Writes a 1 MiB response body in 64 KiB writes: for measuring the time to
 * the first byte of a large response (does output stream, or is it held
 * until the program exits?). */
#include <stdio.h>
#include <string.h>

int main(void)
{
	static char buf[64 * 1024];

	memset(buf, 'x', sizeof buf);
	fputs("Content-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n", stdout);
	fflush(stdout);
	for (int i = 0; i < 16; i++)
		fwrite(buf, 1, sizeof buf, stdout);
	return 0;
}
