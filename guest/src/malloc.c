/*
 * Heap allocator: boundary tags with immediate coalescing, segregated free
 * lists (exact 16-byte classes below 1 KiB, four classes per power of two
 * above) and a bitmap to find the next non-empty list in O(1). Fresh memory
 * is carved from the "top" chunk at the end of the used heap.
 *
 * Memory limit: the heap is [heap_start, heap_end) from the boot info. When
 * a request cannot be met, malloc does NOT return NULL: it ends the machine
 * with DUST_EXIT_OOM, which is how the monitor's per-request memory limit
 * reaches the application. NULL is only returned for sizes that could never
 * fit (larger than the whole heap, or calloc overflow).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dust_internal.h"

#define HDR      16u  /* prev_size + head; keeps user pointers 16-aligned */
#define MINCHUNK 32u  /* header + free-list links */
#define INUSE    1u
#define PINUSE   2u   /* the chunk just below is in use */
#define NBINS    256

struct chunk {
	size_t prev_size;  /* size of the chunk below, valid only if it is free */
	size_t head;       /* size | INUSE | PINUSE */
	struct chunk *fd, *bk;
};

static uintptr_t heap_lo, heap_hi;
static struct chunk *top;
/* Guest RAM starts zeroed and nothing above this address was ever given
 * back by free() (nor written by us), so calloc need not clear it. This
 * avoids touching, and so faulting in, pages that are already zero. */
static uintptr_t dirty_end;
static struct chunk *bins[NBINS];
static uint64_t binmap[NBINS / 64];

#define SIZE(c)  ((c)->head & ~(size_t)15)
#define AT(p, n) ((struct chunk *)((char *)(p) + (n)))

void __dust_heap_init(uintptr_t start, uintptr_t end)
{
	heap_lo = (start + 15) & ~(uintptr_t)15;
	heap_hi = end & ~(uintptr_t)15;
	top = (struct chunk *)heap_lo;
	dirty_end = heap_lo;
	top->head = (heap_hi - heap_lo) | PINUSE;
}

static void init(void)
{
	if (!top)
		__dust_heap_init(__dust_boot->heap_start, __dust_boot->heap_end);
}

static unsigned bin_of(size_t sz)
{
	if (sz < 1024)
		return (unsigned)(sz >> 4);
	unsigned e = 63u - (unsigned)__builtin_clzll(sz);
	return 64 + (e - 10) * 4 + (unsigned)((sz >> (e - 2)) & 3);
}

static void bin_insert(struct chunk *c)
{
	unsigned b = bin_of(SIZE(c));
	c->bk = NULL;
	c->fd = bins[b];
	if (c->fd)
		c->fd->bk = c;
	bins[b] = c;
	binmap[b / 64] |= 1ull << (b % 64);
}

static void bin_remove(struct chunk *c)
{
	if (c->bk) {
		c->bk->fd = c->fd;
	} else {
		unsigned b = bin_of(SIZE(c));
		bins[b] = c->fd;
		if (!c->fd)
			binmap[b / 64] &= ~(1ull << (b % 64));
	}
	if (c->fd)
		c->fd->bk = c->bk;
}

/* Smallest free chunk class that fits need, or NULL. */
static struct chunk *bin_take(size_t need)
{
	unsigned b = bin_of(need);
	if (b >= 64) {
		/* Classes above 1 KiB hold a range of sizes: first fit within. */
		for (struct chunk *c = bins[b]; c; c = c->fd)
			if (SIZE(c) >= need) {
				bin_remove(c);
				return c;
			}
		b++;
	}
	for (unsigned w = b / 64; w < NBINS / 64; w++) {
		uint64_t m = binmap[w];
		if (w == b / 64)
			m &= ~0ull << (b % 64);
		if (m) {
			struct chunk *c = bins[w * 64 + (unsigned)__builtin_ctzll(m)];
			bin_remove(c);
			return c;
		}
	}
	return NULL;
}

static size_t request(size_t n)
{
	if (n > heap_hi - heap_lo)
		return 0;
	size_t need = (n + HDR + 15) & ~(size_t)15;
	return need < MINCHUNK ? MINCHUNK : need;
}

static _Noreturn void out_of_memory(size_t n)
{
	fprintf(stderr, "libdust: out of memory (request of %zu bytes)\n", n);
	__dust_exit(137, DUST_EXIT_OOM);
}

static void release(struct chunk *c)
{
	size_t sz = SIZE(c);
	struct chunk *next = AT(c, sz);

	/* Our footer and the next header are written below: count them too. */
	if ((uintptr_t)next + HDR > dirty_end)
		dirty_end = (uintptr_t)next + HDR;
	if (!(c->head & PINUSE)) {
		struct chunk *prev = AT(c, -(ptrdiff_t)c->prev_size);
		bin_remove(prev);
		sz += SIZE(prev);
		c = prev;
	}
	if (next == top) {
		top = c;
		top->head = (heap_hi - (uintptr_t)c) | PINUSE;
		return;
	}
	if (!(next->head & INUSE)) {
		bin_remove(next);
		sz += SIZE(next);
	} else {
		next->head &= ~(size_t)PINUSE;
	}
	c->head = sz | PINUSE;
	AT(c, sz)->prev_size = sz;
	bin_insert(c);
}

/* Trims c (in use) to need bytes, freeing the tail if it is big enough. */
static void trim(struct chunk *c, size_t need)
{
	size_t sz = SIZE(c);
	if (sz - need < MINCHUNK)
		return;
	struct chunk *tail = AT(c, need);
	tail->head = (sz - need) | INUSE | PINUSE;
	c->head = need | (c->head & PINUSE) | INUSE;
	release(tail);
}

void *malloc(size_t n)
{
	init();
	size_t need = request(n);
	if (!need) {
		errno = ENOMEM;
		return NULL;
	}
	struct chunk *c = bin_take(need);
	if (c) {
		size_t sz = SIZE(c);
		c->head = sz | PINUSE | INUSE;
		AT(c, sz)->head |= PINUSE;
		trim(c, need);
	} else {
		size_t room = heap_hi - (uintptr_t)top;
		/* Keep a valid top chunk: its header must stay inside the heap. */
		if (room < need + MINCHUNK)
			out_of_memory(n);
		c = top;
		c->head = need | PINUSE | INUSE;
		top = AT(c, need);
		top->head = (room - need) | PINUSE;
	}
	return (char *)c + HDR;
}

void free(void *p)
{
	if (!p)
		return;
	struct chunk *c = AT(p, -(ptrdiff_t)HDR);
	if (!(c->head & INUSE) || (uintptr_t)c < heap_lo || (uintptr_t)c >= (uintptr_t)top)
		__dust_panic("libdust: free() of an invalid or already freed pointer\n");
	release(c);
}

void *calloc(size_t nmemb, size_t size)
{
	size_t n;
	if (__builtin_mul_overflow(nmemb, size, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	char *p = malloc(n);
	if (p && (uintptr_t)p < dirty_end) {
		size_t dirty = dirty_end - (uintptr_t)p;
		memset(p, 0, dirty < n ? dirty : n);
	}
	return p;
}

void *realloc(void *p, size_t n)
{
	if (!p)
		return malloc(n);
	if (n == 0) {
		free(p);
		return NULL;
	}
	size_t need = request(n);
	if (!need) {
		errno = ENOMEM;
		return NULL;
	}
	struct chunk *c = AT(p, -(ptrdiff_t)HDR);
	size_t sz = SIZE(c);
	if (sz >= need) {
		trim(c, need);
		return p;
	}
	struct chunk *next = AT(c, sz);
	if (next == top) {
		size_t room = heap_hi - (uintptr_t)top;
		if (room >= need - sz + MINCHUNK) {
			c->head = need | (c->head & PINUSE) | INUSE;
			top = AT(c, need);
			top->head = (room - (need - sz)) | PINUSE;
			return p;
		}
	} else if (!(next->head & INUSE) && sz + SIZE(next) >= need) {
		bin_remove(next);
		sz += SIZE(next);
		c->head = sz | (c->head & PINUSE) | INUSE;
		AT(c, sz)->head |= PINUSE;
		trim(c, need);
		return p;
	}
	void *q = malloc(n);
	memcpy(q, p, sz - HDR);
	free(p);
	return q;
}

void *reallocarray(void *p, size_t nmemb, size_t size)
{
	size_t n;
	if (__builtin_mul_overflow(nmemb, size, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(p, n);
}

void *aligned_alloc(size_t align, size_t n)
{
	if (align == 0 || (align & (align - 1))) {
		errno = EINVAL;
		return NULL;
	}
	if (align <= 16)
		return malloc(n);
	if (n > SIZE_MAX / 2 || align > SIZE_MAX / 4) {
		errno = ENOMEM;
		return NULL;
	}
	char *p = malloc(n + align + MINCHUNK);
	if (!p)
		return NULL;
	/* Give the unaligned front back as a chunk of its own. */
	struct chunk *c = AT(p, -(ptrdiff_t)HDR);
	uintptr_t a = ((uintptr_t)p + MINCHUNK + align - 1) & ~(uintptr_t)(align - 1);
	struct chunk *ac = (struct chunk *)(a - HDR);
	size_t lead = (uintptr_t)ac - (uintptr_t)c;
	ac->head = (SIZE(c) - lead) | PINUSE | INUSE;
	c->head = lead | (c->head & PINUSE) | INUSE;
	release(c);
	trim(ac, request(n));
	return (void *)a;
}

int posix_memalign(void **out, size_t align, size_t n)
{
	if (align < sizeof(void *) || (align & (align - 1)))
		return EINVAL;
	void *p = aligned_alloc(align, n);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}
