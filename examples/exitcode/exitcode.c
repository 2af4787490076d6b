/* A normal response, but main returns 3. */
#include <stdio.h>

int main(void)
{
	printf("Content-Type: text/plain\r\n\r\nexiting with status 3\n");
	return 3;
}
