#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "dust_internal.h"

static void (*handlers[32])(void);
static int nhandlers;

int atexit(void (*fn)(void))
{
	if (nhandlers == (int)(sizeof handlers / sizeof handlers[0]))
		return -1;
	handlers[nhandlers++] = fn;
	return 0;
}

extern void (*__fini_array_start[])(void) __attribute__((visibility("hidden")));
extern void (*__fini_array_end[])(void) __attribute__((visibility("hidden")));

_Noreturn void exit(int status)
{
	while (nhandlers > 0)
		handlers[--nhandlers]();
	for (void (**f)(void) = __fini_array_end; f > __fini_array_start;)
		(*--f)();
	__dust_exit(status, DUST_EXIT_NORMAL);
}

/* Unlike POSIX, these still deliver buffered output: write() shares the
 * stdio buffers, so dropping them would lose data the program was told had
 * been written. */
_Noreturn void _Exit(int status) { __dust_exit(status, DUST_EXIT_NORMAL); }
_Noreturn void _exit(int status) { __dust_exit(status, DUST_EXIT_NORMAL); }

_Noreturn void abort(void) { __dust_exit(134, DUST_EXIT_ABORT); }

_Noreturn void __dust_panic(const char *msg)
{
	fputs(msg, stderr);
	abort();
}

_Noreturn void __dust_assert_fail(const char *expr, const char *file, int line, const char *func)
{
	fprintf(stderr, "%s:%d: %s: Assertion `%s' failed.\n", file, line, func, expr);
	abort();
}
