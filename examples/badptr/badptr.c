/* Hands the monitor a WRITE whose buffer lies outside guest memory. The
 * monitor must reject it (and end the VM) rather than read host memory. */
#include <stdio.h>
#include <dust/dust.h>

int main(void)
{
	struct dust_hc_write w = { DUST_FD_STDOUT, 0xFFFFFFFFF000ull, 16 };

	printf("Content-Type: text/plain\r\n\r\n");
	dust_hypercall(DUST_HC_WRITE, &w);
	printf("badptr: the monitor accepted the bad pointer\n");
	return 1;
}
