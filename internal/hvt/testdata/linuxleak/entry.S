/*
 * The Linux leak program's entry (linux_leak_test.go). leak_entry runs
 * before libc (the program is linked with -e leak_entry) and records the
 * registers exactly as the monitor handed them over, since libc's start-up
 * overwrites most of them; then it goes on to libc's own _start.
 *
 * plant_final is the last act of a planting request: the canary over the
 * whole stack region and in every register class the program can set,
 * then one of the ways out. Assembly, because nothing may run between
 * loading the registers and the final instruction.
 */
#define CAP_AVX    1
#define CAP_AVX512 2
#define CAP_FSGS   4
#define CAP_BW     8

	.text
	.globl leak_entry
	.type leak_entry, @function
leak_entry:
	movq %rax, entry_regs+0(%rip)
	movq %rbx, entry_regs+8(%rip)
	movq %rcx, entry_regs+16(%rip)
	movq %rdx, entry_regs+24(%rip)
	movq %rsi, entry_regs+32(%rip)
	movq %rdi, entry_regs+40(%rip)
	movq %rbp, entry_regs+48(%rip)
	movq %rsp, entry_regs+56(%rip)
	movq %r8, entry_regs+64(%rip)
	movq %r9, entry_regs+72(%rip)
	movq %r10, entry_regs+80(%rip)
	movq %r11, entry_regs+88(%rip)
	movq %r12, entry_regs+96(%rip)
	movq %r13, entry_regs+104(%rip)
	movq %r14, entry_regs+112(%rip)
	movq %r15, entry_regs+120(%rip)
	pushfq
	popq entry_regs+128(%rip)
	movw %cs, entry_sels+0(%rip)
	movw %ds, entry_sels+2(%rip)
	movw %es, entry_sels+4(%rip)
	movw %fs, entry_sels+6(%rip)
	movw %gs, entry_sels+8(%rip)
	movw %ss, entry_sels+10(%rip)
	fxsave64 entry_fx(%rip)
	rdtsc
	movl %eax, entry_tsc(%rip)
	movl %edx, entry_tsc+4(%rip)
	/* argv[1] says what this CPU lets CPL3 run (the test probed it):
	 * 'x' at [0] XGETBV/XSAVE, 'f' at [1] RDFSBASE. Without them these
	 * instructions fault, so they cannot be tried blindly. */
	cmpq $2, (%rsp)
	jb 2f
	movq 16(%rsp), %rsi
	cmpb $'x', (%rsi)
	jne 1f
	xorl %ecx, %ecx
	xgetbv
	movl %eax, entry_xcr0(%rip)
	xsave64 entry_xs(%rip)
	movl $1, entry_have_xs(%rip)
1:	cmpb $'f', 1(%rsi)
	jne 2f
	rdfsbase %rax
	movq %rax, entry_fsgs(%rip)
	rdgsbase %rax
	movq %rax, entry_fsgs+8(%rip)
	movl $1, entry_have_fsgs(%rip)
2:	movq entry_regs+24(%rip), %rdx /* glibc's _start takes rtld_fini here */
	jmp _start
	.size leak_entry, . - leak_entry

/* long leak_clone(flags, stack, word, canary, tls): a raw thread clone.
 * The child never returns: it fills its registers with the canary and
 * waits on *word (0) for a wake that never comes. */
	.globl leak_clone
	.type leak_clone, @function
leak_clone:
	pushq %rbx
	movq %rdx, %rbx
	movq %rcx, %r9
	xorl %edx, %edx
	xorl %r10d, %r10d
	movl $56, %eax
	syscall
	testq %rax, %rax
	jz 1f
	popq %rbx
	ret
1:	movq %r9, %xmm0
	punpcklqdq %xmm0, %xmm0
	movdqa %xmm0, %xmm1
	movdqa %xmm0, %xmm2
	movdqa %xmm0, %xmm3
	movdqa %xmm0, %xmm4
	movdqa %xmm0, %xmm5
	movdqa %xmm0, %xmm6
	movdqa %xmm0, %xmm7
	movdqa %xmm0, %xmm8
	movdqa %xmm0, %xmm15
	movq %r9, %rbp
	movq %r9, %r8
	movq %r9, %r12
	movq %r9, %r13
	movq %r9, %r14
	movq %r9, %r15
2:	movq %rbx, %rdi
	movl $128, %esi /* FUTEX_WAIT_PRIVATE */
	xorl %edx, %edx
	xorl %r10d, %r10d
	movl $202, %eax
	syscall
	jmp 2b
	.size leak_clone, . - leak_clone

/* void plant_final(const struct final *f): see leak.c for struct final. */
	.globl plant_final
	.type plant_final, @function
plant_final:
	movq 0(%rdi), %r8    /* canary */
	movq 24(%rdi), %r9   /* slot */
	movq 32(%rdi), %r10  /* mode */
	movq 40(%rdi), %rbx  /* caps */
	movq 48(%rdi), %r12  /* selectors */
	movq 56(%rdi), %r13  /* FS base: a canary-filled TLS block */
	movq 64(%rdi), %r14  /* GS base */
	movq 72(%rdi), %r15  /* big */
	movq 80(%rdi), %rbp  /* heap */
	movq 16(%rdi), %rcx
	movq 8(%rdi), %rdi
	subq %rdi, %rcx
	shrq $3, %rcx
	movq %r8, %rax
	cld
	rep stosq
	/* What the tails need, where they can reach it with RSP gone. */
	movq %rbp, tail_heap(%rip)
	movq %r15, tail_big(%rip)
	movl %r8d, tail_word(%rip)
	movq $1000000, tail_ts(%rip)
	movq $0, tail_ts+8(%rip)

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
	testq $CAP_AVX, %rbx
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
	testq $CAP_AVX512, %rbx
	jz 1f
	vpbroadcastq %r8, %zmm0
	vmovdqa64 %zmm0, %zmm1
	vmovdqa64 %zmm0, %zmm7
	vmovdqa64 %zmm0, %zmm15
	vmovdqa64 %zmm0, %zmm16
	vmovdqa64 %zmm0, %zmm17
	vmovdqa64 %zmm0, %zmm23
	vmovdqa64 %zmm0, %zmm24
	vmovdqa64 %zmm0, %zmm31
	testq $CAP_BW, %rbx
	jnz 2f
	kmovw %r8d, %k1
	kmovw %r8d, %k7
	jmp 1f
2:	kmovq %r8, %k0
	kmovq %r8, %k1
	kmovq %r8, %k7
1:
	/* ds, es, fs, gs selectors (16 bits each); loading fs resets its
	 * base, so the base is set after. */
	movw %r12w, %ds
	shrq $16, %r12
	movw %r12w, %es
	shrq $16, %r12
	movw %r12w, %fs
	shrq $16, %r12
	movw %r12w, %gs
	movl $158, %eax      /* arch_prctl(ARCH_SET_FS, tls) */
	movl $0x1002, %edi
	movq %r13, %rsi
	syscall
	testq $CAP_FSGS, %rbx
	jz 1f
	wrgsbase %r14
1:
	movq %r9, %rsp
	/* Tails sit 128 bytes apart: a table of addresses would be data,
	 * which the fill has overwritten by now. */
	cmpq $15, %r10
	jbe 1f
	movl $3, %r10d
1:	shlq $7, %r10
	leaq t_exit0(%rip), %rax
	addq %r10, %rax
	jmp *%rax

/* The canary in every general register, the chosen RFLAGS, RSP = the
 * canary (non-canonical: nothing can use the stack any more), then the
 * tail loads only what its final instruction needs. */
#define GPRS \
	movq 24(%rsp), %rbx; movq %rbx, %rcx; movq %rbx, %rsi; movq %rbx, %rdi; \
	movq %rbx, %rbp; movq %rbx, %r8; movq %rbx, %r9; movq %rbx, %r10; \
	movq %rbx, %r11; movq %rbx, %r12; movq %rbx, %r13; movq %rbx, %r14; \
	movq %rbx, %r15; movq %rbx, %rax; movq %rbx, %rdx; \
	popfq; movq %rbx, %rsp

	.balign 128
t_exit0:	GPRS; movl $231, %eax; movl $0, %edi; syscall; ud2
	.balign 128
t_exit3:	GPRS; movl $231, %eax; movl $3, %edi; syscall; ud2
	.balign 128
t_abort:	GPRS; movl $234, %eax; movl $2, %edi; movl $2, %esi; movl $6, %edx; syscall; ud2
	.balign 128
t_ud2:		GPRS; ud2
	.balign 128
t_gp:		GPRS; movq (%rbx), %rax
	.balign 128
t_text:		GPRS; movb $0, t_text(%rip)
	.balign 128
t_spin:		GPRS; movl $1, %eax; movl $2, %edi; movq tail_heap(%rip), %rsi; movl $1, %edx; syscall; 1: jmp 1b
	.balign 128
t_out:		GPRS; movl $1, %eax; movl $1, %edi; movq tail_heap(%rip), %rsi; movq tail_big(%rip), %rdx; syscall; ud2
	.balign 128
t_futex:	GPRS; movl $202, %eax; leaq tail_word(%rip), %rdi; movl $128, %esi; movl tail_word(%rip), %edx; movl $0, %r10d; syscall; ud2
	.balign 128
t_exit:		GPRS; movl $60, %eax; movl $0, %edi; syscall; ud2
	.balign 128
t_hlt:		GPRS; hlt
	.balign 128
t_int3:		GPRS; int3
	.balign 128
t_step:		GPRS; nop; nop
	.balign 128
t_pause:	GPRS; movl $34, %eax; syscall; ud2
	.balign 128
t_sleep:	GPRS; movl $1, %eax; movl $2, %edi; movq tail_heap(%rip), %rsi; movl $1, %edx; syscall
		movl $35, %eax; leaq tail_ts(%rip), %rdi; movl $0, %esi; syscall; ud2
	.balign 128
t_div:		GPRS; divq qzero(%rip)
	.size plant_final, . - plant_final

	.section .rodata
	.balign 8
dzero:	.quad 0
qzero:	.quad 0

	.data
	.balign 16
tail_heap:	.quad 0
tail_big:	.quad 0
tail_ts:	.quad 0, 0
tail_word:	.long 0

	.bss
	.balign 64
	.globl entry_regs, entry_sels, entry_fx, entry_xs, entry_tsc, entry_xcr0, entry_have_xs, entry_fsgs, entry_have_fsgs
entry_xs:	.zero 4096
entry_fx:	.zero 512
entry_regs:	.zero 136
entry_fsgs:	.zero 16
entry_tsc:	.zero 8
entry_sels:	.zero 12
entry_xcr0:	.zero 4
entry_have_xs:	.zero 4
entry_have_fsgs: .zero 4

	.section .note.GNU-stack, "", @progbits
