/*
 * The Dust guest ABI, version 1: the contract between the hvt monitor
 * (internal/hvt) and a guest built on libdust. docs/abi.md explains it;
 * the Go side mirrors these values in internal/hvt/abi.go and a test checks
 * that both agree.
 */
#ifndef DUST_ABI_H
#define DUST_ABI_H

#include <stdint.h>

#define DUST_ABI_VERSION 1u

/* ELF note that marks an image as a Dust guest (section .note.dust.abi). */
#define DUST_NOTE_NAME "Dust"     /* namesz 5, padded to 8 */
#define DUST_NOTE_TYPE 0x31545344u /* "DST1" little-endian */
#define DUST_NOTE_READY 0x52545344u /* "DSTR": the program has a ready point (DUST_HC_READY), no descriptor */

/* Guest-physical (= guest-virtual, identity mapped) layout. */
#define DUST_MONITOR_END   0x10000ull  /* [0, 0x10000) monitor-owned, not user-accessible */
#define DUST_BOOT_INFO     0x10000ull  /* struct dust_boot_info, guest read-only */
#define DUST_REQUEST_BASE  0x11000ull  /* argv/envp/strings/inline body, guest read-only */
#define DUST_REQUEST_END   0x100000ull
#define DUST_IMAGE_BASE    0x100000ull /* lowest address a PT_LOAD segment may use */

#define DUST_BOOT_MAGIC 0x544f4f4254535544ull /* "DUSTBOOT" in memory order */

/* Hypercalls: `outl %eax, %dx` with dx = DUST_PORT_BASE + number and eax =
 * the guest-physical address of the argument struct (8-byte aligned, below
 * 4 GiB). The Solo5 hvt range 0x500..0x508 is deliberately not used. */
#define DUST_PORT_BASE 0xD000u
#define DUST_HC_WRITE  1u
#define DUST_HC_READ   2u
#define DUST_HC_EXIT   3u
/* DUST_HC_READY (eax = 0, no argument struct): the program has finished
 * initialising. When the monitor prepares the image it snapshots the
 * machine here, and every request then starts from this point with the
 * request in the boot info; in a request it returns at once. */
#define DUST_HC_READY  4u

#define DUST_FD_STDOUT 1u
#define DUST_FD_STDERR 2u

/* Exit reasons carried by DUST_HC_EXIT. */
#define DUST_EXIT_NORMAL 0u /* exit(status) or return from main */
#define DUST_EXIT_ABORT  1u /* abort(), failed assertion, libdust panic */
#define DUST_EXIT_OOM    2u /* the heap is exhausted: the memory limit was hit */

struct dust_boot_info {
	uint64_t magic;          /*   0 DUST_BOOT_MAGIC */
	uint32_t abi_version;    /*   8 DUST_ABI_VERSION */
	uint32_t size;           /*  12 sizeof(struct dust_boot_info) */
	uint64_t mem_size;       /*  16 bytes of guest RAM, from GPA 0 */
	uint64_t heap_start;     /*  24 first free byte after the image (page aligned) */
	uint64_t heap_end;       /*  32 end of the heap; a guard page follows */
	uint64_t stack_top;      /*  40 initial RSP (16-byte aligned) */
	uint64_t tsc_hz;         /*  48 TSC frequency; 0 if the host does not know it */
	uint64_t realtime_ns;    /*  56 CLOCK_REALTIME (ns since epoch) just before entry */
	uint64_t argc;           /*  64 */
	uint64_t argv;           /*  72 GPA of char *argv[argc + 1] */
	uint64_t envp;           /*  80 GPA of char *envp[], NULL-terminated */
	uint64_t body_len;       /*  88 total request body length (CONTENT_LENGTH) */
	uint64_t body_inline;    /*  96 GPA of the first body bytes */
	uint64_t body_inline_len;/* 104 bytes at body_inline; the rest comes by DUST_HC_READ */
	uint8_t  random[32];     /* 112 fresh random bytes for this request */
};                           /* 144 */

struct dust_hc_write {       /* DUST_HC_WRITE */
	uint64_t fd;             /*  0 DUST_FD_STDOUT or DUST_FD_STDERR */
	uint64_t buf;            /*  8 GPA */
	uint64_t len;            /* 16 */
};                           /* 24 */

struct dust_hc_read {        /* DUST_HC_READ: next bytes of the request body */
	uint64_t buf;            /*  0 GPA */
	uint64_t len;            /*  8 capacity of buf */
	uint64_t ret;            /* 16 OUT: bytes stored; 0 means end of body */
};                           /* 24 */

struct dust_hc_exit {        /* DUST_HC_EXIT: final flush and exit, one VM exit */
	int64_t  status;         /*  0 exit status */
	uint64_t reason;         /*  8 DUST_EXIT_* */
	uint64_t out_buf;        /* 16 GPA of pending stdout bytes */
	uint64_t out_len;        /* 24 */
	uint64_t err_buf;        /* 32 GPA of pending stderr bytes */
	uint64_t err_len;        /* 40 */
};                           /* 48 */

#endif
