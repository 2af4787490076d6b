/* Force-included into every Lua source file (-include): what WASI
 * preview 1 lacks, said the way luaconf.h and loslib.c let one say it. */
#ifndef DUST_LUA_WASI_CONFIG_H
#define DUST_LUA_WASI_CONFIG_H

/* No processes and no writable files: wasi-libc declares system and
 * tmpfile but has neither, so Lua's calls go to stand-ins (wasi/lwasi.c)
 * that fail the way C allows: os.execute() says there is no shell,
 * io.tmpfile() returns nil with the error. Before <stdio.h> and
 * <stdlib.h>, so that their declarations are renamed too. */
#define system dust_lua_system
#define tmpfile dust_lua_tmpfile
/* No temporary files (the guest's filesystem is read-only): os.tmpname
 * fails, with Lua's own "unable to generate a unique filename". */
#define LUA_TMPNAMBUFSIZE 32
#define lua_tmpnam(b, e) { (b)[0] = '\0'; e = 1; }

#endif
