/* What Lua needs from C that WASI preview 1's libc does not have; see
 * config.h and setjmp.h beside this file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "lua.h"

int system(const char *cmd)
{
	/* "Is there a shell?" No; any command fails. */
	if (cmd == NULL)
		return 0;
	errno = ENOSYS;
	return -1;
}

FILE *tmpfile(void)
{
	errno = ENOTSUP;
	return NULL;
}

_Noreturn void dust_lua_throw(lua_State *L, int status)
{
	const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
	switch (status) {
	case LUA_YIELD:
		msg = "attempt to yield: coroutines cannot yield here (no setjmp in WASI preview 1's libc)";
		break;
	case LUA_ERRMEM:
		msg = "not enough memory";
		break;
	}
	fprintf(stderr, "lua: %s\n", msg ? msg : "error object is not a string");
	exit(1);
}
