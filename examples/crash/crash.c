/* Faults on a write below the image, with a response still unflushed. */
#include <stdio.h>

int main(void)
{
	/* Through a volatile pointer so gcc neither warns nor folds the store. */
	volatile int *volatile bad = (volatile int *)0x10;

	printf("Content-Type: text/plain\r\n\r\nabout to crash\n");
	*bad = 1;
	return 0;
}
