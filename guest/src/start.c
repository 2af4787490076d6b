#include <stdlib.h>
#include "dust_internal.h"

const struct dust_boot_info *__dust_boot;
char **environ;

extern void (*__init_array_start[])(void) __attribute__((visibility("hidden")));
extern void (*__init_array_end[])(void) __attribute__((visibility("hidden")));

int main(int argc, char **argv, char **envp);
_Noreturn void __dust_start(const struct dust_boot_info *bi);

const struct dust_boot_info *dust_boot_info(void)
{
	return __dust_boot;
}

_Noreturn void __dust_start(const struct dust_boot_info *bi)
{
	/* Running against a layout we do not understand would misread every
	 * field; faulting ends the request at once with a clear monitor error. */
	if (bi->magic != DUST_BOOT_MAGIC || bi->abi_version != DUST_ABI_VERSION)
		__builtin_trap();
	__dust_boot = bi;
	environ = (char **)(uintptr_t)bi->envp;
	__dust_stdio_init(bi);
	__dust_random_init(bi->random);
	for (void (**f)(void) = __init_array_start; f < __init_array_end; f++)
		(*f)();
	exit(main((int)bi->argc, (char **)(uintptr_t)bi->argv, environ));
}

