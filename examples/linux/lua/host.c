/*
 * lua-host: Lua 5.4 as an hvt app. A static Linux program linked with
 * Debian's liblua5.4.a (liblua5.4-dev) that runs the app's script,
 * /app/main.lua, once per request: the script sees the CGI environment
 * through os.getenv, reads the body with io.read and writes the response
 * with io.write. Modules are found next to it (require "x" loads
 * /app/x.lua); nothing is loaded from C libraries, which a static program
 * cannot open.
 */
#include <stdio.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define SCRIPT "/app/main.lua"

/* oops answers a script that did not run: 500 to the client, the Lua
 * error (with its traceback) to the app's log. */
static int oops(lua_State *L, const char *what)
{
	const char *msg = lua_tostring(L, -1);
	fprintf(stderr, "lua-host: %s: %s\n", what, msg ? msg : "(error object is not a string)");
	fputs("Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nthe Lua script failed\n", stdout);
	return 1;
}

static int traceback(lua_State *L)
{
	luaL_traceback(L, L, lua_tostring(L, 1), 1);
	return 1;
}

int main(int argc, char **argv)
{
	lua_State *L = luaL_newstate();
	if (!L) {
		fputs("Status: 500 Internal Server Error\r\n\r\n", stdout);
		fputs("lua-host: out of memory\n", stderr);
		return 1;
	}
	luaL_openlibs(L);
	/* The app's own modules, and no C modules. */
	lua_getglobal(L, "package");
	lua_pushstring(L, "/app/?.lua;/app/?/init.lua");
	lua_setfield(L, -2, "path");
	lua_pushstring(L, "");
	lua_setfield(L, -2, "cpath");
	lua_pop(L, 1);
	/* arg, as the lua command line gives it: the script is arg[0]. */
	lua_createtable(L, argc, 1);
	lua_pushstring(L, SCRIPT);
	lua_rawseti(L, -2, 0);
	for (int i = 1; i < argc; i++) {
		lua_pushstring(L, argv[i]);
		lua_rawseti(L, -2, i);
	}
	lua_setglobal(L, "arg");

	lua_pushcfunction(L, traceback);
	if (luaL_loadfile(L, SCRIPT) != LUA_OK)
		return oops(L, "loading " SCRIPT);
	if (lua_pcall(L, 0, 0, -2) != LUA_OK)
		return oops(L, SCRIPT);
	fflush(stdout);
	lua_close(L);
	return 0;
}
