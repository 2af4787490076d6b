/*
 * Isolation probe. Reports whether anything of an earlier request is
 * visible (memory or registers), then plants "DUST-SECRET<query>" in the
 * heap, the BSS, the stack and the registers, so that if the monitor ever
 * reuses state the next run of this program reports DIRTY.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dust/dust.h>

#define MARK "DUST-SECRET"

static char stash[4096];

static const char *const gpr_names[16] = {
	"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
};

/* Heap pages that were never written are zero; skipping zero pages keeps a
 * scan of a large heap cheap. */
static int dirty(const char *p, size_t n)
{
	const size_t page = 4096, m = sizeof MARK - 1;
	for (size_t off = 0; off < n; off += page) {
		size_t len = n - off < page ? n - off : page;
		const uint64_t *w = (const uint64_t *)(const void *)(p + off);
		uint64_t any = 0;
		for (size_t i = 0; i < len / 8; i++)
			any |= w[i];
		if (!any)
			continue;
		/* Overlap into the next page so a mark across the edge counts. */
		size_t span = len + (n - off - len < m ? n - off - len : m);
		if (memmem(p + off, span, MARK, m))
			return 1;
	}
	return 0;
}

static void note(char *list, const char *name)
{
	if (*list)
		strcat(list, ",");
	strcat(list, name);
}

int main(void)
{
	const struct dust_boot_info *bi = dust_boot_info();
	const uint64_t *r = __dust_entry_regs;
	char bad[256] = "";
	char name[16];

	printf("Content-Type: text/plain\r\n\r\n");

	int mem = dirty((const char *)(uintptr_t)bi->heap_start, bi->heap_end - bi->heap_start) ||
	          dirty(stash, sizeof stash);
	printf("memory=%s\n", mem ? "DIRTY" : "clean");

	for (int i = 0; i < 16; i++) {
		uint64_t want = i == DUST_REG_RSP ? bi->stack_top : i == DUST_REG_RDI ? DUST_BOOT_INFO : 0;
		if (r[i] != want)
			note(bad, gpr_names[i]);
	}
	/* Status flags (CF PF AF ZF SF OF) and TF/DF must come up clear;
	 * IOPL and the reserved bit are set by the ABI. */
	if (r[DUST_REG_RFLAGS] & 0xDD5)
		note(bad, "rflags");
	/* Sticky SSE exception flags would reveal earlier float work. */
	if (r[DUST_REG_MXCSR] & 0x3F)
		note(bad, "mxcsr");
	for (int i = 0; i < 16; i++)
		if (r[DUST_REG_XMM0 + 2 * i] | r[DUST_REG_XMM0 + 2 * i + 1]) {
			snprintf(name, sizeof name, "xmm%d", i);
			note(bad, name);
		}
	if (*bad)
		printf("regs=DIRTY name=%s\n", bad);
	else
		printf("regs=clean\n");

	/* Now leave traces everywhere for the next request to find. */
	const char *q = getenv("QUERY_STRING");
	snprintf(stash, sizeof stash, MARK "%s", q ? q : "");
	size_t len = strlen(stash);
	char *block = malloc(1 << 20);
	static const size_t offs[] = { 0, 4096, 65536, 512 * 1024, (1 << 20) - 128 };
	for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++)
		memcpy(block + offs[i], stash, len < 128 ? len : 128);
	volatile char onstack[256];
	for (size_t i = 0; i < len && i < sizeof onstack; i++)
		onstack[i] = stash[i];

	/* The registers must still hold the secret when the VM stops, so the
	 * load and the EXIT hypercall are one asm statement; the response is
	 * flushed first because this EXIT carries no buffers. */
	fflush(stdout);
	fflush(stderr);
	static struct dust_hc_exit ex = { 0, DUST_EXIT_NORMAL, 0, 0, 0, 0 };
	__asm__ volatile(
		"movq 0(%%rsi), %%r12\n\t"
		"movq 8(%%rsi), %%r13\n\t"
		"movq 16(%%rsi), %%r14\n\t"
		"movq 24(%%rsi), %%r15\n\t"
		"movdqu 0(%%rsi), %%xmm0\n\t"
		"movdqu 16(%%rsi), %%xmm1\n\t"
		"movdqu 32(%%rsi), %%xmm2\n\t"
		"movdqu 48(%%rsi), %%xmm3\n\t"
		"movdqu 64(%%rsi), %%xmm4\n\t"
		"movdqu 80(%%rsi), %%xmm5\n\t"
		"movdqu 96(%%rsi), %%xmm6\n\t"
		"movdqu 112(%%rsi), %%xmm7\n\t"
		"outl %%eax, %%dx"
		:
		: "S"(stash), "a"((uint32_t)(uintptr_t)&ex), "d"((uint16_t)(DUST_PORT_BASE + DUST_HC_EXIT))
		: "r12", "r13", "r14", "r15", "xmm0", "xmm1", "xmm2", "xmm3",
		  "xmm4", "xmm5", "xmm6", "xmm7", "memory");
	__builtin_trap();
}
