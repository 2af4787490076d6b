/* dust_ready(): the snapshot point. It lives in its own object file with
 * the ready note, so that exactly the programs that call it carry the note
 * (static linking pulls this file in only then) and the monitor snapshots
 * only those: a program without a ready point is never run at deploy. */
#include <stdint.h>
#include "dust_internal.h"

__asm__(".pushsection .note.dust.ready, \"a\", @note\n"
        ".balign 4\n"
        ".long 5\n"          /* namesz: "Dust" plus NUL */
        ".long 0\n"          /* descsz */
        ".long 0x52545344\n" /* DUST_NOTE_READY: "DSTR" */
        ".asciz \"Dust\"\n"
        ".balign 4\n"
        ".popsection\n");

static uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

int dust_ready(char ***argv)
{
	dust_hypercall(DUST_HC_READY, 0);
	/* Everything below is the request's: the monitor has placed it in
	 * the boot info of this (restored or fresh) machine. */
	const struct dust_boot_info *bi = __dust_boot;
	__dust_tsc_start = rdtsc();
	environ = (char **)(uintptr_t)bi->envp;
	__dust_stdio_init(bi);
	__dust_random_init(bi->random);
	if (argv)
		*argv = (char **)(uintptr_t)bi->argv;
	return (int)bi->argc;
}
