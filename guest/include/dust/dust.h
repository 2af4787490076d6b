/* Dust-specific API of libdust. */
#ifndef DUST_DUST_H
#define DUST_DUST_H

#include <stddef.h>
#include <stdint.h>
#include <dust/abi.h>

/* Issue hypercall nr with the argument struct at arg, which must be 8-byte
 * aligned guest memory below 4 GiB (a stack or static object is). The
 * "memory" clobber matters both ways: the monitor reads what we stored
 * before the exit and may store into *arg (DUST_HC_READ's ret). */
static inline void dust_hypercall(unsigned nr, void *arg)
{
	__asm__ volatile("outl %0, %1"
	                 :
	                 : "a"((uint32_t)(uintptr_t)arg), "d"((uint16_t)(DUST_PORT_BASE + nr))
	                 : "memory");
}

/* The boot info the monitor placed at DUST_BOOT_INFO (read-only). */
const struct dust_boot_info *dust_boot_info(void);

/* Register state captured by crt0 before anything else ran, so a program
 * can check that nothing leaks in from an earlier request. Index with the
 * DUST_REG_* constants; xmm registers are two words each, low word first. */
enum {
	DUST_REG_RAX, DUST_REG_RBX, DUST_REG_RCX, DUST_REG_RDX,
	DUST_REG_RSI, DUST_REG_RDI, DUST_REG_RBP, DUST_REG_RSP,
	DUST_REG_R8, DUST_REG_R9, DUST_REG_R10, DUST_REG_R11,
	DUST_REG_R12, DUST_REG_R13, DUST_REG_R14, DUST_REG_R15,
	DUST_REG_RFLAGS, DUST_REG_MXCSR,
	DUST_REG_XMM0 = 18,  /* xmm n is at DUST_REG_XMM0 + 2n, + 2n + 1 */
	DUST_ENTRY_NREGS = 18 + 32
};
extern uint64_t __dust_entry_regs[DUST_ENTRY_NREGS];

/* Marks the end of the program's initialisation (DUST_HC_READY): the
 * monitor snapshots the machine here when it prepares the image, so every
 * request starts from this point and start-up work is paid once per deploy,
 * not per request. Returns the request's argc and sets *argv (if argv is
 * not NULL); from then on environ, getenv, stdin, the clocks and
 * dust_random are the request's. Output written before it is the
 * snapshot's and is sent with every response; call it before printing.
 * A second call in the same request does nothing but cost a VM exit. */
int dust_ready(char ***argv);

/* Fill buf with n cryptographically strong random bytes (ChaCha20 keyed
 * from the per-request boot random bytes). Never fails, never exits. */
void dust_random(void *buf, size_t n);

#endif
