/* Spins forever without a single VM exit: only the monitor's timeout ends it. */
int main(void)
{
	for (;;)
		__asm__ volatile("");
}
