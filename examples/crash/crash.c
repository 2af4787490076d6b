/* Faults on a write below the image, with a response still unflushed. */
#include <stdio.h>

int main(void)
{
	printf("Content-Type: text/plain\r\n\r\nabout to crash\n");
	*(volatile int *)0x10 = 1;
	return 0;
}
