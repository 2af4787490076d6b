/*
 * Hostile system calls for linux_hostile_test.go: one case per request
 * (QUERY_STRING case=<name>), each a list of raw `syscall`s whose answers
 * are printed in order, so that no libc wrapper filters an argument.
 * he=<heap end> (the guard page above it) in hex. case=check prints what
 * the monitor keeps per process, for the test to compare with a fresh
 * machine after every case.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long sc(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
	return r;
}
#define S(n, ...) out(sc6(n, __VA_ARGS__))
#define sc6(n, a, b, c, d, e, f) sc(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

static void out(long r) { printf(" %ld", r); }

static uint64_t arg(const char *q, const char *key)
{
	const char *p = strstr(q, key);
	return p ? strtoull(p + strlen(key), NULL, 16) : 0;
}

#define TEXT ((long)(uintptr_t)&main)
#define MON 0x1000L
#define FAR 0x7ffffffff000L
static char buf[8192] __attribute__((aligned(4096)));
static uint32_t word;
int main(void);

static void thread_wait(void)
{
	for (;;)
		sc6(202, &word, 128, 0, 0, 0, 0);
}

/* A raw thread clone; the child waits forever on word. */
static long clone_thread(void *stack)
{
	long r;
	register long r10 __asm__("r10") = 0, r8 __asm__("r8") = 0;
	__asm__ volatile("syscall; test %%rax, %%rax; jnz 1f; and $-16, %%rsp; call *%[fn]; ud2; 1:"
	                 : "=a"(r)
	                 : "a"(56L), "D"(0x50f00L), "S"(stack), "d"(0L), "r"(r10), "r"(r8), [fn] "r"(thread_wait)
	                 : "rcx", "r11", "memory");
	return r;
}

int main(void)
{
	const char *q = getenv("QUERY_STRING");
	if (!q)
		q = "";
	long he = (long)arg(q, "he=");
	printf("Content-Type: text/plain\r\n\r\n");
	fflush(stdout);
	const char *c = strstr(q, "case=");
	c = c ? c + 5 : "";
	uint64_t iov[4];
	int devnull = (int)sc6(2, "/dev/null", 1, 0, 0, 0, 0);
	if (!strncmp(c, "rw", 2)) {
		S(0, 0, MON, 16, 0, 0, 0);             /* monitor pages: -14 */
		S(0, 0, FAR, 16, 0, 0, 0);             /* beyond memory */
		S(0, 0, -4096L, 1L << 40, 0, 0, 0);    /* wrapping */
		S(0, 0, TEXT, 16, 0, 0, 0);            /* into code */
		S(0, 0, 0, 0, 0, 0, 0);                /* NULL, 0: 0 */
		S(1, 1, MON, 64, 0, 0, 0);
		S(1, 1, FAR, 4096, 0, 0, 0);
		S(1, 1, -16L, 32, 0, 0, 0);
		S(1, devnull, buf, 1L << 62, 0, 0, 0); /* huge: cut where memory ends */
		S(1, devnull, he - 8, 1L << 40, 0, 0, 0); /* runs into the guard page: cut */
		S(17, 0, MON, 16, 0, 0, 0);            /* pread64 */
		S(1, 1000, buf, 1, 0, 0, 0);           /* bad descriptor: -9 */
	} else if (!strncmp(c, "iov", 3)) {
		S(19, 0, MON, 1, 0, 0, 0);             /* readv, iovec array in monitor pages */
		S(20, 1, FAR, 2, 0, 0, 0);
		S(20, 1, he - 8, 1, 0, 0, 0);          /* array runs into the guard */
		iov[0] = MON, iov[1] = 64;
		S(20, 1, iov, 1, 0, 0, 0);             /* buffer in monitor pages */
		iov[0] = (uint64_t)buf, iov[1] = 1ull << 63, iov[2] = (uint64_t)buf, iov[3] = 1ull << 63;
		S(20, devnull, iov, 2, 0, 0, 0);       /* lengths that overflow: -22 */
		S(20, 1, iov, 1025, 0, 0, 0);          /* > UIO_MAXIOV: -22 */
		iov[0] = TEXT, iov[1] = 16;
		S(19, 0, iov, 1, 0, 0, 0);             /* readv into code: -14 */
		S(20, 1, iov, 0, 0, 0, 0);             /* 0 */
		S(295, 0, MON, 1, 0, 0, 0);            /* preadv */
	} else if (!strncmp(c, "paths", 5)) {
		memset((char *)he - 100, 'a', 100);    /* no NUL before the guard */
		S(257, -100, he - 100, 0, 0, 0, 0);    /* -14 */
		char *p = malloc(5000);
		memset(p, 'a', 4999), p[4999] = 0;
		S(257, -100, p, 0, 0, 0, 0);           /* -36 */
		S(257, -100, MON, 0, 0, 0, 0);         /* -14 */
		S(257, -100, FAR, 0, 0, 0, 0);
		S(4, "/", MON, 0, 0, 0, 0);            /* stat into monitor pages */
		int d = (int)sc6(257, -100, "/", 0200000, 0, 0, 0);
		S(217, d, TEXT, 4096, 0, 0, 0);        /* getdents64 into code: -14 */
		S(5, d, TEXT, 0, 0, 0, 0);             /* fstat into code */
		S(262, -100, "/tmp", TEXT, 0, 0, 0);   /* newfstatat */
		S(332, -100, "/tmp", 0, 0x7ff, TEXT, 0); /* statx */
		S(318, TEXT, 16, 0, 0, 0, 0);          /* getrandom */
		S(228, 0, TEXT, 0, 0, 0, 0);           /* clock_gettime */
		S(63, 0x10000, 0, 0, 0, 0, 0);         /* uname into the stub page */
		S(79, TEXT, 64, 0, 0, 0, 0);           /* getcwd */
		S(89, "/tmp", TEXT, 64, 0, 0, 0);      /* readlink */
	} else if (!strncmp(c, "mmap", 4)) {
		long n = 0, last = 0;
		for (int i = 0; i < 100000; i++) {
			last = sc6(9, 0, 4096, 3, 0x22, -1, 0);
			if (last < 0)
				break;
			n++;
		}
		out(n > 1000);                         /* thousands of maps */
		out(last);                             /* then -12 */
		S(11, 0x100000, 1L << 40, 0, 0, 0, 0); /* munmap far outside the heap: 0 */
		S(9, 0, 1L << 45, 3, 0x22, -1, 0);     /* -12 */
		S(9, 0, -4096L, 3, 0x22, -1, 0);       /* -12 */
		S(9, 0, 4096, 7, 0x22, -1, 0);         /* PROT_EXEC: -1 */
		S(9, 0, 0, 3, 0x22, -1, 0);            /* -22 */
		S(9, MON, 4096, 3, 0x32, -1, 0);       /* MAP_FIXED on monitor pages: -12 */
		S(9, TEXT & ~4095L, 4096, 3, 0x32, -1, 0); /* MAP_FIXED over code */
		S(10, TEXT & ~4095L, 4096, 7, 0, 0, 0); /* mprotect code RWX */
	} else if (!strncmp(c, "mremap", 6)) {
		long m = sc6(9, 0, 8192, 3, 0x22, -1, 0);
		S(25, TEXT & ~4095L, 4096, 8192, 1, 0, 0); /* code is not a mapping: -14 */
		S(25, m, 4096, 1L << 45, 1, 0, 0);     /* -12 */
		S(25, m, 4096, 4096, 3, MON, 0);       /* FIXED onto monitor pages */
		S(25, m, 0, 4096, 1, 0, 0);            /* old size 0: -22 */
		S(25, m, 4096, 8192, 5, 0, 0);         /* DONTUNMAP: -22 */
		S(25, m + 1, 4096, 8192, 1, 0, 0);     /* unaligned: -22 */
		S(25, m, -4096L, 4096, 1, 0, 0);       /* wrapping old range */
	} else if (!strncmp(c, "brk", 3)) {
		long b = sc6(12, 0, 0, 0, 0, 0, 0);
		out(sc6(12, 1L << 46, 0, 0, 0, 0, 0) == b);
		out(sc6(12, -4096L, 0, 0, 0, 0, 0) == b);
		out(sc6(12, MON, 0, 0, 0, 0, 0) == b);
		out(sc6(12, he + 4096, 0, 0, 0, 0, 0) == b);
		out(sc6(12, 0, 0, 0, 0, 0, 0) == b);
	} else if (!strncmp(c, "threads", 7)) {
		long n = 0, last = 0;
		for (int i = 0; i < 100; i++) {
			long st = sc6(9, 0, 16384, 3, 0x22, -1, 0);
			if ((last = clone_thread((char *)st + 16384)) < 0)
				break;
			n++;
		}
		out(n);                                /* 63: 64 live with main */
		out(last);                             /* -11 */
		sc6(24, 0, 0, 0, 0, 0, 0);
	} else if (!strncmp(c, "procs", 5)) {
		S(56, 17 /* SIGCHLD */, 0, 0, 0, 0, 0); /* fork by clone: -1 */
		S(57, 0, 0, 0, 0, 0, 0);               /* fork */
		S(58, 0, 0, 0, 0, 0, 0);               /* vfork */
		S(56, 0x100, 0, 0, 0, 0, 0);           /* CLONE_VM only: -1 */
		S(56, 0x50f00 | 0x20000, 0, 0, 0, 0, 0); /* a thread in a new mount namespace: -22 */
		uint64_t ca[11] = {0};
		ca[0] = 0;
		S(435, ca, 88, 0, 0, 0, 0);            /* clone3 of a process: -1 */
		S(435, ca, 8, 0, 0, 0, 0);             /* -22 */
		S(435, MON, 88, 0, 0, 0, 0);           /* -14 */
		S(61, -1, 0, 0, 0, 0, 0);              /* wait4: -10 */
	} else if (!strncmp(c, "futex-timeout", 13)) {
		int64_t ts[2] = {0, 1000000};
		S(202, &word, 0, 0, ts, 0, 0);         /* -110 */
		S(202, (char *)&word + 1, 0, 0, 0, 0, 0); /* unaligned: -22 */
		S(202, MON, 0, 0, 0, 0, 0);            /* -14 */
		S(202, &word, 0, 1, 0, 0, 0);          /* value differs: -11 */
		S(202, &word, 0, 0, MON, 0, 0);        /* timeout pointer in monitor pages: -14 */
		S(202, &word, 9, 0, 0, 0, 0);          /* bitset 0: -22 */
		S(202, &word, 3, 0, 0, 0, 0);          /* REQUEUE: -38 */
	} else if (!strncmp(c, "futex-forever", 13)) {
		S(202, &word, 0, 0, 0, 0, 0);
	} else if (!strncmp(c, "futex-deadline", 14)) {
		int64_t ts[2] = {100000, 0};
		S(202, &word, 0, 0, ts, 0, 0);
	} else if (!strncmp(c, "erofs", 5)) {
		S(257, -100, "/app/index.html", 1, 0, 0, 0);     /* O_WRONLY: -30 */
		S(257, -100, "/app/index.html", 2, 0, 0, 0);     /* O_RDWR */
		S(257, -100, "/app/index.html", 01000, 0, 0, 0); /* O_TRUNC */
		S(257, -100, "/app/new", 0101, 0644, 0, 0);      /* O_CREAT */
		S(83, "/app/d", 0755, 0, 0, 0, 0);               /* mkdir */
		S(87, "/app/index.html", 0, 0, 0, 0, 0);         /* unlink */
		S(76, "/app/index.html", 0, 0, 0, 0, 0);         /* truncate */
		S(90, "/app/index.html", 0777, 0, 0, 0, 0);      /* chmod */
		S(82, "/app/index.html", "/tmp/x", 0, 0, 0, 0);  /* rename out of /app: -18 */
		S(257, -100, "/new", 0101, 0644, 0, 0);          /* -13 */
		S(257, -100, "/dev/new", 0101, 0644, 0, 0);      /* -13 */
		S(84, "/tmp", 0, 0, 0, 0, 0);                    /* rmdir /tmp: -16 */
		int fd = (int)sc6(257, -100, "/app/index.html", 0, 0, 0, 0);
		S(1, fd, "x", 1, 0, 0, 0);                       /* read-only descriptor: -9 */
		S(77, fd, 0, 0, 0, 0, 0);                        /* ftruncate it: -22 */
	} else if (!strncmp(c, "dotdot", 6)) {
		S(257, -100, "/tmp/../../../etc/passwd", 0, 0, 0, 0); /* -2 */
		S(257, -100, "../../../../../proc/self/mem", 2, 0, 0, 0);
		int d = (int)sc6(257, -100, "/tmp", 0200000, 0, 0, 0);
		S(257, d, "../../../etc/shadow", 0, 0, 0, 0);
		S(257, d, "../app/../../app/index.html", 1, 0, 0, 0); /* still /app: -30 */
		S(80, "/tmp/../..", 0, 0, 0, 0, 0);              /* chdir: 0, to / */
		S(257, -100, "../dev/../etc/hostname", 0, 0, 0, 0);
		S(89, "/proc/self/exe", buf, 64, 0, 0, 0);       /* -2 */
		S(257, 1, "x", 0, 0, 0, 0);                      /* dirfd not a directory: -20 */
	} else if (!strncmp(c, "symlink", 7)) {
		S(88, "/etc/passwd", "/tmp/l", 0, 0, 0, 0);      /* symlink: -38 */
		S(266, "/app/index.html", -100, "/tmp/l2", 0, 0, 0); /* symlinkat */
		S(86, "/app/index.html", "/tmp/h", 0, 0, 0, 0);  /* link */
		S(265, -100, "/app/index.html", -100, "/tmp/h2", 0, 0); /* linkat */
		S(133, "/tmp/n", 0010644, 0, 0, 0, 0);           /* mknod */
		S(257, -100, "/tmp/l", 0, 0, 0, 0);              /* nothing was made: -2 */
		S(257, -100, "/tmp/l2", 0, 0, 0, 0);
		S(257, -100, "/tmp/h", 0, 0, 0, 0);
		S(267, -100, "/tmp/l", buf, 64, 0, 0);           /* readlinkat */
		S(257, -100, "/tmp/f", 0301 /* O_CREAT|O_EXCL|O_WRONLY */, 0644, 0, 0); /* 3+: a plain file */
		S(267, -100, "/tmp/f", buf, 64, 0, 0);           /* not a link: -22 */
	} else if (!strncmp(c, "exec", 4)) {
		char *av[] = {"/app/index.html", 0};
		S(59, "/app/index.html", av, 0, 0, 0, 0);        /* -1 */
		S(59, MON, MON, MON, 0, 0, 0);
		S(322, -100, "/app/index.html", av, 0, 0, 0);    /* execveat */
	} else if (!strncmp(c, "net", 3)) {
		/* struct sockaddr_in for 127.0.0.1:80 */
		static const unsigned char sin[16] = {2, 0, 0, 80, 127, 0, 0, 1};
		long s = sc6(41, 2, 1 | 04000, 0, 0, 0, 0);      /* socket(AF_INET, SOCK_STREAM|SOCK_NONBLOCK) */
		out(s >= 0 ? 0 : s);
		S(42, s, sin, 16, 0, 0, 0);                      /* connect: -101, no network */
		S(53, 1, 1, 0, buf, 0, 0);                       /* socketpair(AF_UNIX): -97 */
		S(41, 2, 2, 0, 0, 0, 0);                         /* UDP: -94 */
		S(49, s, sin, 16, 0, 0, 0);                      /* bind: 0 */
		S(50, s, 1, 0, 0, 0, 0);                         /* listen: 0 */
		S(288, s, 0, 0, 0, 0, 0);                        /* accept4, nothing pending: -11 */
		S(44, s, buf, 1, 0x4000, 0, 0);                  /* sendto on a listener, MSG_NOSIGNAL: -32 (EPIPE, as Linux) */
		S(49, s, FAR, 16, 0, 0, 0);                      /* bind, bad pointer: -14 */
		S(42, 0, sin, 16, 0, 0, 0);                      /* connect on stdin: -88 */
	} else if (!strncmp(c, "kill", 4)) {
		S(62, 1, 9, 0, 0, 0, 0);                         /* init: -1 */
		S(62, -1, 9, 0, 0, 0, 0);                        /* everyone: -1 */
		S(62, 12345, 9, 0, 0, 0, 0);
		S(234, 2, 99, 9, 0, 0, 0);                       /* tgkill of no such thread: -3 */
		S(234, 1, 1, 9, 0, 0, 0);
		S(200, 1, 9, 0, 0, 0, 0);                        /* tkill */
		S(62, 2, 0, 0, 0, 0, 0);                         /* itself, signal 0: 0 */
		S(62, 2, 65, 0, 0, 0, 0);                        /* -22 */
	} else if (!strncmp(c, "unknown", 7)) {
		S(1024, 0, 0, 0, 0, 0, 0);
		S(1025, 0, 0, 0, 0, 0, 0);
		S(100000, 1, 2, 3, 4, 5, 6);
		S(-1, 0, 0, 0, 0, 0, 0);
		S(-39, 0, 0, 0, 0, 0, 0);
		S(0x7fffffffffffffffL, 0, 0, 0, 0, 0, 0);
		S(0x8000000000000000L, 0, 0, 0, 0, 0, 0);
		S(335, 0, 0, 0, 0, 0, 0);                        /* a gap in the x86-64 table */
		S(512, 0, 0, 0, 0, 0, 0);                        /* x32 numbers */
		S(0x40000000L | 39, 0, 0, 0, 0, 0, 0);           /* __X32_SYSCALL_BIT + getpid */
	} else if (!strncmp(c, "check", 5)) {
		int fds = 0;
		for (int fd = 3; fd < 1024; fd++)
			fds += sc6(72, fd, 1, 0, 0, 0, 0) >= 0;
		long mm = sc6(9, 0, 4096, 3, 0x22, -1, 0);
		char cwd[64] = {0};
		sc6(79, cwd, sizeof cwd, 0, 0, 0, 0);
		int d = (int)sc6(257, -100, "/tmp", 0200000, 0, 0, 0);
		long n = sc6(217, d, buf, sizeof buf, 0, 0, 0); /* . and .. only */
		printf(" fds=%d brk=%lx mmap=%lx cwd=%s tmpdents=%ld tid=%ld", fds - 2, sc6(12, 0, 0, 0, 0, 0, 0), mm, cwd, n, sc6(186, 0, 0, 0, 0, 0, 0));
	}
	printf("\n");
	return 0;
}
