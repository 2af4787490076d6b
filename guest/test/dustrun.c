/*
 * dustrun: runs a Dust guest image as a traced host process, for testing
 * libdust without the real monitor. The image is mapped at its link
 * addresses, the boot info is built like the ABI describes, and every
 * `outl` (which faults on the host because IOPL is 0) is caught with ptrace
 * and serviced as a hypercall. It also applies the monitor's image checks.
 *
 *   dustrun [-b body] [-i inline_max] [-m heap_mib] [-t secs] [-o out_limit]
 *           [-l err_limit] [-r report] [-e NAME=VALUE]... image.elf [args]
 *
 * The report file gets one line: reason=... status=... exits=... where
 * reason is normal/abort/oom/fault/timeout/badcall/outlimit/errlimit.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "../include/dust/abi.h"

#define PAGE 4096ul
#define UP(x) (((x) + PAGE - 1) & ~(PAGE - 1))

static unsigned char *img;
static size_t img_len;
static uint64_t image_end, entry;
static unsigned char *body;
static size_t body_len, body_pos;
static size_t inline_max = 64 * 1024;
static uint64_t heap_mib = 64;
static char *envs[256];
static int nenv;
static pid_t child;
static volatile sig_atomic_t timed_out;
static uint64_t mem_lo = DUST_BOOT_INFO, mem_hi;
static uint64_t out_limit = 8 << 20, err_limit = 1 << 20, out_total, err_total;

static void die(const char *m)
{
	fprintf(stderr, "dustrun: %s\n", m);
	exit(2);
}

/* The checks the real monitor makes, so bad images fail here too. */
static void load_check(void)
{
	Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
	int note = 0;
	uint64_t last_end = 0;

	if (img_len < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) ||
	    eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_machine != EM_X86_64 || eh->e_type != ET_EXEC)
		die("not a static x86-64 ELF executable");
	entry = eh->e_entry;
	for (int i = 0; i < eh->e_phnum; i++) {
		Elf64_Phdr *ph = (Elf64_Phdr *)(img + eh->e_phoff + (size_t)i * eh->e_phentsize);
		switch (ph->p_type) {
		case PT_LOAD:
			if (ph->p_vaddr < DUST_IMAGE_BASE || ph->p_vaddr % PAGE)
				die("PT_LOAD below 0x100000 or not page aligned");
			if ((ph->p_flags & PF_W) && (ph->p_flags & PF_X))
				die("PT_LOAD both writable and executable");
			if (ph->p_vaddr < last_end)
				die("PT_LOAD segments share a page or are out of order");
			if (ph->p_filesz > ph->p_memsz || ph->p_offset + ph->p_filesz > img_len)
				die("bad PT_LOAD sizes");
			last_end = UP(ph->p_vaddr + ph->p_memsz);
			break;
		case PT_NOTE: {
			Elf64_Nhdr *nh = (Elf64_Nhdr *)(img + ph->p_offset);
			const char *name = (const char *)(nh + 1);
			const uint32_t *desc = (const uint32_t *)(name + 8);
			if (ph->p_filesz >= 28 && nh->n_namesz == 5 && nh->n_descsz == 8 &&
			    nh->n_type == DUST_NOTE_TYPE && memcmp(name, "Dust", 5) == 0 &&
			    desc[0] == DUST_ABI_VERSION && desc[1] == 0)
				note = 1;
			break;
		}
		case PT_INTERP: case PT_DYNAMIC: case PT_TLS:
			die("PT_INTERP/PT_DYNAMIC/PT_TLS not allowed");
		}
	}
	if (!note)
		die("missing Dust ABI note");
	image_end = last_end;
}

static void *map(uint64_t at, uint64_t len)
{
	void *p = mmap((void *)at, len, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != (void *)at)
		die("cannot map guest memory");
	return p;
}

extern void enter_guest(uint64_t entry, uint64_t sp);
/* Clears every register and flag the way the monitor does, then jumps
 * through the stack so no scratch register is left holding anything. */
__asm__(".text\n"
        "enter_guest:\n"
        "  movq %rsi, %rsp\n"
        "  pushq %rdi\n"
        "  pushq $0x202\n"
        "  popfq\n"
        "  movl $0x1f80, -8(%rsp)\n"
        "  ldmxcsr -8(%rsp)\n"
        "  movq $0, -8(%rsp)\n"
        "  fninit\n"
        "  movl $0, %eax\n movl $0, %ebx\n movl $0, %ecx\n movl $0, %edx\n"
        "  movl $0, %esi\n movl $0x10000, %edi\n movl $0, %ebp\n"
        "  movl $0, %r8d\n movl $0, %r9d\n movl $0, %r10d\n movl $0, %r11d\n"
        "  movl $0, %r12d\n movl $0, %r13d\n movl $0, %r14d\n movl $0, %r15d\n"
        "  pxor %xmm0, %xmm0\n pxor %xmm1, %xmm1\n pxor %xmm2, %xmm2\n pxor %xmm3, %xmm3\n"
        "  pxor %xmm4, %xmm4\n pxor %xmm5, %xmm5\n pxor %xmm6, %xmm6\n pxor %xmm7, %xmm7\n"
        "  pxor %xmm8, %xmm8\n pxor %xmm9, %xmm9\n pxor %xmm10, %xmm10\n pxor %xmm11, %xmm11\n"
        "  pxor %xmm12, %xmm12\n pxor %xmm13, %xmm13\n pxor %xmm14, %xmm14\n pxor %xmm15, %xmm15\n"
        "  ret\n");

static uint64_t tsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

static uint64_t now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t measure_tsc_hz(void)
{
	uint64_t t0 = now_ns(CLOCK_MONOTONIC), c0 = tsc();
	while (now_ns(CLOCK_MONOTONIC) - t0 < 20000000u)
		;
	uint64_t t1 = now_ns(CLOCK_MONOTONIC), c1 = tsc();
	return (uint64_t)((double)(c1 - c0) * 1e9 / (double)(t1 - t0));
}

static void run_child(int argc, char **argv, uint64_t hz)
{
	Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
	uint64_t heap_start = image_end, heap_end = heap_start + (heap_mib << 20);
	uint64_t stack_lo = heap_end + PAGE, stack_top = stack_lo + (1 << 20);

	ptrace(PTRACE_TRACEME, 0, 0, 0);
	raise(SIGSTOP);

	/* Request area: boot info, then argv/envp arrays and strings, then
	 * as much of the body as fits inline. */
	map(DUST_BOOT_INFO, DUST_REQUEST_END - DUST_BOOT_INFO);
	struct dust_boot_info *bi = (void *)DUST_BOOT_INFO;
	uint64_t *ptrs = (uint64_t *)DUST_REQUEST_BASE;
	char *strs = (char *)(DUST_REQUEST_BASE + 8 * (argc + nenv + 2));
	bi->argv = (uint64_t)ptrs;
	for (int i = 0; i < argc; i++) {
		*ptrs++ = (uint64_t)strs;
		strs = stpcpy(strs, argv[i]) + 1;
	}
	*ptrs++ = 0;
	bi->envp = (uint64_t)ptrs;
	for (int i = 0; i < nenv; i++) {
		*ptrs++ = (uint64_t)strs;
		strs = stpcpy(strs, envs[i]) + 1;
	}
	*ptrs++ = 0;
	char *inl = (char *)(((uint64_t)strs + 15) & ~15ul);
	size_t room = DUST_REQUEST_END - (uint64_t)inl;
	size_t n = body_len < room ? body_len : room;
	if (n > inline_max)
		n = inline_max;
	memcpy(inl, body, n);
	/* The parent serves READ from where the inline part ends. */
	if (write(3, &n, sizeof n) != sizeof n)
		die("pipe");
	close(3);

	for (int i = 0; i < eh->e_phnum; i++) {
		Elf64_Phdr *ph = (Elf64_Phdr *)(img + eh->e_phoff + (size_t)i * eh->e_phentsize);
		if (ph->p_type != PT_LOAD)
			continue;
		uint64_t len = UP(ph->p_memsz);
		map(ph->p_vaddr, len);
		memcpy((void *)ph->p_vaddr, img + ph->p_offset, ph->p_filesz);
		int prot = (ph->p_flags & PF_R ? PROT_READ : 0) | (ph->p_flags & PF_W ? PROT_WRITE : 0) |
		           (ph->p_flags & PF_X ? PROT_EXEC : 0);
		mprotect((void *)ph->p_vaddr, len, prot);
	}
	map(heap_start, heap_end - heap_start);
	map(stack_lo, stack_top - stack_lo);

	bi->magic = DUST_BOOT_MAGIC;
	bi->abi_version = DUST_ABI_VERSION;
	bi->size = sizeof *bi;
	bi->mem_size = stack_top;
	bi->heap_start = heap_start;
	bi->heap_end = heap_end;
	bi->stack_top = stack_top;
	bi->tsc_hz = hz;
	bi->argc = (uint64_t)argc;
	bi->body_len = body_len;
	bi->body_inline = (uint64_t)inl;
	bi->body_inline_len = n;
	for (int i = 0; i < 32; i++)
		bi->random[i] = (uint8_t)(rand() >> 7);
	bi->realtime_ns = now_ns(CLOCK_REALTIME);
	mprotect((void *)DUST_BOOT_INFO, DUST_REQUEST_END - DUST_BOOT_INFO, PROT_READ);
	enter_guest(entry, stack_top);
}

static int guest_range(uint64_t a, uint64_t n)
{
	return a >= mem_lo && a <= mem_hi && n <= mem_hi - a;
}

static int peek(uint64_t a, void *buf, size_t n)
{
	struct iovec l = { buf, n }, r = { (void *)a, n };
	return guest_range(a, n) && process_vm_readv(child, &l, 1, &r, 1, 0) == (ssize_t)n;
}

static int poke(uint64_t a, const void *buf, size_t n)
{
	struct iovec l = { (void *)buf, n }, r = { (void *)a, n };
	return guest_range(a, n) && process_vm_writev(child, &l, 1, &r, 1, 0) == (ssize_t)n;
}

/* Copies guest bytes to fd; 0 if the guest range is bad, -1 over limit. */
static int emit(int fd, uint64_t a, uint64_t n)
{
	static unsigned char buf[1 << 16];
	uint64_t *total = fd == 1 ? &out_total : &err_total;
	uint64_t limit = fd == 1 ? out_limit : err_limit;
	if (n == 0)
		return 1;
	if (!guest_range(a, n))
		return 0;
	while (n) {
		size_t k = n < sizeof buf ? n : sizeof buf;
		if (!peek(a, buf, k))
			return 0;
		if (*total + k > limit)
			return -1;
		*total += k;
		if (write(fd, buf, k) != (ssize_t)k)
			die("write failed");
		a += k, n -= k;
	}
	return 1;
}

static void on_alarm(int s) { (void)s; timed_out = 1; }

int main(int argc, char **argv)
{
	const char *report = NULL;
	int opt, timeout = 5;
	while ((opt = getopt(argc, argv, "+b:i:m:t:o:l:r:e:")) != -1) {
		switch (opt) {
		case 'b': {
			FILE *f = fopen(optarg, "rb");
			if (!f) die("cannot open body");
			struct stat st;
			fstat(fileno(f), &st);
			body_len = (size_t)st.st_size;
			body = malloc(body_len + 1);
			if (fread(body, 1, body_len, f) != body_len) die("short body read");
			fclose(f);
			break;
		}
		case 'i': inline_max = strtoul(optarg, 0, 0); break;
		case 'm': heap_mib = strtoul(optarg, 0, 0); break;
		case 't': timeout = atoi(optarg); break;
		case 'o': out_limit = strtoull(optarg, 0, 0); break;
		case 'l': err_limit = strtoull(optarg, 0, 0); break;
		case 'r': report = optarg; break;
		case 'e': if (nenv < 255) envs[nenv++] = optarg; break;
		default: die("bad usage");
		}
	}
	if (optind >= argc)
		die("no image");
	int fd = open(argv[optind], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) die("cannot open image");
	img_len = (size_t)st.st_size;
	img = malloc(img_len);
	if (read(fd, img, img_len) != (ssize_t)img_len) die("short image read");
	close(fd);
	load_check();
	mem_hi = image_end + (heap_mib << 20) + PAGE + (1 << 20);

	uint64_t hz = measure_tsc_hz();
	srand((unsigned)now_ns(CLOCK_REALTIME));
	fflush(NULL);
	int pfd[2];
	if (pipe(pfd) < 0)
		die("pipe");
	child = fork();
	if (child == 0) {
		close(pfd[0]);
		if (dup2(pfd[1], 3) < 0)
			die("dup2");
		if (pfd[1] != 3)
			close(pfd[1]);
		run_child(argc - optind, argv + optind, hz);
	}
	close(pfd[1]);

	struct sigaction sa = { .sa_handler = on_alarm };
	sigaction(SIGALRM, &sa, NULL);
	alarm((unsigned)timeout);

	const char *reason = "fault";
	long long status = -1;
	unsigned exits = 0;
	char detail[128] = "";
	int status_w;
	if (waitpid(child, &status_w, 0) < 0 || !WIFSTOPPED(status_w))
		die("child did not stop");
	ptrace(PTRACE_SETOPTIONS, child, 0, PTRACE_O_EXITKILL);
	ptrace(PTRACE_CONT, child, 0, 0);
	if (read(pfd[0], &body_pos, sizeof body_pos) != sizeof body_pos)
		die("child setup failed");
	close(pfd[0]);
	for (;;) {
		if (waitpid(child, &status_w, 0) < 0) {
			if (errno == EINTR && timed_out) {
				reason = "timeout";
				break;
			}
			die("waitpid");
		}
		if (!WIFSTOPPED(status_w)) {
			snprintf(detail, sizeof detail, "child ended unexpectedly (%#x)", status_w);
			break;
		}
		int sig = WSTOPSIG(status_w);
		struct user_regs_struct r;
		ptrace(PTRACE_GETREGS, child, 0, &r);
		long insn = ptrace(PTRACE_PEEKTEXT, child, (void *)r.rip, 0);
		unsigned port = (unsigned)r.rdx & 0xffff;
		if (sig != SIGSEGV || (insn & 0xff) != 0xef || port < DUST_PORT_BASE + 1 || port > DUST_PORT_BASE + 3) {
			snprintf(detail, sizeof detail, "signal %d at rip=%#llx", sig, r.rip);
			break;
		}
		exits++;
		uint64_t arg = r.rax & 0xffffffffu;
		if (arg % 8) {
			reason = "badcall";
			snprintf(detail, sizeof detail, "misaligned argument %#lx", arg);
			break;
		}
		if (port == DUST_PORT_BASE + DUST_HC_WRITE) {
			struct dust_hc_write w;
			int ok = peek(arg, &w, sizeof w) && (w.fd == 1 || w.fd == 2) ? emit((int)w.fd, w.buf, w.len) : 0;
			if (ok <= 0) {
				reason = ok < 0 ? (w.fd == 1 ? "outlimit" : "errlimit") : "badcall";
				snprintf(detail, sizeof detail, "WRITE buf=%#lx len=%lu", w.buf, w.len);
				break;
			}
		} else if (port == DUST_PORT_BASE + DUST_HC_READ) {
			struct dust_hc_read rd;
			if (!peek(arg, &rd, sizeof rd)) { reason = "badcall"; break; }
			size_t k = body_len - body_pos < rd.len ? body_len - body_pos : rd.len;
			if (!poke(rd.buf, body + body_pos, k)) { reason = "badcall"; break; }
			body_pos += k;
			rd.ret = k;
			poke(arg, &rd, sizeof rd);
		} else {
			struct dust_hc_exit ex;
			if (!peek(arg, &ex, sizeof ex)) { reason = "badcall"; break; }
			int a = emit(1, ex.out_buf, ex.out_len), b = emit(2, ex.err_buf, ex.err_len);
			if (a <= 0 || b <= 0) {
				reason = a < 0 ? "outlimit" : b < 0 ? "errlimit" : "badcall";
				break;
			}
			status = ex.status;
			reason = ex.reason == DUST_EXIT_NORMAL ? "normal" : ex.reason == DUST_EXIT_ABORT ? "abort" :
			         ex.reason == DUST_EXIT_OOM ? "oom" : "badcall";
			break;
		}
		r.rip += 1;
		ptrace(PTRACE_SETREGS, child, 0, &r);
		ptrace(PTRACE_CONT, child, 0, 0);
	}
	kill(child, SIGKILL);
	waitpid(child, &status_w, 0);
	if (report) {
		FILE *f = fopen(report, "w");
		fprintf(f, "reason=%s status=%lld exits=%u %s\n", reason, status, exits, detail);
		fclose(f);
	} else {
		fprintf(stderr, "dustrun: reason=%s status=%lld exits=%u %s\n", reason, status, exits, detail);
	}
	return 0;
}
