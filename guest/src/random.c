/* Random source: ChaCha20 (RFC 8439) keyed with the 32 fresh bytes the
 * monitor puts in the boot info, used as a keystream generator. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "dust_internal.h"

#define ROTL(x, n) ((x) << (n) | (x) >> (32 - (n)))
#define QR(a, b, c, d) \
	(a += b, d ^= a, d = ROTL(d, 16), c += d, b ^= c, b = ROTL(b, 12), \
	 a += b, d ^= a, d = ROTL(d, 8), c += d, b ^= c, b = ROTL(b, 7))

void __dust_chacha20_block(const uint32_t key[8], uint32_t counter,
                           const uint32_t nonce[3], uint32_t out[16])
{
	uint32_t in[16] = {
		0x61707865, 0x3320646e, 0x79622d32, 0x6b206574,
		key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
		counter, nonce[0], nonce[1], nonce[2],
	};
	uint32_t x[16];
	memcpy(x, in, sizeof x);
	for (int i = 0; i < 10; i++) {
		QR(x[0], x[4], x[8], x[12]);
		QR(x[1], x[5], x[9], x[13]);
		QR(x[2], x[6], x[10], x[14]);
		QR(x[3], x[7], x[11], x[15]);
		QR(x[0], x[5], x[10], x[15]);
		QR(x[1], x[6], x[11], x[12]);
		QR(x[2], x[7], x[8], x[13]);
		QR(x[3], x[4], x[9], x[14]);
	}
	for (int i = 0; i < 16; i++)
		out[i] = x[i] + in[i];
}

static uint32_t key[8];
static uint32_t nonce[3];
static uint32_t counter;
static uint32_t block[16];
static unsigned used = sizeof block; /* bytes of block already handed out */

void __dust_random_init(const uint8_t seed[32])
{
	/* A fresh key starts a fresh stream: nothing generated under an
	 * earlier key (before a snapshot point) may be handed out after. */
	memcpy(key, seed, sizeof key);
	memset(nonce, 0, sizeof nonce);
	memset(block, 0, sizeof block);
	counter = 0;
	used = sizeof block;
}

void dust_random(void *buf, size_t n)
{
	unsigned char *d = buf;
	while (n) {
		if (used == sizeof block) {
			__dust_chacha20_block(key, counter, nonce, block);
			/* 2^32 blocks is 256 GiB; move to the next nonce after that. */
			if (++counter == 0)
				nonce[0]++;
			used = 0;
		}
		size_t k = sizeof block - used;
		if (k > n)
			k = n;
		memcpy(d, (unsigned char *)block + used, k);
		/* Erase what was handed out so a later memory leak of ours
		 * cannot reveal earlier random output. */
		memset((unsigned char *)block + used, 0, k);
		used += (unsigned)k;
		d += k;
		n -= k;
	}
}

void arc4random_buf(void *buf, size_t n)
{
	dust_random(buf, n);
}

uint32_t arc4random(void)
{
	uint32_t v;
	dust_random(&v, sizeof v);
	return v;
}

uint32_t arc4random_uniform(uint32_t bound)
{
	if (bound < 2)
		return 0;
	/* Reject the low values that would make the modulo biased. */
	uint32_t min = (0u - bound) % bound;
	for (;;) {
		uint32_t v = arc4random();
		if (v >= min)
			return v % bound;
	}
}
