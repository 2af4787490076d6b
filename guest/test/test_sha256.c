/* Known-answer tests for the SHA-256 in examples/sha256 (FIPS 180-4
 * examples and the NIST one-million-'a' vector). */
#define SHA256_NO_MAIN
#include "../../examples/sha256/sha256.c"
#include <stdlib.h>

static int check(const char *msg, size_t n, size_t step, const char *want)
{
	struct sha256 s;
	unsigned char d[32];
	char hex[65];
	sha256_init(&s);
	for (size_t i = 0; i < n; i += step)
		sha256_update(&s, msg + i, n - i < step ? n - i : step);
	sha256_final(&s, d);
	for (int i = 0; i < 32; i++)
		sprintf(hex + 2 * i, "%02x", d[i]);
	if (strcmp(hex, want)) {
		printf("FAIL sha256 len %zu step %zu: %s\n", n, step, hex);
		return 1;
	}
	return 0;
}

int main(void)
{
	static const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	char *million = malloc(1000000);
	memset(million, 'a', 1000000);
	int fails = 0, n = 0;
	size_t steps[] = { 1, 3, 63, 64, 65, 1000, 1 << 20 };
	for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
		fails += check("", 0, steps[i], "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
		fails += check("abc", 3, steps[i], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
		fails += check(two, strlen(two), steps[i], "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
		fails += check(million, 1000000, steps[i], "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
		n += 4;
	}
	printf("test_sha256: %d vectors, %d failures\n", n, fails);
	return fails != 0;
}
