/*
 * The command line: what the options accept (sizes), and what the giantvm
 * binary built beside this test says and exits with when they are wrong.
 * The cases that run the binary need nothing but the binary: no pool, no
 * QEMU, no userfaultfd; VMs are stood in for by listening unix sockets (all
 * `giantvm stat` checks before it talks to one) in a runtime directory of
 * their own ($GIANTVM_RUNTIME_DIR).
 */
#include <inttypes.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "giantvm.h"
#include "test.h"

static int test_parse_size(void)
{
	static const struct { const char *s; uint64_t v; } good[] = {
		{ "0", 0 }, { "4096", 4096 }, { "512M", 512ull << 20 }, { "512m", 512ull << 20 },
		{ "16G", 16ull << 30 }, { "1.5G", 3ull << 29 }, { "0.5K", 512 }, { "2GiB", 2ull << 30 },
		{ "2GB", 2ull << 30 }, { "64Mi", 64ull << 20 }, { "4096B", 4096 }, { "1T", 1ull << 40 }, { "128k", 128ull << 10 },
		{ "1.5", 1 },                                   /* a fraction of a byte: rounded down */
		{ "0.0000000000000000001T", 0 },                /* beyond 19 digits: ignored */
		{ "1.00000000000000000009G", 1ull << 30 },
		{ "18446744073709551615", UINT64_MAX },
		{ "16777215.9999999999999999999T", UINT64_MAX }, /* 2^64 bytes less 1e-19 T: rounded down */
		{ "18446744073709551615.5", UINT64_MAX },
	};
	static const char *const bad[] = {
		"", "nan", "NaN", "inf", "infinity", "0x1000000", "0x10M", "1e9", "1E3M", "-1", "+1",
		" 1", "1 ", "\t1", "1.", ".5G", "1..5", "1.5.G", "M", "1X", "1MM", "1iB",
		"1MiBB", "1,5G", "1_000", "0b101",
	};
	static const char *const range[] = {
		"18446744073709551616", "99999999999999999999999", "16777216T", "17179869184G",
		"18446744073709551615.5K",
	};
	uint64_t v;

	for (size_t i = 0; i < GVM_ARRAY_SIZE(good); i++) {
		v = 12345;
		if (gvm_parse_size(good[i].s, &v) || v != good[i].v) {
			fprintf(stderr, "  '%s': %" PRIu64 ", want %" PRIu64 "\n", good[i].s, v, good[i].v);
			return 1;
		}
	}
	for (size_t i = 0; i < GVM_ARRAY_SIZE(bad); i++) {
		v = 12345;
		if (gvm_parse_size(bad[i], &v) != -EINVAL || v != 12345) {
			fprintf(stderr, "  '%s' accepted or not -EINVAL (%" PRIu64 ")\n", bad[i], v);
			return 1;
		}
	}
	for (size_t i = 0; i < GVM_ARRAY_SIZE(range); i++) {
		int r = gvm_parse_size(range[i], &v);
		if (r != -ERANGE) {
			fprintf(stderr, "  '%s': %d, want -ERANGE\n", range[i], r);
			return 1;
		}
	}
	CHECK_EQ(gvm_parse_size(NULL, &v), -EINVAL);
	return 0;
}

static const struct gvm_test tests[] = {
	{ "parse_size", test_parse_size },
};
GVM_TEST_MAIN(tests)
