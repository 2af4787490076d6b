/* Private interfaces shared between libdust's source files. */
#ifndef DUST_INTERNAL_H
#define DUST_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <dust/dust.h>

struct __dust_file {
	int fd;
	int flags;            /* F_EOF, F_ERR */
	unsigned char *buf;
	size_t cap;
	size_t len;           /* output: bytes waiting in buf */
	const unsigned char *rpos, *rend; /* input: unread bytes */
	int unget;            /* input: ungetc() slot, -1 when empty */
};
#define F_EOF 1
#define F_ERR 2

extern struct __dust_file __dust_stdin, __dust_stdout, __dust_stderr;

extern const struct dust_boot_info *__dust_boot;
extern uint64_t __dust_tsc_start;
extern char **environ;

void __dust_heap_init(uintptr_t start, uintptr_t end);
void __dust_stdio_init(const struct dust_boot_info *bi);
void __dust_random_init(const uint8_t seed[32]);

/* Ends the machine with the given reason, handing the unflushed stdout and
 * stderr bytes to the monitor in the same exit. */
_Noreturn void __dust_exit(int status, unsigned reason);
/* Appends to the stderr buffer, then ends the machine with reason ABORT. */
_Noreturn void __dust_panic(const char *msg);

/* printf engine: sends the output to put() in pieces, returns its length. */
typedef void (*__dust_sink)(void *ctx, const char *s, size_t n);
int __dust_vformat(__dust_sink put, void *ctx, const char *fmt, va_list ap);

void __dust_chacha20_block(const uint32_t key[8], uint32_t counter,
                           const uint32_t nonce[3], uint32_t out[16]);

#endif
