/*
 * The last stage of the leak adversary (leak.c): fills the whole stack
 * region with the canary, loads the canary (or an odd value) into every
 * register class the guest can set at CPL3, and leaves the machine in the
 * way the mode asks. Written in assembly because nothing may run between
 * loading the registers and the final instruction: a C epilogue or a
 * call would overwrite what is to be left behind.
 *
 * void plant_final(const struct final *f), never returns. struct final
 * (all 64-bit, see leak.c): canary, stack_lo, stack_hi, slot, mode, caps,
 * sels, fsbase, gsbase. slot points at guest memory outside the stack
 * that leak.c prepared: [0] RFLAGS to leave, [8] RAX, [16] RDX (the
 * hypercall pointer and port, canary bits above), [24] the canary,
 * [32] x87 control word, [36] MXCSR.
 */
#define CAP_AVX    1
#define CAP_AVX512 2
#define CAP_FSGS   4
#define CAP_BW     8

	.text
	.globl plant_final
	.type plant_final, @function
plant_final:
	movq 0(%rdi), %r8
	movq 24(%rdi), %r9
	movq 32(%rdi), %r10
	movq 40(%rdi), %r11
	movq 48(%rdi), %r12
	movq 56(%rdi), %r13
	movq 64(%rdi), %r14
	movq 16(%rdi), %rcx
	movq 8(%rdi), %rdi
	subq %rdi, %rcx
	shrq $3, %rcx
	movq %r8, %rax
	cld
	rep stosq

	/* x87: seven canaries and an infinity from a masked divide by zero
	 * (sticky ZE in the status word, FIP/FDP pointing here), then the
	 * odd control word. */
	fildq 24(%r9)
	fildq 24(%r9)
	fildq 24(%r9)
	fildq 24(%r9)
	fildq 24(%r9)
	fildq 24(%r9)
	fildq 24(%r9)
	fld1
	fdivl dzero(%rip)
	fldcw 32(%r9)
	ldmxcsr 36(%r9)

	movq %r8, %xmm0
	punpcklqdq %xmm0, %xmm0
	movdqa %xmm0, %xmm1
	movdqa %xmm0, %xmm2
	movdqa %xmm0, %xmm3
	movdqa %xmm0, %xmm4
	movdqa %xmm0, %xmm5
	movdqa %xmm0, %xmm6
	movdqa %xmm0, %xmm7
	movdqa %xmm0, %xmm8
	movdqa %xmm0, %xmm9
	movdqa %xmm0, %xmm10
	movdqa %xmm0, %xmm11
	movdqa %xmm0, %xmm12
	movdqa %xmm0, %xmm13
	movdqa %xmm0, %xmm14
	movdqa %xmm0, %xmm15
	testq $CAP_AVX, %r11
	jz 1f
	vinsertf128 $1, %xmm0, %ymm0, %ymm0
	vmovdqa %ymm0, %ymm1
	vmovdqa %ymm0, %ymm2
	vmovdqa %ymm0, %ymm3
	vmovdqa %ymm0, %ymm4
	vmovdqa %ymm0, %ymm5
	vmovdqa %ymm0, %ymm6
	vmovdqa %ymm0, %ymm7
	vmovdqa %ymm0, %ymm8
	vmovdqa %ymm0, %ymm9
	vmovdqa %ymm0, %ymm10
	vmovdqa %ymm0, %ymm11
	vmovdqa %ymm0, %ymm12
	vmovdqa %ymm0, %ymm13
	vmovdqa %ymm0, %ymm14
	vmovdqa %ymm0, %ymm15
	testq $CAP_AVX512, %r11
	jz 1f
	vpbroadcastq %r8, %zmm0
	vmovdqa64 %zmm0, %zmm1
	vmovdqa64 %zmm0, %zmm2
	vmovdqa64 %zmm0, %zmm3
	vmovdqa64 %zmm0, %zmm4
	vmovdqa64 %zmm0, %zmm5
	vmovdqa64 %zmm0, %zmm6
	vmovdqa64 %zmm0, %zmm7
	vmovdqa64 %zmm0, %zmm8
	vmovdqa64 %zmm0, %zmm9
	vmovdqa64 %zmm0, %zmm10
	vmovdqa64 %zmm0, %zmm11
	vmovdqa64 %zmm0, %zmm12
	vmovdqa64 %zmm0, %zmm13
	vmovdqa64 %zmm0, %zmm14
	vmovdqa64 %zmm0, %zmm15
	vmovdqa64 %zmm0, %zmm16
	vmovdqa64 %zmm0, %zmm17
	vmovdqa64 %zmm0, %zmm18
	vmovdqa64 %zmm0, %zmm19
	vmovdqa64 %zmm0, %zmm20
	vmovdqa64 %zmm0, %zmm21
	vmovdqa64 %zmm0, %zmm22
	vmovdqa64 %zmm0, %zmm23
	vmovdqa64 %zmm0, %zmm24
	vmovdqa64 %zmm0, %zmm25
	vmovdqa64 %zmm0, %zmm26
	vmovdqa64 %zmm0, %zmm27
	vmovdqa64 %zmm0, %zmm28
	vmovdqa64 %zmm0, %zmm29
	vmovdqa64 %zmm0, %zmm30
	vmovdqa64 %zmm0, %zmm31
	testq $CAP_BW, %r11
	jnz 2f
	kmovw %r8d, %k0
	kmovw %r8d, %k1
	kmovw %r8d, %k2
	kmovw %r8d, %k3
	kmovw %r8d, %k4
	kmovw %r8d, %k5
	kmovw %r8d, %k6
	kmovw %r8d, %k7
	jmp 1f
2:	kmovq %r8, %k0
	kmovq %r8, %k1
	kmovq %r8, %k2
	kmovq %r8, %k3
	kmovq %r8, %k4
	kmovq %r8, %k5
	kmovq %r8, %k6
	kmovq %r8, %k7
1:
	/* Data segment selectors, 16 bits each in r12: ds, es, fs, gs.
	 * Loading fs/gs resets their bases, so the bases come after. */
	movw %r12w, %ds
	shrq $16, %r12
	movw %r12w, %es
	shrq $16, %r12
	movw %r12w, %fs
	shrq $16, %r12
	movw %r12w, %gs
	testq $CAP_FSGS, %r11
	jz 1f
	wrfsbase %r13
	wrgsbase %r14
1:
	movq %r9, %rsp
	leaq tails(%rip), %rax
	jmp *(%rax,%r10,8)

/* Every tail: the canary in every general register but RAX and RDX
 * (which carry the hypercall pointer and port in their low halves), the
 * chosen RFLAGS, RSP = canary, then the final act. */
#define GPRS \
	movq 24(%rsp), %rbx; movq %rbx, %rcx; movq %rbx, %rsi; movq %rbx, %rdi; \
	movq %rbx, %rbp; movq %rbx, %r8; movq %rbx, %r9; movq %rbx, %r10; \
	movq %rbx, %r11; movq %rbx, %r12; movq %rbx, %r13; movq %rbx, %r14; \
	movq %rbx, %r15; movq 8(%rsp), %rax; movq 16(%rsp), %rdx; \
	popfq; movq %rbx, %rsp

t_out:		GPRS; outl %eax, %dx; ud2
t_out_sti:	GPRS; sti; outl %eax, %dx; ud2
t_out_movss:	GPRS; movw ssel(%rip), %ss; outl %eax, %dx; ud2
t_spin:		GPRS; outl %eax, %dx; 1: jmp 1b
t_loop:		GPRS; 1: jmp 1b
t_ud2:		GPRS; ud2
t_int3:		GPRS; int3
t_jmp:		GPRS; jmp *%rbx
t_text:		GPRS; movb $0, t_text(%rip)
t_div:		GPRS; divq qzero(%rip)
t_hlt:		GPRS; hlt
t_syscall:	GPRS; syscall
t_sti_ud2:	GPRS; sti; ud2
/* IN is refused by the monitor (hypercalls are OUTs), which ends the
 * request with the instruction's completion still pending in KVM. If a
 * restore failed to cancel it, the next request would not start at the
 * entry point but here, with this request's RFLAGS: record what arrived
 * and start libdust normally, so the scanner can say so. */
t_in:		GPRS; inl %dx, %eax
	movq %rax, resumed_rax(%rip)
	pushfq
	popq resumed_rflags(%rip)
	movq $1, resumed(%rip)
	movq $0x10000, %rdi
	andq $-16, %rsp
	call __dust_start
	ud2
	.size plant_final, . - plant_final

	.section .rodata
	.balign 8
tails:	.quad t_out, t_out_sti, t_out_movss, t_spin, t_loop, t_ud2, t_int3
	.quad t_jmp, t_text, t_div, t_hlt, t_syscall, t_sti_ud2, t_in
dzero:	.quad 0
qzero:	.quad 0
ssel:	.word 0x1b

	.bss
	.balign 8
	.globl resumed, resumed_rax, resumed_rflags
resumed:	.zero 8
resumed_rax:	.zero 8
resumed_rflags:	.zero 8

	.section .note.GNU-stack, "", @progbits
