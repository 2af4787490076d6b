/* Entry point. The monitor starts us with RSP = stack_top, RDI = boot info
 * and every other register zero. Before touching anything we record the
 * registers exactly as they arrived (so a test can prove nothing leaks from
 * an earlier request); the stores are RIP-relative so they need no scratch
 * register. RAX and RDX go first because rdtsc overwrites them, and rdtsc
 * comes before everything else so the clock baseline is as close to the
 * monitor's realtime_ns sample as possible. */

#define REG(n) __dust_entry_regs+8*n(%rip)

	.text
	.globl _start
	.type _start, @function
_start:
	movq %rax, REG(0)
	movq %rdx, REG(3)
	rdtsc
	movl %eax, __dust_tsc_start(%rip)
	movl %edx, __dust_tsc_start+4(%rip)
	/* rflags before any arithmetic changes it. */
	pushfq
	popq %rax
	movq %rax, REG(16)
	stmxcsr REG(17)
	movq %rbx, REG(1)
	movq %rcx, REG(2)
	movq %rsi, REG(4)
	movq %rdi, REG(5)
	movq %rbp, REG(6)
	movq %rsp, REG(7)
	movq %r8, REG(8)
	movq %r9, REG(9)
	movq %r10, REG(10)
	movq %r11, REG(11)
	movq %r12, REG(12)
	movq %r13, REG(13)
	movq %r14, REG(14)
	movq %r15, REG(15)
	movups %xmm0, REG(18)
	movups %xmm1, REG(20)
	movups %xmm2, REG(22)
	movups %xmm3, REG(24)
	movups %xmm4, REG(26)
	movups %xmm5, REG(28)
	movups %xmm6, REG(30)
	movups %xmm7, REG(32)
	movups %xmm8, REG(34)
	movups %xmm9, REG(36)
	movups %xmm10, REG(38)
	movups %xmm11, REG(40)
	movups %xmm12, REG(42)
	movups %xmm13, REG(44)
	movups %xmm14, REG(46)
	movups %xmm15, REG(48)
	/* The ABI promises a 16-byte aligned stack_top; do not rely on it,
	 * since misalignment would fault on the first aligned SSE spill. */
	andq $-16, %rsp
	xorl %ebp, %ebp
	/* RDI still holds the boot info pointer: it is the first argument. */
	call __dust_start
	ud2
	.size _start, . - _start

	.bss
	.balign 16
	.globl __dust_entry_regs
	.type __dust_entry_regs, @object
__dust_entry_regs:
	.zero 8*50
	.size __dust_entry_regs, . - __dust_entry_regs
	.globl __dust_tsc_start
	.type __dust_tsc_start, @object
__dust_tsc_start:
	.zero 8
	.size __dust_tsc_start, 8

/* The note that marks this image as a Dust guest, ABI version 1 (values as
 * in <dust/abi.h>, which assembly cannot include). */
	.section .note.dust.abi, "a", @note
	.balign 4
	.long 5               /* namesz: "Dust" plus NUL */
	.long 8               /* descsz */
	.long 0x31545344      /* DUST_NOTE_TYPE */
	.asciz "Dust"
	.balign 4
	.long 1               /* abi_version = DUST_ABI_VERSION */
	.long 0               /* reserved */

	.section .note.GNU-stack, "", @progbits
