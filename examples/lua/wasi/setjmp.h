/* Debian's wasi-libc has no setjmp/longjmp (WebAssembly has no way to
 * unwind to a saved point without the exception-handling proposal), and
 * Lua raises its errors with longjmp. ldo.c includes <setjmp.h> first
 * thing, so this header stands in for it and tells ldo.c how to throw
 * instead: a Lua error that reaches a protected call ends the run, after
 * the message, with status 1, as the stand-alone interpreter does for an
 * error nothing catches. The price is that pcall cannot catch errors and
 * coroutines cannot yield from C (coroutine.yield). */
#ifndef DUST_LUA_WASI_SETJMP_H
#define DUST_LUA_WASI_SETJMP_H

struct lua_State;
_Noreturn void dust_lua_throw(struct lua_State *L, int status);

#define luai_jmpbuf int
#define LUAI_TRY(L, c, a) { a }
#define LUAI_THROW(L, c) dust_lua_throw(L, (c)->status)

#endif
